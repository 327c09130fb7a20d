"""Send rejected orders again, after their data or the policy was fixed."""
from __future__ import annotations

from app import sqs as sqs_api
from app.deadletters import ORIGINAL_ID_ATTRIBUTE
from app.store import KEPT_BODY_BYTES, Store


class NotRequeueable(ValueError):
    """The record kept only the head of an oversized body: there is nothing whole to send."""


def requeue(store: Store, sqs, orders_url: str, some_id: str) -> dict | None:
    """Send one rejected message's original body to the orders queue; None if unknown.

    Sent first, forgotten after: a crash in between leaves the record, and requeueing it
    again sends a second copy, which is harmless since an order is counted exactly once.
    If a worker rejects the body again before the record is forgotten, the record it
    writes is newer than the one read here and stays.
    """
    record = store.rejection(some_id)
    if record is None:
        return None
    if "body_sha256" in record:
        raise NotRequeueable(
            f"{record['message_id']}: its body of {record['body_bytes']} bytes was kept as its "
            f"first {KEPT_BODY_BYTES} bytes only; resend it from its source.")
    # On a FIFO queue: a group of its own (the record keeps no group, and its place in one
    # is long past), sent once per rejection however often it is requeued within 5 minutes.
    sqs.send_message(QueueUrl=orders_url, MessageBody=record["body"], MessageAttributes={
        ORIGINAL_ID_ATTRIBUTE: {"DataType": "String", "StringValue": record["message_id"]}},
        **sqs_api.fifo_send_fields(orders_url, record["message_id"],
                                   f"requeue {record['message_id']} {record['at']!r}"))
    store.forget_rejection(record)
    return record
