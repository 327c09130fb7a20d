"""The dead-letter queue: list, inspect, redrive and purge its messages."""
from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from app import sqs as sqs_api
from app.settings import Settings

logger = logging.getLogger(__name__)

# The id a message had when it first reached the pipeline. Kept across redrives and
# requeues, because a message without order_id is counted under its first message id.
ORIGINAL_ID_ATTRIBUTE = "orders-message-id"
# How long listed messages stay hidden from other readers of the DLQ before release.
PEEK_HIDE_SECONDS = 30


@dataclass(frozen=True)
class DeadLetter:
    """One message in the dead-letter queue."""

    message_id: str
    original_id: str
    receipt_handle: str
    body: str
    sent_at: datetime | None
    receive_count: int
    task_id: str | None
    retries: int | None
    # A FIFO queue's message group, kept when it is sent back.
    group_id: str | None = None

    def summary(self) -> dict:
        """JSON-safe fields for listings."""
        return {"message_id": self.message_id, "original_id": self.original_id,
                "task_id": self.task_id, "retries": self.retries,
                "sent_at": self.sent_at.isoformat() if self.sent_at else None,
                "receive_count": self.receive_count, "body": self.body}

    def matches(self, ids: set[str]) -> bool:
        """Whether any of its ids (message, original, task) is in ids."""
        return bool({self.message_id, self.original_id, self.task_id} & ids)


def original_id(message: dict) -> str:
    """The id a message had when it first reached the pipeline."""
    attribute = (message.get("MessageAttributes") or {}).get(ORIGINAL_ID_ATTRIBUTE) or {}
    return attribute.get("StringValue") or message["MessageId"]


def decode_task_envelope(body: str) -> dict | None:
    """The kombu envelope of a Celery task message, or None for a plain body."""
    for candidate in (body, _b64(body)):
        if candidate is None:
            continue
        try:
            envelope = json.loads(candidate)
        except ValueError:
            continue
        # Any body can be dead-lettered (a failed delivery keeps it): only an object with a
        # headers object naming a task is an envelope.
        headers = envelope.get("headers") if isinstance(envelope, dict) else None
        if isinstance(headers, dict) and isinstance(headers.get("task"), str):
            return envelope
    return None


def _b64(text: str) -> str | None:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def reset_retries(body: str) -> str:
    """The body to send again: a Celery task's retry count back to 0, plain bodies as they are."""
    envelope = decode_task_envelope(body)
    if envelope is None:
        return body
    envelope["headers"]["retries"] = 0
    # kombu base64-encodes task envelopes on SQS by default and reads both forms.
    return base64.b64encode(json.dumps(envelope).encode()).decode()


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _whole_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dead_letter(message: dict) -> DeadLetter:
    attributes = message.get("Attributes") or {}
    sent = attributes.get("SentTimestamp")
    envelope = decode_task_envelope(message["Body"])
    headers = (envelope or {}).get("headers") or {}
    return DeadLetter(
        message_id=message["MessageId"], original_id=original_id(message),
        receipt_handle=message["ReceiptHandle"], body=message["Body"],
        sent_at=datetime.fromtimestamp(int(sent) / 1000, timezone.utc) if sent else None,
        receive_count=int(attributes.get("ApproximateReceiveCount", 0)),
        # A forged envelope may hold anything: only a string id and a whole retry count.
        task_id=(_text_or_none(headers.get("id")) if envelope else original_id(message)),
        retries=_whole_or_none(headers.get("retries")),
        group_id=attributes.get("MessageGroupId"),
    )


class PurgeInProgress(RuntimeError):
    """SQS refused a purge because another one started less than 60 s ago."""


class DeadLetterQueue:
    """Operations on the orders queue's dead-letter queue."""

    def __init__(self, settings: Settings, client=None):
        self.settings = settings
        self.sqs = client or sqs_api.client(settings)
        self.url = sqs_api.queue_url(settings, settings.dlq_name, self.sqs)
        self.orders_url = sqs_api.queue_url(settings, settings.orders_queue, self.sqs)

    def _receive_all(self, limit: int) -> list[DeadLetter]:
        """Receive (and so hide) up to limit messages, each once."""
        seen: dict[str, DeadLetter] = {}
        empty_polls = 0
        # SQS samples a subset of servers per receive: one empty answer is not proof of
        # an empty queue, so stop after two in a row.
        while len(seen) < limit and empty_polls < 2:
            response = self.sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=min(10, limit - len(seen)),
                VisibilityTimeout=PEEK_HIDE_SECONDS, WaitTimeSeconds=1,
                MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"])
            messages = response.get("Messages", [])
            empty_polls = 0 if messages else empty_polls + 1
            for message in messages:
                seen[message["MessageId"]] = _dead_letter(message)
        return list(seen.values())

    def _release(self, letters: Iterable[DeadLetter]):
        """Make received messages visible again at once."""
        for batch in sqs_api.chunks(letters):
            self.sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=[
                {"Id": str(i), "ReceiptHandle": letter.receipt_handle, "VisibilityTimeout": 0}
                for i, letter in enumerate(batch)])

    def _delete(self, letters: Iterable[DeadLetter]):
        for batch in sqs_api.chunks(letters):
            self.sqs.delete_message_batch(QueueUrl=self.url, Entries=[
                {"Id": str(i), "ReceiptHandle": letter.receipt_handle}
                for i, letter in enumerate(batch)])

    def list(self, limit: int = 100) -> list[DeadLetter]:
        """The messages in the DLQ (up to limit), left in place."""
        letters = self._receive_all(limit)
        self._release(letters)
        return letters

    def show(self, some_id: str) -> DeadLetter | None:
        """One message by message id, original id or task id."""
        return next((letter for letter in self.list(limit=10_000) if letter.matches({some_id})),
                    None)

    def redrive(self, ids: Iterable[str] | None = None, limit: int = 10_000) -> list[DeadLetter]:
        """Move messages (all, or those with the given ids) back to the orders queue.

        A FIFO dead-letter queue hands out none of a group's messages while some are
        received: each pass moves what it was given, and passes go on until one moves none.
        """
        moved: list[DeadLetter] = []
        while len(moved) < limit:
            passed = self._redrive_pass(set(ids) if ids is not None else None,
                                        limit - len(moved))
            if not passed:
                return moved
            moved += passed
        return moved

    def _redrive_pass(self, wanted: set[str] | None, limit: int) -> list[DeadLetter]:
        letters = self._receive_all(limit)
        chosen = [letter for letter in letters if wanted is None or letter.matches(wanted)]
        self._release(letter for letter in letters if letter not in chosen)
        moved = []
        for batch in sqs_api.chunks(chosen):
            entries = [{"Id": str(i), "MessageBody": reset_retries(letter.body),
                        "MessageAttributes": {ORIGINAL_ID_ATTRIBUTE: {
                            "DataType": "String", "StringValue": letter.original_id}},
                        # Back in its group. Named after the dead letter (a new one each
                        # time the message fails again): a redrive that sent it but died
                        # before the delete, run again within 5 minutes, sends it once.
                        **sqs_api.fifo_send_fields(self.orders_url,
                                                   letter.group_id or letter.original_id,
                                                   f"redrive {letter.message_id}")}
                       for i, letter in enumerate(batch)]
            response = self.sqs.send_message_batch(QueueUrl=self.orders_url, Entries=entries)
            failed = {int(f["Id"]) for f in response.get("Failed", [])}
            sent = [letter for i, letter in enumerate(batch) if i not in failed]
            # Delete only what was sent: a failure leaves the letter in the DLQ to try again.
            self._delete(sent)
            self._release(letter for i, letter in enumerate(batch) if i in failed)
            moved += sent
        return moved

    def purge(self) -> int:
        """Delete every message in the DLQ (SQS PurgeQueue); return about how many it held.

        SQS allows one purge per queue every 60 s: a second one raises PurgeInProgress.
        """
        held = sum(sqs_api.depth(self.settings, self.settings.dlq_name, self.sqs).values())
        try:
            self.sqs.purge_queue(QueueUrl=self.url)
        except self.sqs.exceptions.PurgeQueueInProgress:
            raise PurgeInProgress("A purge of the dead-letter queue is already in progress "
                                  "(SQS allows one every 60 s); try again in a minute.") from None
        return held
