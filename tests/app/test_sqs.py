"""app.sqs on LocalStack: the client's attempts, queues, batches sent and counted."""
from collections import Counter
from dataclasses import replace

import botocore.exceptions
import pytest

from app import sqs
from stack.services import free_port


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_client_makes_exactly_its_attempts_then_gives_up(settings, attempts):
    nowhere = replace(settings, sqs_endpoint_url=f"http://127.0.0.1:{free_port()}")
    client = sqs.client(nowhere, timeout=2, attempts=attempts)
    sent = []
    client.meta.events.register("before-send.sqs", lambda **event: sent.append(event))
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client.list_queues()
    assert len(sent) == attempts


def test_ensure_queues_names_each_queue_and_a_second_run_finds_the_same(settings, sqs_client):
    first = sqs.ensure_queues(settings)
    assert first == {name: sqs.queue_url(settings, name)
                     for name in (settings.orders_queue, settings.dlq_name)}
    assert sqs.ensure_queues(settings, sqs_client) == first
    with pytest.raises(botocore.exceptions.ClientError, match="NonExistentQueue|QueueDoesNotExist"):
        sqs.queue_url(settings, f"{settings.orders_queue}-missing")


def test_chunks_fit_a_batch_call():
    items = range(2 * sqs.BATCH_SIZE + 3)
    batches = list(sqs.chunks(iter(items)))
    assert [len(b) for b in batches] == [sqs.BATCH_SIZE, sqs.BATCH_SIZE, 3]
    assert [x for b in batches for x in b] == list(items)
    assert list(sqs.chunks([])) == []


def test_bodies_arrive_intact_and_depth_counts_visible_and_in_flight(settings, sqs_client):
    bodies = [f'{{"n": {i}, "text": "Zoë 東京 \\ud800"}}' for i in range(25)]
    for batch in sqs.chunks(bodies):
        assert sqs.send_bodies(sqs_client, settings.orders_url, batch) == []
    assert sqs.depth(settings, settings.orders_queue) == {
        "visible": len(bodies), "in_flight": 0, "delayed": 0}

    received = []
    while len(received) < len(bodies):
        received += sqs_client.receive_message(QueueUrl=settings.orders_url,
                                               MaxNumberOfMessages=sqs.BATCH_SIZE,
                                               WaitTimeSeconds=5).get("Messages", [])
    assert Counter(m["Body"] for m in received) == Counter(bodies)
    assert sqs.depth(settings, settings.orders_queue) == {
        "visible": 0, "in_flight": len(bodies), "delayed": 0}


def test_send_bodies_returns_the_entries_sqs_refused(settings, sqs_client):
    # SQS takes only XML characters: U+0001 is refused, its neighbours in the batch are not.
    bodies = ["first", "control \x01 character", "third"]
    assert sqs.send_bodies(sqs_client, settings.orders_url, bodies) == ["1"]
    assert sqs.depth(settings, settings.orders_queue)["visible"] == 2
