"""requeue: a rejected body goes back to the orders queue whole, once fixed, or not at all."""
from dataclasses import replace

import pytest

from app import pipeline, sqs
from app.deadletters import ORIGINAL_ID_ATTRIBUTE, original_id
from app.orders import Incoming, evaluate
from app.rejections import NotRequeueable, requeue
from app.store import Store
from conftest import order_body


def receive_one(sqs_client, url: str) -> dict:
    """The one message on the queue (long polling returns as soon as it is there)."""
    messages = sqs_client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=5,
                                          MessageAttributeNames=["All"]).get("Messages", [])
    assert len(messages) == 1, messages
    return messages[0]


def visible(settings) -> int:
    return sqs.depth(settings, settings.orders_queue)["visible"]


def test_a_rejected_body_is_sent_again_whole_and_counts_once_the_policy_is_fixed(
        settings, store, sqs_client):
    body = order_body("R-1", value_cents=502)  # the item total is 5.00: a mismatch
    assert store.apply([evaluate(Incoming(body, "msg-1"), settings)]) == ["rejected"]
    rejected = store.outcomes()["rejected"]

    record = requeue(store, sqs_client, settings.orders_url, "R-1")  # found by its order id

    assert record["message_id"] == "msg-1"
    message = receive_one(sqs_client, settings.orders_url)
    assert message["Body"] == body
    assert message["MessageAttributes"][ORIGINAL_ID_ATTRIBUTE]["StringValue"] == "msg-1"
    assert store.rejection("msg-1") is None
    assert store.outcomes()["rejected"] == rejected - 1
    # Once the policy takes the item total, the same body counts, under its first id.
    fixed = replace(settings, order_value_mismatch="correct")
    [outcome] = pipeline.process([Incoming(message["Body"], original_id(message))], store, fixed)
    assert (outcome.message_id, outcome.status) == ("msg-1", "counted")


def test_an_unknown_id_sends_nothing(settings, store, sqs_client):
    assert requeue(store, sqs_client, settings.orders_url, "no-such-id") is None
    assert visible(settings) == 0


def test_a_body_kept_only_in_part_is_not_requeued_and_its_record_stays(settings, sqs_client):
    small = replace(settings, max_order_bytes=1000)
    store = Store.from_url(small.redis_url, small)
    body = order_body("R-BIG", shipping_address="x" * 2000)
    assert store.apply([evaluate(Incoming(body, "msg-big"), small)]) == ["rejected"]

    with pytest.raises(NotRequeueable, match=f"{len(body.encode())} bytes"):
        requeue(store, sqs_client, small.orders_url, "msg-big")

    assert store.rejection("msg-big")["body_bytes"] == len(body.encode())
    assert visible(small) == 0
