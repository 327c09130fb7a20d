"""Every Celery task name of the pipeline, in one place."""

# One order: what Celery producers send (send_task) and what a raw body runs as.
PROCESS_ORDER = "orders.process"
# Up to ten raw SQS messages of one receive, run as one task.
PROCESS_BATCH = "orders.process_batch"
# The tasks the orders queues carry; kombu's failure backoff applies to them.
ORDER_TASKS = (PROCESS_ORDER, PROCESS_BATCH)
