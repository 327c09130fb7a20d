"""The consumer's files branch: S3 event messages of FILES_QUEUE gathered into one execution.

S3 event notifications arrive as raw SQS bodies. The consumer collects those that arrive
within FILES_BATCH_WINDOW seconds into one files.execute task message without deleting
them: the events stay on SQS (hidden) until the execution's last step deletes them, and a
failed execution makes them visible again, so SQS retries them and, after
maxReceiveCount receives, dead-letters them. Nothing here can lose an event.
"""
from __future__ import annotations

from kombu.message import Message

from app.settings import Settings
from tasks import compat
from tasks.batching import GroupMessage
from tasks.names import FILES_EXECUTE

# Events per execution at most: files.execute's message carries their bodies (about 1.5 KB
# each) and must stay well below SQS's 1 MiB; a burst becomes several executions.
MAX_EVENTS = 100


def event_entry(message: Message) -> dict:
    """The JSON-safe description of one raw event message, as files.execute receives it."""
    sqs_message = message.delivery_info["sqs_message"]
    attributes = sqs_message.get("Attributes") or {}
    return {"body": sqs_message["Body"], "message_id": sqs_message["MessageId"],
            "receipt_handle": sqs_message["ReceiptHandle"],
            "receive_count": int(attributes.get("ApproximateReceiveCount", 1))}


class EventsMessage(GroupMessage):
    """One files.execute task message standing for the raw event messages of a window.

    Settling it only releases kombu's prefetch slots: the events themselves are deleted by
    the execution's last step (files.finish) or made visible again by its error path.
    """

    def __init__(self, app, messages: list[Message]):
        super().__init__(app, FILES_EXECUTE, messages, [event_entry(m) for m in messages])

    def ack(self, multiple=False):
        """Release the events' prefetch slots; they stay on SQS for the execution."""
        for message in self.messages:
            compat.release_delivery(message.channel, message.delivery_tag)
            compat.mark_settled(message, "ACK")
        compat.mark_settled(self, "ACK")

    def reject(self, requeue=False):
        """files.execute itself failed: the events come back after their backoff."""
        for message in self.messages:
            message.reject(requeue=requeue)
        compat.mark_settled(self, "REJECTED")

    def requeue(self):
        """Give every event back to the queue."""
        self.reject(requeue=True)


class FilesBatcher:
    """Collects raw messages of the files queue for a window, then hands them over as one."""

    def __init__(self, consumer, settings: Settings):
        self.consumer = consumer
        self.queue = settings.files_queue
        self.url = settings.files_url
        self.window = settings.files_batch_window
        self._messages: list[Message] = []
        self._timer = None
        self._handle = None

    def takes(self, message) -> bool:
        """True for a raw (not Celery) message received from the files queue."""
        info = message.delivery_info or {}
        return (info.get("sqs_queue") == self.url and "sqs_message" in info
                and "task" not in (message.headers or {}))

    def add(self, message, handle_task_message):
        """Hold an event message until the window closes."""
        # The routing key and task name are what kombu's SQS backoff policy looks up.
        message.delivery_info.setdefault("routing_key", self.queue)
        message.delivery_info.setdefault("exchange", "")
        message.headers = {"task": FILES_EXECUTE}
        self._handle = handle_task_message
        self._messages.append(message)
        if len(self._messages) >= MAX_EVENTS:
            if self._timer is not None:
                self._timer.cancel()
            self.flush()
        elif self._timer is None:
            self._timer = self.consumer.timer.call_after(self.window, self.flush)

    def flush(self):
        """Run the window's events as one files.execute task."""
        self._timer = None
        messages, self._messages = self._messages, []
        if messages:
            self._handle(EventsMessage(self.consumer.app, messages))
