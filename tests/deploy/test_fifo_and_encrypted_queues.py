"""Orders from existing producers on a FIFO queue (MessageGroupId) and on a KMS-encrypted
queue, consumed by today's worker on LocalStack.

Each queue is made as such a producer's account would have it: a FIFO queue with a FIFO
dead-letter queue, and a queue encrypted with a KMS key (LocalStack stores the key id and
does not encrypt: KMS is not among the services it runs here, so only AWS can show that
the worker's role may decrypt). The consumer counts both, a FIFO poison message reaches
the FIFO DLQ, and the operator CLI's sends (dlq redrive, rejected requeue) give a FIFO
queue the group and deduplication ids it requires. `stack.init_queues` makes a FIFO queue
and a FIFO dead-letter queue of a `.fifo` name.
"""
from __future__ import annotations

import json
import random
from dataclasses import replace
from decimal import Decimal

import pytest

from app import sqs
from app.settings import Settings
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


def receive_all(client, url: str) -> list[dict]:
    """Every message of a queue, deleted as received, in the order received, with its group."""
    received = []
    while messages := client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
            MessageSystemAttributeNames=["MessageGroupId"]).get("Messages", []):
        received += messages
        client.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
    return received


def test_dlq_redrive_sends_fifo_dead_letters_back_in_their_group(fifo, sqs_client):
    dlq_url = sqs_client.get_queue_url(QueueName=fifo.dlq_name)["QueueUrl"]
    body = order(order_id="FF-DEAD", user_id="U002")
    send_all(sqs_client, dlq_url, [fifo_entry(0, body)])
    [moved] = DeadLetterQueue(fifo).redrive()
    [back] = sqs_client.receive_message(QueueUrl=fifo.orders_url, WaitTimeSeconds=2,
                                        MessageSystemAttributeNames=["MessageGroupId"])["Messages"]
    assert (json.loads(back["Body"]), back["Attributes"]["MessageGroupId"]) == (body, "U002")


def test_dlq_redrive_moves_a_fifo_group_larger_than_one_receive_in_order(fifo, sqs_client):
    """SQS hands out none of a FIFO group's messages while others of it are received."""
    dlq_url = sqs_client.get_queue_url(QueueName=fifo.dlq_name)["QueueUrl"]
    bodies = [order(order_id=f"FF-G{i:02}", user_id="U003") for i in range(23)]
    send_all(sqs_client, dlq_url, [fifo_entry(i, body) for i, body in enumerate(bodies)])
    moved = DeadLetterQueue(fifo).redrive()
    assert len(moved) == len(bodies)
    back = receive_all(sqs_client, fifo.orders_url)
    assert [(json.loads(m["Body"]), m["Attributes"]["MessageGroupId"]) for m in back] == [
        (body, "U003") for body in bodies]


class DiesBeforeDeleting(DeadLetterQueue):
    """A redrive that sends and then dies before it deletes what it sent."""

    undeleted: list = []

    def _delete(self, letters):
        self.undeleted = list(letters)
        raise KeyboardInterrupt("killed between the send and the delete")


def test_a_fifo_redrive_run_again_after_dying_before_its_delete_sends_once(fifo, sqs_client):
    dlq_url = sqs_client.get_queue_url(QueueName=fifo.dlq_name)["QueueUrl"]
    bodies = [order(order_id=f"FF-R{i}", user_id=f"U00{i}") for i in range(3)]
    send_all(sqs_client, dlq_url, [fifo_entry(i, body) for i, body in enumerate(bodies)])
    dying = DiesBeforeDeleting(fifo)
    with pytest.raises(KeyboardInterrupt):
        dying.redrive()
    letters = DeadLetterQueue(fifo)
    # What it received shows again after PEEK_HIDE_SECONDS; the test does not wait them out.
    letters._release(dying.undeleted)
    assert len(letters.redrive()) == len(bodies)
    back = receive_all(sqs_client, fifo.orders_url)
    assert sorted(json.loads(m["Body"])["order_id"] for m in back) == [
        body["order_id"] for body in bodies]
    assert sqs.depth(fifo, fifo.dlq_name)["visible"] == 0


def test_rejected_requeue_sends_to_a_fifo_queue(fifo, sqs_client, store):
    body = json.dumps({"order_id": "FF-BAD", "user_id": "U001"})
    assert store.apply([evaluate(Incoming(body, "msg-fifo"), fifo)]) == ["rejected"]
    requeue(store, sqs_client, fifo.orders_url, "msg-fifo")
    [back] = sqs_client.receive_message(QueueUrl=fifo.orders_url, WaitTimeSeconds=2)["Messages"]
    assert back["Body"] == body


def test_init_queues_makes_fifo_queues_and_a_fifo_dlq_of_a_fifo_name(settings, sqs_client):
    fifo = replace(settings, orders_queue=f"{settings.orders_queue[:60]}.fifo")
    assert fifo.dlq_name == f"{settings.orders_queue[:60]}-dlq.fifo"
    urls = sqs.ensure_queues(fifo)
    assert set(urls) == {fifo.orders_queue, fifo.dlq_name}
    made = {name: sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
        "Attributes"] for name, url in urls.items()}
    assert made[fifo.orders_queue]["FifoQueue"] == made[fifo.dlq_name]["FifoQueue"] == "true"
    assert made[fifo.orders_queue]["ContentBasedDeduplication"] == "true"
    assert json.loads(made[fifo.orders_queue]["RedrivePolicy"])["deadLetterTargetArn"] == (
        made[fifo.dlq_name]["QueueArn"])
    assert sqs.ensure_queues(fifo) == urls  # again: nothing changes
    # A producer that names no deduplication id (the AWS CLI, orders-produce) is served.
    sqs_client.send_message(QueueUrl=urls[fifo.orders_queue], MessageBody="{}",
                            MessageGroupId="g")
    assert sqs.depth(fifo, fifo.orders_queue)["visible"] == 1


def test_orders_produce_sends_to_a_fifo_queue_grouped_by_user(fifo, sqs_client):
    bodies = [json.dumps(order(order_id=f"FF-P{i}", user_id=f"U00{i % 3}")) for i in range(9)]
    bodies.append("not json")
    assert sqs.send_bodies(sqs_client, fifo.orders_url, bodies) == []
    back = receive_all(sqs_client, fifo.orders_url)
    assert sorted((m["Body"], m["Attributes"]["MessageGroupId"]) for m in back) == sorted(
        [(body, json.loads(body)["user_id"]) for body in bodies[:-1]] + [("not json",
                                                                           "not-an-order")])
    # Within a group, in the order sent.
    by_group = {}
    for message in back:
        by_group.setdefault(message["Attributes"]["MessageGroupId"], []).append(message["Body"])
    assert by_group["U001"] == [body for body in bodies if '"U001"' in body]


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


def test_settings_keep_the_orders_queues_and_their_dlq_all_fifo_or_all_standard():
    assert Settings(orders_queue="shop.fifo").dlq_name == "shop-dlq.fifo"
    assert Settings(orders_queue="shop").dlq_name == "shop-dlq"
    for mixed in ({"orders_queue": "shop.fifo", "orders_dlq": "shop-dlq"},
                  {"orders_queue": "shop", "orders_dlq": "shop-dlq.fifo"},
                  {"orders_queue": "shop.fifo", "extra_orders_queues": "other"}):
        with pytest.raises(ValueError, match="all FIFO .* or all standard"):
            Settings(**mixed)
    with pytest.raises(ValueError, match="S3 event notifications go to standard queues only"):
        Settings(files_queue="files.fifo")
