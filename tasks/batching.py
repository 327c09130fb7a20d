"""Up to ten raw SQS messages run as one Celery task: one EVALSHA and one DeleteMessageBatch.

Celery acks each task message with its own DeleteMessage, and a task per order costs a
Redis round trip and a pool round trip per order. Batches of the ten messages one
ReceiveMessage returns bring that to 0.2 SQS requests and 0.1 Redis calls per order,
while the batch still runs through Celery's machinery (retries, events, time limits).
"""
from __future__ import annotations

import uuid

from celery.worker.request import Request
from kombu.message import Message
from kombu.serialization import dumps

from tasks import compat
from tasks.names import PROCESS_BATCH
from tasks.pipelining import settler

# delivery_info key under which the transport leaves why it did not run a task-shaped body
# as a task (tasks/task_messages.py); the pipeline adds it to the body's rejection.
REFUSED_KEY = "orders_refused_task"


class BatchPartlyFailed(Exception):
    """Some orders of a batch failed for a reason other than bad data; the rest counted."""

    def __init__(self, failed_ids: list[str], detail: str):
        super().__init__(failed_ids, detail)
        self.failed_ids = failed_ids

    def __str__(self):
        # The ids are what `celery -A tasks dlq redrive` takes once they are dead-lettered.
        return (f"{len(self.failed_ids)} order message(s) failed "
                f"({', '.join(self.failed_ids)}): {self.args[1]}")


def raw_entry(message: Message, message_id: str) -> dict:
    """The JSON-safe description of one raw SQS message, as the batch task receives it."""
    sqs_message = message.delivery_info["sqs_message"]
    sent_at_ms = (sqs_message.get("Attributes") or {}).get("SentTimestamp")
    return {"body": sqs_message["Body"], "message_id": message_id,
            "sent_at_ms": int(sent_at_ms) if sent_at_ms else None,
            "refused_task": message.delivery_info.get(REFUSED_KEY)}


def entries_repr(entries: list, limit: int) -> str:
    """repr((entries,)) cut to limit characters, as Flower shows a task's arguments.

    Celery's saferepr of every batch's bodies cost a tenth of the consumer's CPU; texts
    are cut first, so a repr never copies whole bodies.
    """
    shown = [{key: value[:limit] if isinstance(value, str) else value
              for key, value in entry.items()} if isinstance(entry, dict) else entry
             for entry in entries]
    text = repr((shown,))
    return text if len(text) <= limit else text[:limit - 3] + "..."


class GroupMessage(Message):
    """One task message, task(entries), standing for several raw SQS messages of one queue.

    Built in the worker as Celery's own producer would build it, so the task runs through
    Celery's strategy (acks, retries, events, time limits); subclasses settle the messages.
    """

    def __init__(self, app, task: str, messages: list[Message], entries: list[dict]):
        headers, properties, body, _ = app.amqp.as_task_v2(
            str(uuid.uuid4()), task, args=(entries,), kwargsrepr="{}",
            argsrepr=entries_repr(entries, app.amqp.argsrepr_maxsize))
        content_type, content_encoding, payload = dumps(body, serializer="json")
        first = messages[0]
        super().__init__(body=payload, channel=first.channel, delivery_tag=first.delivery_tag,
                         content_type=content_type, content_encoding=content_encoding,
                         delivery_info=dict(first.delivery_info), properties=properties,
                         headers=headers)
        self.messages = messages


class BatchMessage(GroupMessage):
    """Up to ten raw orders as one orders.process_batch task, settled together."""

    def __init__(self, app, messages: list[Message], entries: list[dict]):
        super().__init__(app, PROCESS_BATCH, messages, entries)
        self.ids = [entry["message_id"] for entry in entries]
        # Messages whose orders failed (set from a BatchPartlyFailed): rejected, not deleted.
        self.failed_ids: set[str] = set()

    def ack(self, multiple=False):
        """Delete every message with one DeleteMessageBatch (failed ones are rejected)."""
        self._settle()
        compat.mark_settled(self, "ACK")

    def reject(self, requeue=False):
        """Leave the messages to SQS: redelivered after their backoff, then dead-lettered.

        After a partial failure only the failed messages are left; the rest are deleted.
        """
        if self.failed_ids and not requeue:
            self._settle()
        else:
            for message in self.messages:
                message.reject(requeue=requeue)
        compat.mark_settled(self, "REJECTED")

    def requeue(self):
        """Give every message back to the queue."""
        self.reject(requeue=True)

    def _settle(self):
        done = [m for m, i in zip(self.messages, self.ids) if i not in self.failed_ids]
        for message, message_id in zip(self.messages, self.ids):
            if message_id in self.failed_ids:
                message.reject(requeue=False)
        if done:
            delete_batch(done)


def delete_batch(messages: list[Message]):
    """Release the messages' prefetch slots now; delete them in one call off the event loop.

    The DeleteMessageBatch is sent from the event loop and not waited for (or waits on a
    thread off the loop: tasks/pipelining.py); if it fails, the messages are received
    again and counted as duplicates.
    """
    channel = messages[0].channel
    info = messages[0].delivery_info
    queue = channel.canonical_queue_name(info["routing_key"]) if "routing_key" in info else None
    settler(channel).delete(channel.sqs(queue=queue), info["sqs_queue"],
                            [m.delivery_info["sqs_message"]["ReceiptHandle"] for m in messages])
    for message in messages:
        # The base channel's ack only does kombu's bookkeeping; SQS's would delete again.
        compat.release_delivery(message.channel, message.delivery_tag)
        compat.mark_settled(message, "ACK")


class BatchRequest(Request):
    """Request of the batch task: a partial failure settles messages one by one."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        """Delete the counted messages and leave only the failed ones to SQS."""
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        message = compat.request_message(self)
        if isinstance(exc, BatchPartlyFailed) and isinstance(message, BatchMessage):
            message.failed_ids = set(exc.failed_ids)
        return super().on_failure(exc_info, send_failed_event, return_ok)
