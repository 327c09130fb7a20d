"""Remote control and events over the Redis control plane, seen by the CLI and Flower."""
import ast
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from app import sqs
from app.settings import to_env
from app.store import user_key
from conftest import ROOT, celery_cli, order_body, wait_for
from stack.services import free_port

CELERY = str(Path(sys.executable).parent / "celery")


def replies(settings, *command):
    """Worker name -> reply of an inspect/control command, as JSON."""
    result = celery_cli(settings, *command, "--json", "--timeout", "5")
    merged = {}
    for reply in json.loads(result.stdout) if result.stdout.strip().startswith("[") else [
            json.loads(result.stdout)]:
        merged.update(reply)
    return merged


@pytest.mark.slow
def test_inspect_reaches_every_worker_and_shutdown_stops_one(settings, start_worker):
    first = start_worker(name="alpha")
    second = start_worker(name="beta")
    answered = replies(settings, "inspect", "ping")
    assert {name.split("@")[0] for name in answered} == {"alpha", "beta"}
    assert all(reply == {"ok": "pong"} for reply in answered.values())

    registered = replies(settings, "inspect", "registered")
    assert all("orders.process" in tasks for tasks in registered.values())
    stats = replies(settings, "inspect", "stats")
    assert all(s["pool"]["max-concurrency"] == 2 for s in stats.values())
    rate = replies(settings, "control", "rate_limit", "orders.process", "50/s")
    assert all("new rate limit set successfully" in r["ok"] for r in rate.values())

    beta = next(name for name in answered if name.startswith("beta@"))
    # A worker that shuts down sends no reply, so the command itself reports failure.
    celery_cli(settings, "control", "shutdown", "--destination", beta, check=False)
    wait_for(lambda: second.process.poll() is not None, timeout=30,
             message="beta to shut down")
    assert first.process.poll() is None
    assert {n.split("@")[0] for n in replies(settings, "inspect", "ping")} == {"alpha"}


@pytest.fixture
def flower(settings, tmp_path):
    port = free_port()
    env = {**os.environ, **to_env(settings), "FLOWER_UNAUTHENTICATED_API": "true"}
    log = open(tmp_path / "flower.log", "ab")
    process = subprocess.Popen(
        [CELERY, "-A", "tasks", "--broker", settings.control_plane_url, "flower",
         f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(f"{base}/healthcheck", timeout=2).ok
        except requests.RequestException:
            return False
    wait_for(up, timeout=60, message="Flower to answer")
    yield base
    process.terminate()
    process.wait(15)
    log.close()


def flower_tasks(flower, name):
    return requests.get(f"{flower}/api/tasks", params={"taskname": name}, timeout=5).json()


@pytest.mark.slow
def test_flower_lists_the_worker_and_every_batch_with_failures(settings, store, sqs_client,
                                                               start_worker, flower):
    start_worker(name="gamma")
    good = [order_body(f"F{i}") for i in range(12)]
    # A key of the wrong type makes the task raise every time: a real poison message.
    store.redis.set(user_key("POISON"), "not a hash")
    sqs.send_bodies(sqs_client, settings.orders_url, good[:10])
    sqs.send_bodies(sqs_client, settings.orders_url, good[10:] + [order_body("BAD", "POISON")])

    wait_for(lambda: store.outcomes()["counted"] == 12
             and any(t["state"] == "FAILURE"
                     for t in flower_tasks(flower, "orders.process_batch").values()),
             timeout=90, message="12 orders counted and Flower to see the failed batch")
    tasks = flower_tasks(flower, "orders.process_batch")
    failure = next(t for t in tasks.values() if t["state"] == "FAILURE")
    assert "BatchPartlyFailed" in failure["exception"] and "WRONGTYPE" in failure["exception"]
    assert "user:{u:POISON}" in failure["exception"]  # the key that is in the way
    # Flower shows the batch's entries cut at Celery's argsrepr limit (1,024 characters):
    # the poison body is there unless the batch's earlier entries filled it.
    assert "POISON" in failure["args"] or (failure["args"].startswith("([{'body':")
                                           and failure["args"].endswith("..."))
    successes = [t for t in tasks.values() if t["state"] == "SUCCESS"]
    assert successes and all(t["runtime"] is not None for t in successes)

    workers = wait_for(lambda: requests.get(f"{flower}/api/workers", params={"refresh": 1},
                                            timeout=10).json(), timeout=30)
    [name] = [n for n in workers if n.startswith("gamma@")]
    assert workers[name]["stats"]["pool"]["max-concurrency"] == 2
    metrics = requests.get(f"{flower}/metrics", timeout=5).text
    assert 'flower_events_total{task="orders.process_batch",type="task-succeeded"' in metrics


@pytest.mark.slow
def test_flower_shows_the_orders_of_each_batch_by_outcome(settings, store, sqs_client,
                                                          start_worker, flower):
    start_worker(name="epsilon")
    valid = [order_body(f"O{i}", lines=[("P1", 1, 100 + i)]) for i in range(7)]
    conflict = order_body("O1", lines=[("P1", 1, 999)])
    bodies = valid + [valid[0], "not json", conflict]  # a duplicate, a bad body, a conflict
    sqs.send_bodies(sqs_client, settings.orders_url, bodies)
    expected = {"counted": len(valid), "duplicate": 1, "rejected": 2}

    def shown():
        results = [ast.literal_eval(t["result"])
                   for t in flower_tasks(flower, "orders.process_batch").values()
                   if t["state"] == "SUCCESS"]
        return {name: sum(r[name] for r in results) for name in expected}
    wait_for(lambda: shown() == expected, timeout=60,
             message=f"Flower's successful batches to add up to {expected}")
    outcomes = store.outcomes()
    assert {"counted": outcomes["counted"], "duplicate": outcomes["duplicate"],
            "rejected": outcomes["rejected"] + outcomes["conflict"]} == expected


@pytest.mark.slow
def test_with_batches_of_one_flower_lists_every_order_task(settings, sqs_client, start_worker,
                                                           flower):
    start_worker(name="delta", settings=replace(settings, consume_batch_size=1))
    sqs.send_bodies(sqs_client, settings.orders_url, [order_body(f"S{i}") for i in range(7)])
    wait_for(lambda: sum(t["state"] == "SUCCESS"
                         for t in flower_tasks(flower, "orders.process").values()) == 7,
             timeout=60, message="Flower to list 7 successful orders.process tasks")
    args = {t["args"] for t in flower_tasks(flower, "orders.process").values()}
    assert all(any(f'"S{i}"' in a for a in args) for i in range(7))
