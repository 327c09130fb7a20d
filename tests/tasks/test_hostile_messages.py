"""No body, header or attribute on an orders queue stops, wedges or silences a worker.

Real worker, LocalStack SQS and redis-server. Every message must end counted, duplicate or
rejected (Store.outcomes() adds up to the messages sent), nothing reaches the DLQ, and the
worker keeps answering `inspect ping` through the control plane.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings

import strategies
from app import sqs
from app.settings import to_env
from app.store import Store
from conftest import BIN, ROOT, USER, order, wait_for
from tasks.celery import create_celery

OUTCOMES = ("counted", "duplicate", "rejected", "conflict")


def envelope(task: str, args=(), kwargs=None, change=None, wrapped=True) -> str:
    """A task message as a Celery producer sends it, after change(envelope) if given."""
    message = strategies.task_envelope(task, args, kwargs)
    if change:
        change(message)
    return strategies.sqs_body(message, wrapped)


def send_all(client, url: str, messages: list[tuple[str, dict]]) -> list[str]:
    """Send (body, attributes) pairs ten at a time; every one must be accepted by SQS."""
    ids = []
    for chunk in sqs.chunks(messages):
        entries = [{"Id": str(i), "MessageBody": body,
                    **({"MessageAttributes": attributes} if attributes else {})}
                   for i, (body, attributes) in enumerate(chunk)]
        response = client.send_message_batch(QueueUrl=url, Entries=entries)
        assert not response.get("Failed"), response["Failed"]
        by_entry = {e["Id"]: e["MessageId"] for e in response["Successful"]}
        ids += [by_entry[str(i)] for i in range(len(chunk))]
    return ids


def settled(store: Store) -> int:
    outcomes = store.outcomes()
    return sum(outcomes[name] for name in OUTCOMES)


def pong(settings) -> dict:
    """Replies to `inspect ping`, through the control-plane Redis as the CLI sends it."""
    return {name: reply for answer in create_celery(settings).control.ping(timeout=3)
            for name, reply in answer.items()}


def assert_healthy(worker, settings, client):
    """The worker runs, answers ping, nothing was dead-lettered and its log shows no crash."""
    assert worker.process.poll() is None, worker.tail()
    assert list(pong(settings).values()) == [{"ok": "pong"}]
    assert sqs.depth(settings, settings.dlq_name, client)["visible"] == 0
    log = worker.log_path.read_text(errors="replace")
    for sign in ("Unrecoverable error", "CRITICAL", "WorkerLostError", "Traceback"):
        assert sign not in log, f"{sign!r} in the worker log:\n{worker.tail(120)}"


def killers() -> dict[str, str]:
    """The reported killers by name, each a body that stopped or silenced a worker."""
    def without_id(m):
        del m["headers"]["id"]

    return {
        "undecodable base64 body": strategies.POISON_ENVELOPE,
        "unhashable task name": envelope("orders.process", [order("K-1")],
                                         change=lambda m: m["headers"].update(task=[])),
        "unknown task without id": envelope("orders.unknown", change=without_id),
        "unknown body_encoding": envelope(
            "orders.process", [order("K-2")],
            change=lambda m: m["properties"].update(body_encoding="rot13")),
        "unknown content type": envelope(
            "orders.process", [order("K-3")],
            change=lambda m: m.update({"content-type": "application/x-yaml"})),
        "a Celery task": envelope("celery.accumulate", [1, 2]),
        "a chord callback": envelope("orders.process", [order("K-4")], change=lambda m: m.update(
            body=strategies._b64(json.dumps([[order("K-4")], {}, {"callbacks": [
                {"task": "celery.accumulate", "args": [], "kwargs": {}}]}])))),
        "an eta a year ahead": envelope(
            "orders.process", [order("K-5")],
            change=lambda m: m["headers"].update(eta="2999-01-01T00:00:00+00:00")),
        "a surrogate order_id": json.dumps(order("A\ud800")),
        "year 1": json.dumps(order("K-6", order_timestamp="0001-01-01T00:00:00+01:00")),
        "year 9999": json.dumps(order("K-7", order_timestamp="9999-12-31T23:59:59-01:00")),
        "year 1900": json.dumps(order("K-8", order_timestamp="1900-01-01T00:00:00Z")),
    }


@pytest.mark.parametrize("batch_size", [10, 1])
def test_each_known_killer_is_a_rejection_with_a_reason(settings, store, sqs_client,
                                                        start_worker, batch_size):
    """Every killer is stored as a rejection; the orders beside them, in any form, count.

    With batches of one, raw bodies run as orders.process tasks of their own.
    """
    counted = {
        "raw order": json.dumps(order("G-1")),
        "orders.process from a producer": envelope("orders.process", [order("G-2")]),
        "orders.process as plain JSON": envelope("orders.process", [order("G-3")],
                                                 wrapped=False),
        # A producer's 1 ms time limit is not honoured: the worker's own limits apply.
        "orders.process with a 1 ms limit": envelope(
            "orders.process", [order("G-4")],
            change=lambda m: m["headers"].update(timelimit=[0.001, 0.001])),
        # What Celery publishes when it retries a batch: both orders count.
        "orders.process_batch retried": envelope("orders.process_batch", [[
            {"body": json.dumps(order(f"G-5{i}")), "message_id": f"retried-{i}",
             "sent_at_ms": 1733000000000} for i in range(2)]],
            change=lambda m: m["headers"].update(retries=1)),
    }
    settings = replace(settings, consume_batch_size=batch_size)
    worker = start_worker(settings=settings)
    bad = killers()
    ids = send_all(sqs_client, settings.orders_url,
                   [(body, {}) for body in [*bad.values(), *counted.values()]])
    total = len(bad) + len(counted) + 1  # the retried batch holds two orders
    wait_for(lambda: settled(store) >= total, timeout=60,
             message=f"{total} outcomes\n{worker.tail()}")

    missing = {name: store.rejection(message_id)
               for name, message_id in zip(bad, ids)}
    assert all(missing.values()), [name for name, r in missing.items() if r is None]
    for name, record in missing.items():
        assert record["reasons"], name
    assert store.outcomes()["counted"] == len(counted) + 1, store.outcomes()
    assert store.user_stats(USER).order_count == len(counted) + 1
    assert "celery.accumulate" in json.dumps(missing["a Celery task"]["reasons"])
    assert "order_timestamp" in missing["year 1"]["reasons"]
    assert_healthy(worker, settings, sqs_client)
    # The operator finds them where every rejection is listed.
    listed = subprocess.run([str(BIN / "celery"), "-A", "tasks", "rejected", "list", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, **to_env(settings)})
    assert {row["message_id"] for row in json.loads(listed.stdout)} >= set(ids[:len(bad)])


# Messages the property test sends in all, and per wave (the worker is checked after each).
BODIES = 1000
WAVE = 250


def generated(strategy, count: int) -> list:
    """count examples of a strategy, as hypothesis generates them for a test."""
    examples = []

    @hypothesis_settings(max_examples=count, deadline=None, database=None,
                         phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example):
        examples.append(example)

    collect()
    return examples


def test_hostile_messages_property(settings, store, sqs_client, start_worker):
    """Any JSON, any changed order or task message, any attributes: each ends in an outcome.

    The examples are generated first and sent in a few large waves to one worker, rather
    than one worker per example; a failing wave is shown whole.
    """
    messages = generated(strategies.hostile_messages, BODIES)
    assert len(messages) == BODIES
    worker = start_worker()
    sent = 0

    def all_settled():
        assert worker.process.poll() is None, worker.tail()
        return settled(store) >= sent

    for start in range(0, BODIES, WAVE):
        wave = messages[start:start + WAVE]
        sent += len(send_all(sqs_client, settings.orders_url, wave))
        try:
            wait_for(all_settled, timeout=60, message=f"{sent} outcomes, {store.outcomes()}")
            assert settled(store) == sent, store.outcomes()
            assert_healthy(worker, settings, sqs_client)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nwave of {len(wave)} messages: {wave!r}"[:200_000]) \
                from None
    print(f"\n{sent} hostile messages: {store.outcomes()}")
