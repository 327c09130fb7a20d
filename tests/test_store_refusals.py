"""Issue 19: a store that refuses writes while it stays up is backpressure, not bad data.

A real worker drains a few thousand orders from LocalStack into a redis-server of the
test's own; mid-stream that Redis refuses every write (maxmemory reached under
noeviction: OOM; made a replica: READONLY; a script that runs on: BUSY) for longer than
the messages' whole budget of receives and retries, then takes writes again. Nothing may
reach the dead-letter queue, and the totals must be exact.
"""
from __future__ import annotations

import math
import random
import socket
import threading
import time
from dataclasses import replace

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from app import sqs
from app.store import Store
from conftest import make_orders, wait_for
from stack.services import RedisServer, free_port
from test_failure_scenarios import (Expected, assert_accounted, assert_totals,
                                    assert_worker_survived, drained, dumps, send)

ORDERS = 3000
PAUSED_LINE = "consumption paused"
RESUMED_LINE = "consumption resumed"


def refusal_seconds(settings) -> float:
    """Longer than what dead-letters a message today: every receive's backoff, or every
    retry of a transient error at the capped backoff, whichever is longer, and some."""
    receives = sum(settings.failure_backoff_policy.values())
    retries = settings.task_max_retries * settings.retry_backoff_max
    return max(receives, retries) * 1.5


class OutOfMemory:
    """maxmemory below what the data use (noeviction): every write is refused with OOM."""

    reason = "OOM"

    def __init__(self, server: RedisServer, tmp_path):
        self.client = redis.Redis(port=server.port)

    def refuse(self):
        self.client.config_set("maxmemory", 1)

    def accept(self):
        self.client.config_set("maxmemory", 0)

    def close(self):
        self.client.close()


class Demoted:
    """The store made a replica of a server holding the same data: writes get READONLY.

    A second redis-server replicates the store from the start; to refuse, the store's
    writes pause until the replica has them all, the replica is promoted and the store
    follows it (it keeps its data: a sync from a server that lacked a write would drop
    it). Made a primary again, the store takes writes.
    """

    reason = "READONLY"

    def __init__(self, server: RedisServer, tmp_path):
        self.client = redis.Redis(port=server.port)
        self.other = RedisServer(free_port(), log_dir=tmp_path, name="redis-other",
                                 extra_args=["--replicaof", "127.0.0.1", str(server.port)]
                                 ).start()
        self.other_client = redis.Redis(port=self.other.port)

    def refuse(self):
        self.client.client_pause(10_000, all=False)  # writes wait, reads go on
        try:
            # (WAIT itself would wait for the pause.)
            offset = self.client.info("replication")["master_repl_offset"]
            wait_for(lambda: self.other_client.info("replication")["master_repl_offset"]
                     >= offset, timeout=5, message="the replica to have every write")
            self.other_client.replicaof("NO", "ONE")
            self.client.replicaof("127.0.0.1", self.other.port)
        finally:
            self.client.client_unpause()

    def accept(self):
        self.client.replicaof("NO", "ONE")

    def close(self):
        self.client.close()
        self.other_client.close()
        self.other.stop()


class BusyScript:
    """A script that loops for the whole refusal: every other client gets BUSY."""

    reason = "BUSY"
    LOOP = ("local deadline = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[1]) "
            "while tonumber(redis.call('TIME')[1]) < deadline do end return 1")

    def __init__(self, server: RedisServer, tmp_path):
        self.client = redis.Redis(port=server.port)
        self.looping = redis.Redis(port=server.port, socket_timeout=None)
        self.thread = None
        self.seconds = 0

    def refuse(self):
        # BUSY from 100 ms of script on (Redis' default is 5 s, when clients would only wait).
        self.client.config_set("busy-reply-threshold", 100)
        # A few seconds past the refusal: the test reads the queue's depth at its end, and a
        # script that ended first let the worker resume (and receive) before that read.
        self.thread = threading.Thread(
            target=self.looping.eval, args=(self.LOOP, 0, math.ceil(self.seconds) + 3),
            daemon=True)
        self.thread.start()

    def accept(self):
        self.thread.join(timeout=60)

    def close(self):
        self.client.close()
        self.looping.close()


@pytest.mark.slow
@pytest.mark.parametrize("refusal", [OutOfMemory, Demoted, BusyScript],
                         ids=["oom", "readonly", "busy"])
def test_a_store_refusing_writes_pauses_consumption_and_dead_letters_nothing(
        refusal, settings, sqs_client, start_worker, tmp_path):
    """Writes refused mid-stream for longer than any message's budget: 0 dead-lettered,
    totals exact, consumption paused and resumed once each."""
    refuse_mid_stream(refusal, settings, sqs_client, start_worker, tmp_path)


@pytest.mark.slow
def test_with_a_task_per_order_a_full_store_dead_letters_nothing(settings, sqs_client,
                                                                 start_worker, tmp_path):
    """CONSUME_BATCH_SIZE=1 (one orders.process task per order): the same under OOM."""
    refuse_mid_stream(OutOfMemory, replace(settings, consume_batch_size=1), sqs_client,
                      start_worker, tmp_path)


def refuse_mid_stream(refusal, settings, sqs_client, start_worker, tmp_path):
    """Run ORDERS through a worker while the fault refuses writes for refusal_seconds."""
    server = RedisServer(free_port(), log_dir=tmp_path, name="redis-refusing").start()
    fault = refusal(server, tmp_path)
    try:
        own = replace(settings, redis_url=server.url)
        store = Store.from_url(own.redis_url)
        orders = make_orders("RF", ORDERS, users=30, rng=random.Random(19))
        expected = Expected()
        expected.add_orders(orders)
        send(sqs_client, own.orders_url, [dumps(body) for body, _ in orders])
        worker = start_worker(settings=own)

        wait_for(lambda: store.outcomes()["counted"] >= 300, timeout=120, message="300 counted")
        seconds = refusal_seconds(own)
        fault.seconds = seconds
        counted_at_refusal = store.outcomes()["counted"]
        fault.refuse()
        started = time.monotonic()
        time.sleep(5)
        # The worker stopped receiving: the queue no longer drains into failures.
        visible_early = sqs.depth(own, own.orders_queue, sqs_client)["visible"]
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        visible_late = sqs.depth(own, own.orders_queue, sqs_client)["visible"]
        fault.accept()

        assert counted_at_refusal < len(orders), "the refusal came after the stream"
        assert visible_late >= visible_early, (visible_early, visible_late)
        wait_for(lambda: store.outcomes()["counted"] == len(orders)
                 and drained(sqs_client, own), timeout=240,
                 message="every order counted and the queue empty")
        assert_totals(store, expected)
        assert_accounted(store, own, distinct=len(orders), counted=len(orders), dead=[])
        log = worker.log_path.read_text(errors="replace")
        paused = [line for line in log.splitlines() if PAUSED_LINE in line]
        assert len(paused) == 1 and f"({fault.reason})" in paused[0], worker.tail()
        assert log.count(RESUMED_LINE) == 1, worker.tail()
        assert_worker_survived(worker)
    finally:
        fault.close()
        server.stop()


def test_metrics_show_a_worker_paused_while_the_store_refuses_writes(
        settings, sqs_client, start_worker, start_api, tmp_path):
    """The worker tells the control plane when it pauses and resumes; /metrics says so."""
    server = RedisServer(free_port(), log_dir=tmp_path, name="redis-refusing").start()
    fault = OutOfMemory(server, tmp_path)
    try:
        own = replace(settings, redis_url=server.url)
        store = Store.from_url(own.redis_url)
        api = start_api(own)
        start_worker(settings=own)
        hostname = f"w1@{socket.gethostname()}"  # start_worker's default node name
        paused = ("orders_worker_consumption_paused", (("worker", hostname),))
        orders = make_orders("RP", 40, users=5, rng=random.Random(23))
        send(sqs_client, own.orders_url, [dumps(body) for body, _ in orders[:20]])
        wait_for(lambda: store.outcomes()["counted"] == 20, timeout=60, message="20 counted")
        assert wait_for(lambda: scrape(api).get(paused) == 0, timeout=30,
                        message="the live worker, not paused, in /metrics")

        fault.refuse()
        send(sqs_client, own.orders_url, [dumps(body) for body, _ in orders[20:]])
        wait_for(lambda: scrape(api).get(paused) == 1, timeout=60,
                 message="the worker paused in /metrics")
        fault.accept()
        wait_for(lambda: scrape(api).get(paused) == 0, timeout=60,
                 message="the worker resumed in /metrics")
        wait_for(lambda: store.outcomes()["counted"] == len(orders), timeout=120,
                 message="every order counted")
    finally:
        fault.close()
        server.stop()


def scrape(api: str) -> dict:
    """/metrics as {(name, labels): value}."""
    response = requests.get(f"{api}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}
