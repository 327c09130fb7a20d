"""The template deployed to LocalStack's CloudFormation runs the pipeline end to end.

One worker and one API, started with nothing but the stack's outputs (plus the Redis URL and
the local endpoint), count orders sent with the producer's settings, turn an uploaded CSV
into KPIs and a success notification, and let a poison message reach the stack's DLQ,
whence the operator CLI, on the same outputs, redrives it to be counted once.
"""
from __future__ import annotations

import json
import random
import re
import subprocess
from dataclasses import fields
from decimal import Decimal

import pytest
import requests

from app.settings import Settings
from app.store import Store, user_key
from bench.order_builders import make_orders, order
from deployment import (BIN, ROOT, DeployedStack, TopicListener, aws_client, deploy_fresh, depth,
                        stack_resources, start_api, start_worker)
from files_oracle import ORDER_ITEMS, ORDERS, PRODUCTS, by_key, csv_of, expected_kpis, make_rows
from stack.services import Process, wait_for
from tasks.names import FILES_SWEEP

# What the producer needs to send, and nothing more: where, and which queue.
PRODUCER_OUTPUTS = ("AWS_REGION", "ORDERS_QUEUE", "ORDERS_QUEUE_URL")


@pytest.fixture(scope="module")
def deployed(sqs_server, redis_server) -> DeployedStack:
    """The template deployed once for this module (a conftest.py here would shadow
    tests/conftest.py, which other directories import by name)."""
    return deploy_fresh(sqs_server, redis_server)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("deployed-logs")


@pytest.fixture(scope="module")
def running(deployed: DeployedStack, log_dir):
    """A worker and the API on the stack's environment, for the whole module."""
    worker = start_worker(deployed, log_dir)
    api, base = start_api(deployed, log_dir)
    yield worker, base
    api.stop(timeout=15)
    worker.stop(timeout=30)


def test_the_outputs_are_exactly_settings_variables(deployed):
    variables = {f.name.upper() for f in fields(Settings)}
    assert set(deployed.outputs) <= variables, set(deployed.outputs) - variables
    # Everything that names a deployed resource or must match its configuration.
    assert set(deployed.outputs) == {
        "AWS_REGION", "ORDERS_QUEUE", "ORDERS_QUEUE_URL", "ORDERS_DLQ", "MAX_RECEIVE_COUNT",
        "VISIBILITY_TIMEOUT", "ORDERS_RETENTION_SECONDS", "FILES_ENABLED", "FILES_BUCKET",
        "FILES_QUEUE",
        "FILES_QUEUE_URL", "FILES_EXECUTION_TIMEOUT", "FILES_SUCCESS_TOPIC",
        "FILES_FAILURE_TOPIC"}
    resources = stack_resources(deployed.endpoint_url, deployed.name)
    assert deployed.outputs["ORDERS_QUEUE_URL"] == resources["OrdersQueue"]
    assert deployed.outputs["FILES_QUEUE_URL"] == resources["FilesQueue"]
    assert deployed.outputs["FILES_BUCKET"] == resources["FilesBucket"]


def test_orders_sent_with_the_producers_settings_are_counted_exactly(deployed, running):
    _, api = running
    orders = make_orders("DEP", 120, users=7, rng=random.Random(21))
    lines = "".join(json.dumps(body) + "\n" for body, _ in orders)
    producer_env = {k: v for k, v in deployed.environment().items()
                    if k not in deployed.outputs or k in PRODUCER_OUTPUTS}
    producer_env.pop("REDIS_URL")
    sent = subprocess.run([BIN / "orders-produce", "--file", "-", "--quiet"], input=lines,
                          text=True, capture_output=True, env=producer_env, cwd=ROOT,
                          timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert f"sent {len(orders)}, failed 0 to {deployed.outputs['ORDERS_QUEUE_URL']}" in sent.stdout

    revenue = sum((value for _, value in orders), Decimal(0))
    wait_for(lambda: requests.get(f"{api}/stats/global", timeout=5).json()["total_orders"]
             >= len(orders), timeout=120, message=f"{len(orders)} orders counted")
    assert requests.get(f"{api}/stats/global", timeout=5).json() == {
        "total_orders": len(orders), "total_revenue": float(revenue)}
    spend: dict[str, list] = {}
    for body, value in orders:
        spend.setdefault(body["user_id"], [0, Decimal(0)])
        spend[body["user_id"]][0] += 1
        spend[body["user_id"]][1] += value
    for user_id, (count, total) in spend.items():
        assert requests.get(f"{api}/users/{user_id}/stats", timeout=5).json() == {
            "user_id": user_id, "order_count": count, "total_spend": float(total)}
    # The API reads the depths of the stack's queues by the names in the outputs.
    health = requests.get(f"{api}/health", timeout=5).json()
    assert health["sqs"] == "ok", health


def test_a_csv_uploaded_to_input_becomes_kpis_and_a_success_notification(deployed, running):
    _, api = running
    resources = stack_resources(deployed.endpoint_url, deployed.name)
    listener = TopicListener(deployed.endpoint_url,
                             [resources["SuccessTopic"], resources["FailureTopic"]])
    products, orders, items = make_rows(random.Random(4), orders=40)
    s3 = aws_client("s3", deployed.endpoint_url)
    bucket = deployed.outputs["FILES_BUCKET"]
    for name, data in {"products.csv": csv_of(PRODUCTS, products),
                       "orders_part1.csv": csv_of(ORDERS, orders),
                       "order_items_part1.csv": csv_of(ORDER_ITEMS, items)}.items():
        s3.put_object(Bucket=bucket, Key=f"input/{name}", Body=data)

    [(topic, message)] = wait_for(lambda: listener.poll(), timeout=180,
                                  message="a notification on the stack's topics")
    assert topic == deployed.outputs["FILES_SUCCESS_TOPIC"], message
    assert sorted(message["valid_files"]) == ["order_items_part1.csv", "orders_part1.csv",
                                              "products.csv"]
    order_kpis, category_kpis = expected_kpis(by_key(PRODUCTS, products), by_key(ORDERS, orders),
                                              by_key(ORDER_ITEMS, items))
    period = {"from": "2024-01-01", "to": "2024-01-31"}
    assert requests.get(f"{api}/kpis/orders", params=period, timeout=5).json() == order_kpis
    assert requests.get(f"{api}/kpis/categories", params=period, timeout=5).json() == category_kpis
    archived = s3.list_objects_v2(Bucket=bucket, Prefix="archive/").get("Contents", [])
    assert {o["Key"] for o in archived} == {"archive/products.csv", "archive/orders_part1.csv",
                                            "archive/order_items_part1.csv"}


def test_a_poison_message_reaches_the_stacks_dlq_and_is_redriven(deployed, running):
    worker, api = running
    before = requests.get(f"{api}/stats/global", timeout=5).json()["total_orders"]
    store = Store.from_url(deployed.redis_url)
    # Real data, not a hook: the user's key holds a string, so counting fails with WRONGTYPE.
    store.redis.set(user_key("POISONED"), "not a hash")
    body = json.dumps(order(order_id="DEP-POISON", user_id="POISONED"))
    client = aws_client("sqs", deployed.endpoint_url)
    message_id = client.send_message(QueueUrl=deployed.outputs["ORDERS_QUEUE_URL"],
                                     MessageBody=body)["MessageId"]
    dlq = deployed.outputs["ORDERS_DLQ"]
    # FAILURE_BACKOFF's default hides it 5 then 10 s; the third receive is the last.
    wait_for(lambda: depth(deployed, dlq)["visible"] == 1, timeout=120,
             message=f"the poison message in {dlq}")
    dlq_url = client.get_queue_url(QueueName=dlq)["QueueUrl"]
    [letter] = client.receive_message(QueueUrl=dlq_url, MessageSystemAttributeNames=["All"],
                                      VisibilityTimeout=0)["Messages"]
    assert (letter["MessageId"], letter["Body"]) == (message_id, body)
    assert int(letter["Attributes"]["ApproximateReceiveCount"]) > int(
        deployed.outputs["MAX_RECEIVE_COUNT"])
    assert b"WRONGTYPE" in worker.log_path.read_bytes()

    # The cause gone, the operator CLI on the stack's outputs sends it back: counted once.
    store.redis.delete(user_key("POISONED"))
    redriven = subprocess.run([BIN / "celery", "-A", "tasks", "dlq", "redrive", "--all"],
                              capture_output=True, text=True, env=deployed.environment(),
                              cwd=ROOT, timeout=120)
    assert redriven.returncode == 0, redriven.stdout + redriven.stderr
    assert "Redrove 1 message(s)" in redriven.stdout
    wait_for(lambda: requests.get(f"{api}/users/POISONED/stats", timeout=5).status_code == 200,
             timeout=60, message="the redriven order counted")
    assert requests.get(f"{api}/stats/global", timeout=5).json()["total_orders"] == before + 1
    assert depth(deployed, dlq)["visible"] == 0


def test_beat_on_the_outputs_alone_sends_the_upkeep_that_the_worker_runs(deployed, running,
                                                                         log_dir):
    worker, _ = running
    # As deploy/kubernetes/beat.yaml runs it: the stack's outputs, no Redis URL.
    environment = {k: v for k, v in deployed.environment(FILES_SWEEP_INTERVAL="2").items()
                   if k != "REDIS_URL"}
    beat = Process("beat-deployed", [BIN / "celery", "-A", "tasks", "beat", "--loglevel",
                                     "INFO", "--schedule", str(log_dir / "celerybeat-schedule")],
                   env=environment, log_dir=log_dir, cwd=ROOT).start()
    try:
        ran = re.compile(rf"Task {re.escape(FILES_SWEEP)}\[[\w-]+\] succeeded")
        wait_for(lambda: ran.search(worker.log_path.read_text()), timeout=90,
                 message=f"the worker to run {FILES_SWEEP} sent by beat")
        assert beat.running, beat.log_tail()
    finally:
        beat.stop()
    log = beat.log_tail(200)
    assert f"Sending due task {FILES_SWEEP}" in log and "Traceback" not in log, log
