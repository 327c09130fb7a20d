"""Raw SQS messages run as Celery tasks: one collector groups them into one task message.

Ordinary producers send the order JSON as the whole SQS body, and S3 sends its event
notifications the same way: kombu hands them over with no task headers. Given headers
and an encoded (args, kwargs) body, they run through Celery's own strategy: the same
acks, retries, events and time limits.

Celery acks each task message with its own DeleteMessage, and a task per order costs a
Redis round trip and a pool round trip per order. Grouping the (up to) ten messages one
ReceiveMessage returns into one orders.process_batch task brings that to 0.2 SQS
requests and 0.1 Redis calls per order. S3 events that arrive within FILES_BATCH_WINDOW
become one files.execute task, which starts one execution over them.

A group message settles its SQS messages through tasks/sqs/settle.py: an orders batch
deletes them together (leaving only the failed ones to SQS after a partial failure);
the file events stay on SQS (hidden) for the execution, whose last step deletes them and
whose error path makes them visible again, so SQS retries and then dead-letters them.
"""
from __future__ import annotations

import uuid
from typing import Callable

from kombu.message import Message
from kombu.serialization import dumps

from app.deadletters import original_id
from tasks import compat
from tasks.backpressure import StoreRequest
from tasks.names import FILES_EXECUTE, PROCESS_BATCH, PROCESS_ORDER
from tasks.sqs.settle import DONE, FAILED, HELD, RETURNED, settle
from tasks.sqs.task_messages import REFUSED_KEY, is_message_id

# A ReceiveMessage hands its messages over one after the other in the same loop turn;
# this short wait only matters for a last, incomplete batch of orders.
ORDERS_WINDOW_SECONDS = 0.02
# Events per execution at most: files.execute's message carries their bodies (about 1.5 KB
# each) and must stay well below SQS's 1 MiB; a burst becomes several executions.
MAX_EVENTS = 100


class Collector:
    """Holds raw messages of one queue until `size` have come or `window` seconds passed,
    then hands them on as one task message, make_message(messages)."""

    def __init__(self, timer, window: float, size: int,
                 make_message: Callable[[list[Message]], Message], handle: Callable):
        self.timer, self.window, self.size = timer, window, size
        self.make_message, self.handle = make_message, handle
        self._messages: list[Message] = []
        self._timer = None

    def add(self, message: Message):
        """Hold one message; hand the group on once full."""
        if self._messages and (self._messages[0].delivery_info["sqs_queue"]
                               != message.delivery_info["sqs_queue"]):
            self.flush()  # one DeleteMessageBatch deletes from one queue
        self._messages.append(message)
        if len(self._messages) >= self.size:
            self.flush()
        elif self._timer is None:
            self._timer = self.timer.call_after(self.window, self.flush)

    def flush(self):
        """Hand on what is held, as one task message."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        messages, self._messages = self._messages, []
        if messages:
            self.handle(self.make_message(messages))


def message_id(message: Message) -> str:
    """The id an order without order_id is counted under: the id its message first had.

    A redriven or requeued message keeps it. Any sender can set that attribute: only an
    id that is short printable text is taken (a retried batch must pass the same check).
    """
    sqs_message = message.delivery_info["sqs_message"]
    first = original_id(sqs_message)
    return first if is_message_id(first) else sqs_message["MessageId"]


def raw_entry(message: Message) -> dict:
    """The JSON-safe description of one raw order message, as the batch task receives it."""
    sqs_message = message.delivery_info["sqs_message"]
    sent_at_ms = (sqs_message.get("Attributes") or {}).get("SentTimestamp")
    return {"body": sqs_message["Body"], "message_id": message_id(message),
            "sent_at_ms": int(sent_at_ms) if sent_at_ms else None,
            "refused_task": message.delivery_info.get(REFUSED_KEY)}


def event_entry(message: Message) -> dict:
    """The JSON-safe description of one raw event message, as files.execute receives it."""
    sqs_message = message.delivery_info["sqs_message"]
    attributes = sqs_message.get("Attributes") or {}
    return {"body": sqs_message["Body"], "message_id": sqs_message["MessageId"],
            "receipt_handle": sqs_message["ReceiptHandle"],
            "receive_count": int(attributes.get("ApproximateReceiveCount", 1))}


def adopt_raw_order(app, message: Message) -> bool:
    """Turn one raw SQS order message into an orders.process task message in place."""
    if not (message.delivery_info or {}).get("sqs_message"):
        return False
    entry = raw_entry(message)
    headers, properties, body, _ = app.amqp.as_task_v2(
        entry["message_id"], PROCESS_ORDER, args=(entry["body"],),
        kwargs={"message_id": entry["message_id"], "sent_at_ms": entry["sent_at_ms"],
                "refused_task": entry["refused_task"]},
    )
    message.content_type, message.content_encoding, message.body = dumps(body, serializer="json")
    message.headers = headers
    message.properties.update(properties)
    compat.forget_decoded_body(message)
    return True


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
    Celery's strategy (acks, retries, events, time limits); subclasses say how each
    outcome settles the messages.
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
        for message in messages:
            # Each is settled as a delivery of this task: its queue's backoff policy, which
            # applies by task name, finds it.
            message.headers = {"task": task}

    def ack(self, multiple=False):
        """The task ran (or was retried: its successor is on the queue)."""
        self._settle_all(DONE)
        compat.mark_settled(self, "ACK")

    def reject(self, requeue=False):
        """The task failed (the messages wait out their backoff) or was requeued."""
        self._settle_all(RETURNED if requeue else FAILED)
        compat.mark_settled(self, "REJECTED")

    def requeue(self):
        """Give every message back to the queue."""
        self.reject(requeue=True)

    def _settle_all(self, outcome: str):
        settle(self.messages, outcome)


class OrdersBatch(GroupMessage):
    """Up to ten raw orders as one orders.process_batch task, settled together."""

    def __init__(self, app, messages: list[Message]):
        entries = [raw_entry(m) for m in messages]
        super().__init__(app, PROCESS_BATCH, messages, entries)
        self.ids = [entry["message_id"] for entry in entries]
        # Messages whose orders failed (set from a BatchPartlyFailed): left to SQS, not deleted.
        self.failed_ids: set[str] = set()

    def _settle_all(self, outcome: str):
        if not self.failed_ids or outcome == RETURNED:
            return settle(self.messages, outcome)
        # A partial failure: the counted messages are deleted, the failed ones wait.
        failed = [m for m, i in zip(self.messages, self.ids) if i in self.failed_ids]
        settle(failed, FAILED)
        settle([m for m in self.messages if m not in failed], DONE)


class FileEvents(GroupMessage):
    """One files.execute task message standing for the raw event messages of a window.

    When it ran, its events are held: the execution's last step (files.finish) deletes
    them, or its error path makes them visible again.
    """

    def __init__(self, app, messages: list[Message]):
        super().__init__(app, FILES_EXECUTE, messages, [event_entry(m) for m in messages])

    def _settle_all(self, outcome: str):
        settle(self.messages, HELD if outcome == DONE else outcome)


class BatchPartlyFailed(Exception):
    """Some orders of a batch failed for a reason other than bad data; the rest counted."""

    def __init__(self, failed_ids: list[str], detail: str):
        super().__init__(failed_ids, detail)
        self.failed_ids = failed_ids

    def __str__(self):
        # The ids are what `celery -A tasks dlq redrive` takes once they are dead-lettered.
        return (f"{len(self.failed_ids)} order message(s) failed "
                f"({', '.join(self.failed_ids)}): {self.args[1]}")


class BatchRequest(StoreRequest):
    """Request of the batch task: a partial failure names the messages that failed (and a
    refused write pauses consumption, as for every orders task)."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        """Mark the failed messages: the batch's reject deletes the rest and leaves those."""
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        message = compat.request_message(self)
        if isinstance(exc, BatchPartlyFailed) and isinstance(message, OrdersBatch):
            message.failed_ids = set(exc.failed_ids)
        return super().on_failure(exc_info, send_failed_event, return_ok)
