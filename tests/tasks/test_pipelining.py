"""With SQS a round trip away, receives overlap and deletes do not hold up the event loop."""
import json
import os
import random
import sys
import time
import urllib.request
from dataclasses import replace

import pytest
from kombu.asynchronous import Hub

from app import aws, sqs
from app.files.contract import ORDERS
from app.store import FilesStore
from bench.sqs_counter import COUNTS_PATH
from conftest import ROOT, wait_for
from files_oracle import csv_of, make_rows
from stack.services import Process, free_port
from tasks.sqs.settle import LoopSettler

# Long enough that a consumer waiting for each request in turn could not overlap two.
RTT_MS = 100


def order(order_id, cents=250):
    return json.dumps({"order_id": order_id, "user_id": f"U{order_id}",
                       "order_timestamp": "2024-12-13T10:00:00Z", "order_value": cents / 100,
                       "items": [{"product_id": "P1", "quantity": 1,
                                  "price_per_unit": cents / 100}]})


@pytest.fixture
def far_sqs(sqs_server, tmp_path):
    """The counting proxy of the benchmark in front of SQS, adding RTT_MS to every request."""
    port = free_port()
    proxy = Process("sqs-counter", [sys.executable, "-m", "bench.sqs_counter", "--port", port,
                                    "--upstream", sqs_server.endpoint_url, "--rtt-ms", RTT_MS],
                    env={**os.environ, "PYTHONPATH": str(ROOT)}, log_dir=tmp_path,
                    cwd=ROOT).start()
    url = f"http://127.0.0.1:{port}"

    def counts():
        try:
            with urllib.request.urlopen(url + COUNTS_PATH, timeout=5) as response:
                return json.load(response)
        except OSError:
            return None
    wait_for(counts, timeout=30, message="the counting proxy to answer")
    yield url, counts
    proxy.stop()


@pytest.mark.slow
def test_receives_overlap_and_deletes_leave_the_event_loop_when_sqs_is_far(
        settings, store, sqs_client, start_worker, far_sqs):
    url, counts = far_sqs
    bodies = [order(f"L{i}") for i in range(300)]
    for start in range(0, len(bodies), sqs.BATCH_SIZE):
        assert sqs.send_bodies(sqs_client, settings.orders_url,
                               bodies[start:start + sqs.BATCH_SIZE]) == []
    start_worker(settings=replace(settings, sqs_endpoint_url=url))

    wait_for(lambda: store.outcomes()["counted"] == len(bodies), timeout=90,
             message="every order counted")
    wait_for(lambda: counts()["messages"].get("deleted", 0) == len(bodies), timeout=30,
             message="every message deleted")
    seen = counts()
    assert store.outcomes()["duplicate"] == 0
    assert seen["requests"]["DeleteMessageBatch"] * 10 >= len(bodies)  # batches of ten
    # kombu alone keeps one ReceiveMessage in flight per queue (tasks/sqs/receive.py
    # Channel over kombu's _schedule_queue, _loop1 and _get_from_sqs).
    assert seen["peak_in_flight"]["ReceiveMessage"] >= 2, (
        "compat dependence 'sqs-receive-chain' broke (tasks/compat.py)", seen)
    # A delete the event loop waited for would go out one at a time (settle.LoopSettler
    # sends them and goes on, behind kombu's ack bookkeeping: compat 'release-delivery').
    assert seen["peak_in_flight"]["DeleteMessageBatch"] >= 2, (
        "compat dependence 'release-delivery' broke (tasks/compat.py)", seen)


def test_a_worker_on_both_queues_goes_on_receiving_after_files_executions(
        files_settings, store, sqs_client, start_worker):
    """Idle long polls must not fill the window: the files queue parked, never received again."""
    # Idle orders queues, as make run has two: their long polls are what filled the window.
    settings = replace(files_settings, extra_orders_queues=",".join(
        f"{files_settings.orders_queue}-idle{i}" for i in range(2)))
    sqs.ensure_queues(settings)
    files = FilesStore.from_url(settings.redis_url)
    start_worker(settings=settings, concurrency=1)  # the smallest window
    rng = random.Random(12)
    for execution in range(1, 4):
        # Each execution needs its files.stage, files.kpis and files.finish received.
        orders = make_rows(rng, orders=5)[1]
        aws.s3_client(settings).put_object(Bucket=settings.files_bucket,
                                           Key=f"input/orders_{execution}.csv",
                                           Body=csv_of(ORDERS, orders))
        wait_for(lambda: [e["status"] for e in files.executions()] == ["succeeded"] * execution,
                 timeout=60, message=f"files execution {execution} to succeed")
    bodies = [order(f"F{i}") for i in range(30)]
    for start in range(0, len(bodies), sqs.BATCH_SIZE):
        assert sqs.send_bodies(sqs_client, settings.orders_url,
                               bodies[start:start + sqs.BATCH_SIZE]) == []
    wait_for(lambda: store.outcomes()["counted"] == len(bodies), timeout=60,
             message="the orders sent after the files executions counted")


def test_settlements_sent_from_the_event_loop_delete_and_show_messages(settings, sqs_client):
    """LoopSettler on a real hub and SQS: two messages deleted, one shown again at once."""
    url = settings.orders_url
    assert sqs.send_bodies(sqs_client, url, [order(f"S{i}") for i in range(3)]) == []
    received = []
    wait_for(lambda: received.extend(sqs_client.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30).get("Messages", []))
        or len(received) == 3, timeout=30, message="the three messages received")
    handles = {m["Body"]: m["ReceiptHandle"] for m in received}
    shown = order("S2")
    hub = Hub()
    settler = LoopSettler(hub, fallback=None)  # nothing may go to threads here
    settler.delete(sqs_client, url, [handles[order("S0")], handles[order("S1")]])
    settler.change_visibility(sqs_client, url, handles[shown], 0)
    deadline = time.monotonic() + 30
    while settler._pending and time.monotonic() < deadline:
        hub.run_once()
    assert not settler._pending, "SQS did not answer the settlements sent from the loop"
    hub.close()
    again = sqs_client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=2).get("Messages", [])
    assert [m["Body"] for m in again] == [shown]  # the deleted two never come back
    sqs_client.delete_message(QueueUrl=url, ReceiptHandle=again[0]["ReceiptHandle"])
    assert sqs.depth(settings, settings.orders_queue, sqs_client) == {
        "visible": 0, "in_flight": 0, "delayed": 0}
