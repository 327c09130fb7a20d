"""The one settle path (tasks/sqs/settle.py) on a real SQS: what each outcome tells SQS."""
import json
import time

from app import sqs
from tasks import compat
from tasks.celery import create_celery
from tasks.names import PROCESS_BATCH
from tasks.sqs.settle import DONE, FAILED, HELD, RETURNED, settle, wait_for_settlements

# Seconds a requeued message stays hidden (the channel's wait_time_seconds, set below).
REQUEUE_SECONDS = 1


def order(order_id: str) -> str:
    return json.dumps({"order_id": order_id, "user_id": "U1",
                       "order_timestamp": "2024-12-13T10:00:00Z", "order_value": 2.5,
                       "items": [{"product_id": "P1", "quantity": 1, "price_per_unit": 2.5}]})


def receive_all(sqs_client, url: str, count: int, seconds: float = 30) -> list[dict]:
    received, deadline = [], time.monotonic() + seconds
    while len(received) < count and time.monotonic() < deadline:
        received += sqs_client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60,
            MessageSystemAttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
    return received


def test_each_outcome_tells_sqs_and_releases_the_prefetch_slot(settings, sqs_client):
    url, queue = settings.orders_url, settings.orders_queue
    outcome_of = {order("done-1"): DONE, order("done-2"): DONE, order("failed"): FAILED,
                  order("returned"): RETURNED, order("held"): HELD,
                  order("unsettled"): None}  # still unsettled when the channel closes
    assert sqs.send_bodies(sqs_client, url, list(outcome_of)) == []
    received = receive_all(sqs_client, url, len(outcome_of))
    assert sorted(m["Body"] for m in received) == sorted(outcome_of)

    connection = create_celery(settings).connection_for_write()
    connection.transport_options = {**connection.transport_options,
                                    "wait_time_seconds": REQUEUE_SECONDS}
    channel = connection.channel()
    try:
        by_outcome = {}
        for sqs_message in received:
            payload = channel._message_to_python(sqs_message, queue, url)
            message = channel.Message(payload, channel=channel)
            # What the consumer and a group give a raw order before it is settled.
            message.delivery_info["routing_key"] = queue
            message.headers = {"task": PROCESS_BATCH}
            channel.qos.append(message, message.delivery_tag)
            by_outcome.setdefault(outcome_of[sqs_message["Body"]], []).append(message)
        unsettled = by_outcome.pop(None)
        for outcome, messages in by_outcome.items():
            settle(messages, outcome)
        # Every prefetch slot released at once, but the unsettled delivery's.
        assert compat.unsettled(channel.qos) == len(unsettled)
        assert all(m.acknowledged for ms in by_outcome.values() for m in ms)
        # What kombu does as a channel closes (compat dependence 'sqs-requeue').
        assert channel.qos.restore_unacked() == []
        wait_for_settlements()
    finally:
        channel.close()
        connection.release()

    # The failed one waits out the backoff policy's first step, the returned and the
    # unsettled ones wait_time_seconds: they come back; the deleted ones never, the held
    # one not yet.
    assert settings.failure_backoff_policy[1] < 30
    back = sorted([order("failed"), order("returned"), order("unsettled")])
    again = receive_all(sqs_client, url, len(back), seconds=20)
    assert sorted(m["Body"] for m in again) == back, "compat dependence 'sqs-requeue' broke?"
    assert receive_all(sqs_client, url, 1, seconds=3) == []
    assert sqs.depth(settings, queue, sqs_client)["in_flight"] == 1 + len(back)  # + held
