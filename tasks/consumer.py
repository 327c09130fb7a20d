"""The worker's consumer, taught to run plain JSON order bodies as orders.process tasks."""
from __future__ import annotations

from celery.worker.consumer import Consumer
from kombu.serialization import dumps

from app.deadletters import original_id
from app.settings import from_env

RAW_ORDER_TASK = "orders.process"


def adopt_raw_order(app, message) -> bool:
    """Turn a raw SQS order message into a Celery task message in place.

    Ordinary SQS producers send the order JSON as the whole body. kombu hands it over
    with no task headers; given headers and an encoded (args, kwargs) body it runs
    through Celery's own strategy: the same acks, retries, events and time limits.
    """
    sqs_message = (message.delivery_info or {}).get("sqs_message")
    if not sqs_message:
        return False
    # A redriven or requeued message keeps the id it first had: orders without an
    # order_id are counted under it.
    message_id = original_id(sqs_message)
    sent_at_ms = (sqs_message.get("Attributes") or {}).get("SentTimestamp")
    headers, properties, body, _ = app.amqp.as_task_v2(
        message_id, RAW_ORDER_TASK, args=(sqs_message["Body"],),
        kwargs={"message_id": message_id, "sent_at_ms": int(sent_at_ms) if sent_at_ms else None},
    )
    message.content_type, message.content_encoding, message.body = dumps(body, serializer="json")
    message.headers = headers
    message.properties.update(properties)
    message._decoded_cache = None
    return True


class OrderConsumer(Consumer):
    """Celery's Consumer: raw order bodies adopted as tasks, events and control on Redis."""

    class Blueprint(Consumer.Blueprint):
        """Celery's consumer steps with remote control served from the control plane."""

        default_steps = [step.replace("celery.worker.consumer.control:Control",
                                      "tasks.control:RedisControl")
                         for step in Consumer.Blueprint.default_steps]

    def connection_for_write(self, url=None, heartbeat=None):
        """Events go to the control-plane Redis: SQS would drop them (no fanout)."""
        return self.ensure_connected(self.app.connection_for_write(
            url=url or from_env().control_plane_url, heartbeat=heartbeat))

    def create_task_handler(self, *args, **kwargs):
        handle_task_message = super().create_task_handler(*args, **kwargs)

        def on_message(message):
            if "task" not in (message.headers or {}):
                adopt_raw_order(self.app, message)
            return handle_task_message(message)

        return on_message
