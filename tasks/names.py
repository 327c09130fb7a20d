"""Every Celery task name of the pipeline, in one place."""

# One order: what Celery producers send (send_task) and what a raw body runs as.
PROCESS_ORDER = "orders.process"
# Up to ten raw SQS messages of one receive, run as one task.
PROCESS_BATCH = "orders.process_batch"
# The tasks the orders queues carry; kombu's failure backoff applies to them.
ORDER_TASKS = (PROCESS_ORDER, PROCESS_BATCH)

# The batch files path (tasks/file_tasks.py): one window of S3 events starts an execution,
#   chord(group(chain(stage per file of a table) per table), kpis) | finish
# with failed as its error callback.
FILES_EXECUTE = "files.execute"
FILES_STAGE = "files.stage"
FILES_KPIS = "files.kpis"
FILES_FINISH = "files.finish"
FILES_FAILED = "files.failed"
# Upkeep that celery beat sends (celeryconfig's beat_schedule): the Delta tables compacted,
# vacuumed and checkpointed; executions that outlived FILES_EXECUTION_TIMEOUT failed.
FILES_MAINTAIN = "files.maintain"
FILES_SWEEP = "files.sweep"
# The task messages the files queue carries.
FILES_TASKS = (FILES_EXECUTE, FILES_STAGE, FILES_KPIS, FILES_FINISH, FILES_FAILED,
               FILES_MAINTAIN, FILES_SWEEP)

# The worker event (Celery's event dispatcher, group "worker") that says whether a worker's
# consumption is paused because the store refuses writes (tasks/backpressure.py); the API
# hears it beside the heartbeats (web/metrics.py).
CONSUMPTION_EVENT = "worker-consumption"
