"""Celery settings derived from app.settings.Settings; print them with python -m celeryconfig.

tasks.celery.create_celery(settings) configures its app with celery_settings(settings).
"""
from urllib.parse import urlsplit

from kombu import Exchange, Queue

from app.deadletters import ORIGINAL_ID_ATTRIBUTE
from app.settings import Settings, from_env_or_exit
from tasks.names import FILES_EXECUTE, FILES_MAINTAIN, FILES_SWEEP, ORDER_TASKS


def celery_settings(settings: Settings) -> dict:
    """Celery's lowercase settings for the pipeline's settings."""
    endpoint = urlsplit(settings.sqs_endpoint_url)
    credentials = ({"access_key_id": "test", "secret_access_key": "test"}
                   if endpoint.netloc else {})
    # A task still running when the visibility timeout ends is handed to another worker, so
    # the hard limit stays well below it. Retries' countdowns are capped by
    # RETRY_BACKOFF_MAX, which settings keep below the visibility timeout for the same reason.
    time_limit = max(1, min(60, settings.visibility_timeout // 2))
    files_queue = {settings.files_queue: {
        "url": settings.files_url,
        "backoff_policy": settings.failure_backoff_policy,
        "backoff_tasks": [FILES_EXECUTE],
        **credentials,
    }} if settings.files_enabled else {}
    return {
        # Tasks travel on SQS. With an endpoint (LocalStack, a VPC endpoint) kombu talks to
        # that host; without one, "sqs://" means real AWS and boto3's usual credential chain.
        # sqs:// runs kombu's SQS transport with fixes for requeues, odd bodies and failed
        # receives (tasks/sqs/receive.py, registered by create_celery): without them each
        # of these stopped or silenced the worker.
        "broker_url": f"sqs://test:test@{endpoint.netloc}" if endpoint.netloc else "sqs://",
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "region": settings.aws_region,
            "is_secure": endpoint.scheme != "http",
            # Long polling: one ReceiveMessage waits up to 10 s, instead of polling an empty
            # queue.
            "wait_time_seconds": 10,
            # kombu 5.7 waits polling_interval not only after an empty poll but also whenever
            # the prefetch window is full (Channel._schedule_queue calls _loop1 with no
            # messages): with 1 s the worker slept a second after every batch of 10 and
            # counted 10 orders/s. Long polling already keeps an idle queue from being
            # hammered, so the wait can be short.
            "polling_interval": 0.1,
            # Only used if kombu ever creates a queue; the real queue is created by
            # app.sqs.ensure_queues with the same timeout and a RedrivePolicy.
            "visibility_timeout": settings.visibility_timeout,
            "fetch_message_attributes": {
                "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
                "MessageAttributeNames": [ORIGINAL_ID_ATTRIBUTE],
            },
            # A listed queue is never created or looked up by kombu; the URL comes from
            # settings.
            "predefined_queues": {
                **{name: {
                    "url": url,
                    # A failed delivery is left on the queue (not deleted) and comes back
                    # after this many seconds by receive count, until SQS moves it to the DLQ
                    # after MAX_RECEIVE_COUNT receives.
                    "backoff_policy": settings.failure_backoff_policy,
                    "backoff_tasks": list(ORDER_TASKS),
                    **credentials,
                } for name, url in settings.consumed_queue_urls.items()},
                # S3 file events (raw, gathered by tasks/collector.py) and the files tasks.
                **files_queue,
            },
            # The one queue whose task messages are the files canvas, not orders tasks
            # (tasks/sqs/receive.py checks each queue's task messages against its own tasks).
            "files_queue_url": settings.files_url if settings.files_enabled else None,
            # kombu then builds each predefined queue's client from AssumeRole's credentials
            # (through boto3's default chain and STS endpoint), renewed as they expire.
            **({"sts_role_arn": settings.sqs_sts_role_arn} if settings.sqs_sts_role_arn
               else {}),
        },
        # Tasks are sent to the orders queue; workers also take raw orders from
        # EXTRA_ORDERS_QUEUES, and S3 events and the files tasks from FILES_QUEUE (unless
        # FILES_ENABLED is false). A worker consumes them all unless started with -Q.
        "task_default_queue": settings.orders_queue,
        "task_queues": [Queue(name, Exchange(name), routing_key=name)
                        for name in [*settings.consumed_queue_urls, *files_queue]],
        "task_routes": {"files.*": {"queue": settings.files_queue}} if files_queue else {},
        "task_serializer": "json",
        "accept_content": ["json"],
        # Only the files tasks keep results (their chord needs them); the orders tasks do not.
        "task_ignore_result": True,
        "result_backend": settings.control_plane_url,
        "result_expires": 86400,
        # Exactly-once counting makes orders.process idempotent, so it is safe to ack only
        # after the task ran: a worker that dies mid-task leaves the message to be delivered
        # again.
        "task_acks_late": True,
        # A failed task is rejected, not acked: kombu leaves it on the queue and the
        # RedrivePolicy moves it to the dead-letter queue after MAX_RECEIVE_COUNT receives.
        # With the default (ack on failure) a failed message would be deleted and lost.
        "task_acks_on_failure": False,
        # Without this a pool process killed by the OOM killer or SIGKILL acks its task: lost.
        "task_reject_on_worker_lost": True,
        "task_time_limit": time_limit,
        "task_soft_time_limit": max(1, time_limit - 5),
        # Messages held unacknowledged per pool process: the batch it works on and the next
        # one waiting (acks are per batch, late). The receives in flight, which hide the SQS
        # round trip and follow the measured rate and round trip, widen the window by ten
        # messages each (tasks/sqs/receive.py), so nothing here depends on how far SQS is.
        "worker_prefetch_multiplier": 2 * settings.consume_batch_size,
        # Events and remote control ride on the control-plane Redis (tasks/control.py).
        "worker_consumer": "tasks.consumer:OrderConsumer",
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        # What `celery -A tasks beat` sends (one beat per deployment with the files path:
        # make run and compose start one). No expiry: the files queue runs no task message that carries one
        # (tasks/sqs/task_messages.py); runs that piled up while no worker took them only
        # repeat work already done (both tasks are idempotent).
        "beat_schedule": {
            name: {"task": name, "schedule": interval}
            for name, interval in ((FILES_SWEEP, settings.files_sweep_interval),
                                   (FILES_MAINTAIN, settings.files_maintain_interval))
        } if files_queue else {},
    }


if __name__ == "__main__":
    for name, value in sorted(celery_settings(from_env_or_exit()).items()):
        print(f"{name} = {value!r}")
