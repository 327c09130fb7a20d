"""Send rejected orders again, after their data or the policy was fixed."""
from __future__ import annotations

from app.deadletters import ORIGINAL_ID_ATTRIBUTE
from app.store import Store


def requeue(store: Store, sqs, orders_url: str, some_id: str) -> dict | None:
    """Send one rejected message's original body to the orders queue; None if unknown.

    The record is removed first: a worker that rejects the body again before we return
    then records it afresh instead of finding the old record and skipping it.
    """
    record = store.rejection(some_id)
    if record is None or not store.forget_rejection(record["message_id"]):
        return None
    try:
        sqs.send_message(QueueUrl=orders_url, MessageBody=record["body"], MessageAttributes={
            ORIGINAL_ID_ATTRIBUTE: {"DataType": "String", "StringValue": record["message_id"]}})
    except Exception:
        store.restore_rejection(record)
        raise
    return record
