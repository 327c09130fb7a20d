"""The worker's consumer, taught to run plain JSON order bodies as orders.process tasks."""
from __future__ import annotations

from celery.worker.consumer import Consumer
from kombu.serialization import dumps

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
    message_id = sqs_message["MessageId"]
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
    """Celery's Consumer with raw order bodies adopted as orders.process tasks."""

    def create_task_handler(self, *args, **kwargs):
        handle_task_message = super().create_task_handler(*args, **kwargs)

        def on_message(message):
            if "task" not in (message.headers or {}):
                adopt_raw_order(self.app, message)
            return handle_task_message(message)

        return on_message
