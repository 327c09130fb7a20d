"""Celery settings, derived from app.settings (the environment); check with python -m celeryconfig."""
from urllib.parse import urlsplit as _urlsplit

from kombu import Exchange as _Exchange, Queue as _Queue

from app.deadletters import ORIGINAL_ID_ATTRIBUTE as _ORIGINAL_ID
from app.settings import from_env as _from_env

_settings = _from_env()
_endpoint = _urlsplit(_settings.sqs_endpoint_url)

# Tasks travel on SQS. With an endpoint (LocalStack, a VPC endpoint) kombu talks to that
# host; without one, "sqs://" means real AWS and boto3's usual credential chain.
broker_url = f"sqs://test:test@{_endpoint.netloc}" if _endpoint.netloc else "sqs://"
# sqs:// runs kombu's SQS transport with fixes for requeues, odd bodies and failed receives
# (tasks/transport.py, registered by tasks/celery.py): without them each of these stopped
# or silenced the worker.
broker_connection_retry_on_startup = True
broker_transport_options = {
    "region": _settings.aws_region,
    "is_secure": _endpoint.scheme != "http",
    # Long polling: one ReceiveMessage waits up to 10 s, instead of polling an empty queue.
    "wait_time_seconds": 10,
    # kombu 5.7 waits polling_interval not only after an empty poll but also whenever the
    # prefetch window is full (Channel._schedule_queue calls _loop1 with no messages): with
    # 1 s the worker slept a second after every batch of 10 and counted 10 orders/s. Long
    # polling already keeps an idle queue from being hammered, so the wait can be short.
    "polling_interval": 0.1,
    # Only used if kombu ever creates a queue; the real queue is created by
    # app.sqs.ensure_queues with the same timeout and a RedrivePolicy.
    "visibility_timeout": _settings.visibility_timeout,
    "fetch_message_attributes": {
        "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        "MessageAttributeNames": [_ORIGINAL_ID],
    },
    # A listed queue is never created or looked up by kombu; the URL comes from settings.
    "predefined_queues": {
        name: {
            "url": url,
            # A failed delivery is left on the queue (not deleted) and comes back after
            # this many seconds by receive count, until SQS moves it to the DLQ after
            # MAX_RECEIVE_COUNT receives.
            "backoff_policy": _settings.failure_backoff_policy,
            "backoff_tasks": ["orders.process", "orders.process_batch"],
            **({"access_key_id": "test", "secret_access_key": "test"}
               if _endpoint.netloc else {}),
        }
        for name, url in _settings.consumed_queue_urls.items()
    },
}

# Tasks are sent to the orders queue; workers also take raw orders from EXTRA_ORDERS_QUEUES.
task_default_queue = _settings.orders_queue
task_queues = [_Queue(name, _Exchange(name), routing_key=name)
               for name in _settings.consumed_queue_urls]
task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

# Exactly-once counting makes orders.process idempotent, so it is safe to ack only after
# the task ran: a worker that dies mid-task leaves the message to be delivered again.
task_acks_late = True
# A failed task is rejected, not acked: kombu leaves it on the queue and the RedrivePolicy
# moves it to the dead-letter queue after MAX_RECEIVE_COUNT receives. With the default
# (ack on failure) a failed message would be deleted and lost.
task_acks_on_failure = False
# Without this a pool process killed by the OOM killer or SIGKILL acks its task: lost.
task_reject_on_worker_lost = True
# A task still running when the visibility timeout ends is handed to another worker, so
# the hard limit stays well below it. Retries' countdowns are capped by
# RETRY_BACKOFF_MAX, which settings keep below the visibility timeout for the same reason.
task_time_limit = max(1, min(60, _settings.visibility_timeout // 2))
task_soft_time_limit = max(1, task_time_limit - 5)

# Messages held unacknowledged per pool process: the batch it works on and the next one
# waiting (acks are per batch, late). The receives in flight, which hide the SQS round
# trip, widen the window by what the measured rate and round trip need
# (tasks/pipelining.py), so nothing here depends on how far away SQS is.
worker_prefetch_multiplier = 2 * _settings.consume_batch_size
# Events and remote control ride on the control-plane Redis (tasks/control.py).
worker_consumer = "tasks.consumer:OrderConsumer"
worker_send_task_events = True
worker_hijack_root_logger = False

if __name__ == "__main__":
    for name, value in sorted(globals().items()):
        if not name.startswith("_") and name.islower():
            print(f"{name} = {value!r}")
