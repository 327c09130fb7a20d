"""Orders from existing producers on a FIFO queue (MessageGroupId) and on a KMS-encrypted
queue, consumed by today's worker on LocalStack.

Each queue is made as such a producer's account would have it: a FIFO queue with a FIFO
dead-letter queue, and a queue encrypted with a KMS key (LocalStack stores the key id and
does not encrypt: KMS is not among the services it runs here, so only AWS can show that
the worker's role may decrypt). Today the consumer counts both, and a FIFO poison message
reaches the FIFO DLQ; the operator CLI's sends (dlq redrive, rejected requeue) fail on a
FIFO queue: those tests are strict xfails naming the call to fix.
"""
from __future__ import annotations

import json
import random
from dataclasses import replace
from decimal import Decimal

import pytest
from botocore.exceptions import ClientError

from app import sqs
from app.deadletters import DeadLetterQueue
from app.orders import Incoming, evaluate
from app.rejections import requeue
from app.store import Store, user_key
from bench.order_builders import make_orders, order
from stack.services import wait_for


def make_queue_pair(client, name: str, dlq_name: str, attributes: dict, max_receive_count: int):
    """A queue and its dead-letter queue with the same attributes; the queue's URL."""
    dlq_url = client.create_queue(QueueName=dlq_name, Attributes=attributes)["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn,
                          "maxReceiveCount": str(max_receive_count)})
    return client.create_queue(QueueName=name, Attributes={**attributes,
                                                           "RedrivePolicy": redrive})["QueueUrl"]


def send_all(client, url: str, entries: list[dict]):
    for start in range(0, len(entries), 10):
        response = client.send_message_batch(QueueUrl=url, Entries=entries[start:start + 10])
        assert not response.get("Failed"), response["Failed"]


def assert_counted(store: Store, orders, timeout: float = 60):
    revenue = sum((value for _, value in orders), Decimal(0))
    wait_for(lambda: store.outcomes()["counted"] >= len(orders), timeout=timeout,
             message=f"{len(orders)} orders counted")
    totals = store.global_stats()
    assert (totals.total_orders, Decimal(totals.total_revenue_cents) / 100) == (len(orders),
                                                                                revenue)


@pytest.fixture
def fifo(settings, sqs_client):
    """Settings whose orders queue is FIFO, with a FIFO dead-letter queue named in ORDERS_DLQ
    (the default "<queue>-dlq" cannot name a FIFO queue: it must end in .fifo)."""
    name = f"{settings.orders_queue[:60]}.fifo"
    dlq = f"{settings.orders_queue[:55]}-dlq.fifo"
    make_queue_pair(sqs_client, name, dlq, {"FifoQueue": "true"}, settings.max_receive_count)
    return replace(settings, orders_queue=name, orders_dlq=dlq)


def fifo_entry(i: int, body: dict) -> dict:
    """A shop platform's FIFO send: grouped by user (order within a user), deduplicated
    by order id."""
    return {"Id": str(i), "MessageBody": json.dumps(body), "MessageGroupId": body["user_id"],
            "MessageDeduplicationId": body["order_id"]}


def test_orders_on_a_fifo_queue_are_counted_and_a_poison_reaches_its_fifo_dlq(
        fifo, sqs_client, store, start_worker):
    orders = make_orders("FF", 40, users=4, rng=random.Random(3))
    store.redis.set(user_key("POISONED"), "not a hash")  # counting it fails with WRONGTYPE
    poison = order(order_id="FF-POISON", user_id="POISONED")
    invalid = {"order_id": "FF-BAD", "user_id": "U001"}
    start_worker(settings=fifo)
    send_all(sqs_client, fifo.orders_url, [fifo_entry(i, body) for i, body in enumerate(
        [body for body, _ in orders] + [poison, invalid])])
    assert_counted(store, orders)
    wait_for(lambda: sqs.depth(fifo, fifo.dlq_name)["visible"] == 1, timeout=90,
             message="the poison message in the FIFO dead-letter queue")
    [letter] = DeadLetterQueue(fifo).list()
    assert json.loads(letter.body) == poison
    assert store.outcomes()["rejected"] == 1 and store.rejection("FF-BAD")


@pytest.mark.xfail(strict=True, raises=ClientError, reason=(
    "app/deadletters.py DeadLetterQueue.redrive sends with SendMessageBatch entries that "
    "carry no MessageGroupId or MessageDeduplicationId: SQS refuses them on a FIFO queue"))
def test_dlq_redrive_sends_fifo_dead_letters_back_in_their_group(fifo, sqs_client):
    dlq_url = sqs_client.get_queue_url(QueueName=fifo.dlq_name)["QueueUrl"]
    body = order(order_id="FF-DEAD", user_id="U002")
    send_all(sqs_client, dlq_url, [fifo_entry(0, body)])
    [moved] = DeadLetterQueue(fifo).redrive()
    [back] = sqs_client.receive_message(QueueUrl=fifo.orders_url, WaitTimeSeconds=2,
                                        MessageSystemAttributeNames=["MessageGroupId"])["Messages"]
    assert (json.loads(back["Body"]), back["Attributes"]["MessageGroupId"]) == (body, "U002")


@pytest.mark.xfail(strict=True, raises=ClientError, reason=(
    "app/rejections.py requeue calls SendMessage without MessageGroupId (and the rejection "
    "record keeps no group id to send it with): SQS refuses it on a FIFO queue"))
def test_rejected_requeue_sends_to_a_fifo_queue(fifo, sqs_client, store):
    body = json.dumps({"order_id": "FF-BAD", "user_id": "U001"})
    assert store.apply([evaluate(Incoming(body, "msg-fifo"), fifo)]) == ["rejected"]
    requeue(store, sqs_client, fifo.orders_url, "msg-fifo")
    [back] = sqs_client.receive_message(QueueUrl=fifo.orders_url, WaitTimeSeconds=2)["Messages"]
    assert back["Body"] == body


def test_orders_on_a_kms_encrypted_queue_are_counted(settings, sqs_client, store, start_worker):
    name = f"{settings.orders_queue[:60]}-kms"
    key = {"KmsMasterKeyId": "alias/aws/sqs", "KmsDataKeyReusePeriodSeconds": "300"}
    make_queue_pair(sqs_client, name, f"{name}-dlq", key, settings.max_receive_count)
    encrypted = replace(settings, orders_queue=name)
    assert sqs_client.get_queue_attributes(QueueUrl=encrypted.orders_url, AttributeNames=[
        "KmsMasterKeyId"])["Attributes"]["KmsMasterKeyId"] == "alias/aws/sqs"
    orders = make_orders("KM", 40, users=4, rng=random.Random(5))
    start_worker(settings=encrypted)
    send_all(sqs_client, encrypted.orders_url, [
        {"Id": str(i), "MessageBody": json.dumps(body)} for i, (body, _) in enumerate(orders)])
    assert_counted(store, orders)
