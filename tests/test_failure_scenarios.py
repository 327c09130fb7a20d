"""Failure scenarios with real redis-server, LocalStack SQS, celery workers and gunicorn.

Every test sends a known set of messages, computes what it expects from them alone (Decimal
sums, no code under test), and ends by checking the account: exact totals, every distinct
message in exactly one outcome (counted, rejected or conflict, dead-lettered), and the
dead-letter queue and the rejected store holding exactly the expected ids.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from decimal import Decimal
from urllib.parse import quote

import pytest
import requests
from botocore.exceptions import ClientError

from app import sqs
from app.deadletters import ORIGINAL_ID_ATTRIBUTE, DeadLetterQueue
from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import REJECTED_INDEX, Store, user_key
from conftest import BIN, celery_cli, make_orders, wait_for
from conftest import order as valid_order
from stack.services import RedisServer, free_port, group_members
from tcp_proxy import TcpProxy

CELERY = str(BIN / "celery")
# SendMessageBatch takes at most 256 KiB in all: keep batches well below.
BATCH_BYTES = 200_000
EMPTY_QUEUE = {"visible": 0, "in_flight": 0, "delayed": 0}


# --- what the test sends and expects --------------------------------------------------------

@dataclass
class Expected:
    """Totals the API must show, summed by the test itself."""

    users: dict = field(default_factory=lambda: defaultdict(lambda: [0, Decimal(0)]))

    def add(self, user_id: str, value: Decimal):
        self.users[user_id][0] += 1
        self.users[user_id][1] += value

    def add_orders(self, orders):
        for body, value in orders:
            self.add(body["user_id"], value)

    @property
    def orders(self) -> int:
        return sum(count for count, _ in self.users.values())

    @property
    def revenue(self) -> Decimal:
        return sum((spend for _, spend in self.users.values()), Decimal(0))


def send(client, url: str, bodies: list[str], original_ids: list[str] | None = None) -> list[str]:
    """Send raw bodies in batches; return their SQS message ids in order.

    With original_ids each copy carries the id of a message already sent, as a redrive
    does: to the pipeline it is the same message delivered again.
    """
    ids: list[str] = []
    start = 0
    while start < len(bodies):
        end, size = start, 0
        while end < len(bodies) and end - start < 10:
            size += len(bodies[end].encode())
            if end > start and size > BATCH_BYTES:
                break
            end += 1
        entries = []
        for i in range(start, end):
            entry = {"Id": str(i - start), "MessageBody": bodies[i]}
            if original_ids:
                entry["MessageAttributes"] = {ORIGINAL_ID_ATTRIBUTE: {
                    "DataType": "String", "StringValue": original_ids[i]}}
            entries.append(entry)
        response = client.send_message_batch(QueueUrl=url, Entries=entries)
        assert not response.get("Failed"), response["Failed"]
        by_entry = {entry["Id"]: entry["MessageId"] for entry in response["Successful"]}
        ids += [by_entry[str(i)] for i in range(end - start)]
        start = end
    return ids


def dumps(body) -> str:
    return json.dumps(body, separators=(",", ":"))


# --- what the pipeline did -----------------------------------------------------------------

def drained(client, settings: Settings) -> bool:
    """Nothing visible, in flight or delayed on the orders queue."""
    return sqs.depth(settings, settings.orders_queue, client) == EMPTY_QUEUE


def dead_letter_ids(settings: Settings) -> list[str]:
    """Original ids of the messages in the dead-letter queue (left there)."""
    return sorted(letter.original_id for letter in DeadLetterQueue(settings).list(limit=10_000))


def rejected_ids(store: Store) -> set[str]:
    """Message ids in the rejected store (invalid and conflicting)."""
    return set(store.redis.zrange(REJECTED_INDEX, 0, -1))


def assert_totals(store: Store, expected: Expected, api: str | None = None):
    """Exact totals in Redis (integer cents) and, with api, as the API serves them."""
    stats = store.global_stats()
    assert (stats.total_orders, stats.total_revenue_cents) == (
        expected.orders, int(expected.revenue * 100))
    for user_id, (count, spend) in expected.users.items():
        user = store.user_stats(user_id)
        assert (user.order_count, user.total_spend_cents) == (count, int(spend * 100)), user_id
    if api is None:
        return
    assert requests.get(f"{api}/stats/global", timeout=10).json() == {
        "total_orders": expected.orders, "total_revenue": float(expected.revenue)}
    for user_id, (count, spend) in expected.users.items():
        response = requests.get(f"{api}/users/{quote(user_id, safe='')}/stats", timeout=10)
        assert response.json() == {"user_id": user_id, "order_count": count,
                                   "total_spend": float(spend)}, user_id


def assert_accounted(store: Store, settings: Settings, *, distinct: int, counted: int,
                     rejected: set[str] = frozenset(), dead: list[str] = (),
                     duplicates: int | None = None):
    """Every distinct message in exactly one outcome, and the stores hold the expected ids."""
    outcomes = store.outcomes()
    dead_now = dead_letter_ids(settings)
    assert outcomes["counted"] == counted, outcomes
    assert rejected_ids(store) == set(rejected), outcomes
    assert outcomes["rejected"] + outcomes["conflict"] == len(rejected), outcomes
    assert dead_now == sorted(dead)
    assert outcomes["counted"] + outcomes["rejected"] + outcomes["conflict"] + len(dead_now) \
        == distinct, outcomes
    if duplicates is not None:
        assert outcomes["duplicate"] == duplicates, outcomes


def assert_worker_survived(worker):
    """The worker's main process still runs and no pool process died."""
    assert worker.process.poll() is None, worker.tail()
    log = worker.log_path.read_text(errors="replace")
    for sign in ("WorkerLostError", "exited with 'signal", "Unrecoverable error", "CRITICAL"):
        assert sign not in log, f"{sign!r} in the worker log:\n{worker.tail()}"


def pool_processes(worker) -> list[int]:
    """Pids of the worker's prefork pool children."""
    return [pid for pid in group_members(worker.process.pid) if pid != worker.process.pid]


# --- 1. duplicate deliveries ---------------------------------------------------------------

def test_every_message_delivered_two_or_three_times_counts_once(settings, store, sqs_client,
                                                                start_worker, start_api):
    """Each message arrives twice, some three times; totals are those of one delivery.

    Two kinds of repeat: the same SQS message again (its original id carried in the
    attribute a redrive sets: what an SQS redelivery looks like to the pipeline) and, for
    orders with an order_id, a producer's retry (a new message with the same body).
    Orders without order_id (legacy shape) and invalid bodies are identified by their
    message id, so they are only repeated as the same message.
    """
    rng = random.Random(1)
    orders = make_orders("DUP", 200, users=20, rng=rng)
    legacy = [({"user_id": f"L{i % 3}", "amount": amount}, Decimal(str(amount)))
              for i, amount in enumerate([100, 2.5, 19.99, 0.01, 7, 1234.56])]
    invalid = ["not json", "[1, 2]", "null", dumps({"order_id": "DUP-BAD", "user_id": "U001"}),
               dumps({**orders[0][0], "order_id": "DUP-MISMATCH",
                      "order_value": orders[0][0]["order_value"] + 1})]
    bodies = [dumps(body) for body, _ in orders + legacy] + invalid
    expected = Expected()
    expected.add_orders(orders + legacy)

    api = start_api(settings)
    start_worker()
    first_ids = send(sqs_client, settings.orders_url, bodies)
    # Every message once more as the same message; a third of them a third time.
    again = list(range(len(bodies))) + rng.sample(range(len(bodies)), len(bodies) // 3)
    # Orders with an order_id: also a producer's retry (new message id), half of them.
    retried = rng.sample(range(len(orders)), len(orders) // 2)
    copies = [(bodies[i], first_ids[i]) for i in again] + [(bodies[i], None) for i in retried]
    rng.shuffle(copies)
    same = [(body, original) for body, original in copies if original]
    send(sqs_client, settings.orders_url, [b for b, _ in same], [o for _, o in same])
    send(sqs_client, settings.orders_url, [b for b, o in copies if not o])
    valid_repeats = sum(1 for i in again if i < len(orders) + len(legacy)) + len(retried)

    want = {"counted": len(orders) + len(legacy), "duplicate": valid_repeats,
            "rejected": len(invalid)}
    wait_for(lambda: {k: store.outcomes()[k] for k in want} == want
             and drained(sqs_client, settings),
             timeout=180, message=f"outcomes {want} and an empty queue")
    # Nothing visible, in flight or delayed means every message was deleted: no more can
    # arrive, and assert_accounted below would see any outcome too many.

    # An order id reused with other content, once the original is counted: a conflict.
    conflict_id, = send(sqs_client, settings.orders_url,
                        [dumps({**orders[1][0], "user_id": "SOMEONE-ELSE"})])
    wait_for(lambda: store.outcomes()["conflict"] == 1, timeout=60, message="the conflict")

    assert_totals(store, expected, api)
    assert requests.get(f"{api}/users/SOMEONE-ELSE/stats", timeout=10).status_code == 404
    first_invalid = first_ids[len(orders) + len(legacy):]
    assert_accounted(store, settings, distinct=len(bodies) + 1, counted=want["counted"],
                     rejected={*first_invalid, conflict_id}, duplicates=valid_repeats)
    assert store.rejection(conflict_id)["kind"] == "conflict"
    wait_for(lambda: drained(sqs_client, settings), timeout=30, message="queue to drain")


# --- 2. workers killed with SIGKILL --------------------------------------------------------

@pytest.mark.slow
def test_pool_process_killed_mid_stream_loses_and_doubles_nothing(settings, store, sqs_client,
                                                                  start_worker, tmp_path):
    """SIGKILL pool processes while they run tasks: the tasks come back and count once."""
    orders = make_orders("KP", 3000, users=40, rng=random.Random(2))
    expected = Expected()
    expected.add_orders(orders)
    # Events and remote control on a Redis of their own, so that pausing the aggregates'
    # Redis below holds the tasks only, not the worker's main process.
    control = RedisServer(free_port(), log_dir=tmp_path, name="redis-control").start()
    try:
        # Queued first: a worker that keeps pace with the sender would be through before
        # the pause below.
        send(sqs_client, settings.orders_url, [dumps(body) for body, _ in orders])
        worker = start_worker(settings=replace(settings, control_url=control.url))
        wait_for(lambda: store.outcomes()["counted"] >= 400, timeout=120,
                 message="400 counted")

        # A task takes milliseconds: to kill pool processes in the middle of one for sure,
        # Redis holds writes for a moment, so every busy process waits in its update script.
        store.redis.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        time.sleep(1.5)
        killed = pool_processes(worker)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        store.redis.execute_command("CLIENT", "UNPAUSE")
        wait_for(lambda: "WorkerLostError" in worker.log_path.read_text(errors="replace"),
                 timeout=10, message="Celery to report the task of a killed process lost")
        assert store.outcomes()["counted"] < len(orders), "the kill came after the stream"

        # The lost tasks' messages are requeued (hidden wait_time_seconds), then run again.
        wait_for(lambda: store.outcomes()["counted"] == len(orders)
                 and drained(sqs_client, settings), timeout=180,
                 message="every order counted and the queue empty")
        assert worker.process.poll() is None, "the worker must survive its pool processes"
        assert not set(killed) & set(pool_processes(worker)), "the pool was not renewed"
        assert_totals(store, expected)
        assert_accounted(store, settings, distinct=len(orders), counted=len(orders))
    finally:
        control.stop()


@pytest.mark.slow
def test_whole_worker_killed_mid_stream_then_restarted(settings, store, sqs_client,
                                                       start_worker, start_api):
    """SIGKILL the worker's whole process group, start a new one: nothing lost or doubled.

    The messages the dead worker had received come back when their visibility timeout
    (30 s here) ends; those it had counted but not yet deleted end as duplicates.
    """
    orders = make_orders("KW", 3000, users=50, rng=random.Random(3))
    expected = Expected()
    expected.add_orders(orders)
    api = start_api(settings)
    # Queued first, so the stream is still going when the worker dies (see above).
    send(sqs_client, settings.orders_url, [dumps(body) for body, _ in orders])
    first = start_worker(name="w1")

    wait_for(lambda: store.outcomes()["counted"] >= 800, timeout=120, message="800 counted")
    first.stop(sig=signal.SIGKILL)
    counted_at_kill = store.outcomes()["counted"]
    assert counted_at_kill < len(orders), "the kill came after the stream"
    in_flight = sqs.depth(settings, settings.orders_queue, sqs_client)["in_flight"]

    start_worker(name="w2")
    wait_for(lambda: store.outcomes()["counted"] == len(orders) and drained(sqs_client, settings),
             timeout=180, message="every order counted and the queue empty")
    assert_totals(store, expected, api)
    assert_accounted(store, settings, distinct=len(orders), counted=len(orders))
    # Redelivered messages that had already been counted: at most what was in flight.
    assert store.outcomes()["duplicate"] <= in_flight


def test_worker_stopped_warm_mid_stream_settles_what_it_counted(settings, store, sqs_client,
                                                                start_worker):
    """SIGTERM mid-stream: what was counted before the stop is deleted before exit.

    Deletes sent from the event loop are handed over and waited for: a new worker finds no
    message counted before the stop again. Batches a pool process took just before the
    stop finish after it began; Celery's flush forgot them (tasks/compat.py pool-flush):
    they were not acked, came back as duplicates, and held the stop for 30 s. Now they are
    acked like the others: no duplicate, and the stop ends in a few seconds.
    """
    orders = make_orders("WS", 2000, users=40, rng=random.Random(5))
    send(sqs_client, settings.orders_url, [dumps(body) for body, _ in orders])
    first = start_worker(name="w1")
    wait_for(lambda: store.outcomes()["counted"] >= 600, timeout=120, message="600 counted")
    # A warm shutdown as `kill <pid>` or Docker gives it: the main process alone. (Worker.stop
    # signals the whole group, whose pool processes then die mid-task: WorkerLostError.)
    signalled_at = time.monotonic()
    os.kill(first.process.pid, signal.SIGTERM)
    wait_for(lambda: not first.service.members(), timeout=60, message="the worker to exit")
    stop_seconds = time.monotonic() - signalled_at
    assert store.outcomes()["counted"] < len(orders), "the stop came after the stream"
    log = first.log_path.read_text(errors="replace")
    # Liveness, not speed: a stop held until the visibility timeout stalls every rolling
    # restart for that long (the tasks here take milliseconds).
    assert stop_seconds < settings.visibility_timeout / 2, (stop_seconds, log[-3000:])
    assert "still pending at shutdown" not in log and "could not" not in log, log[-3000:]
    after_stop = log.split("Warm shutdown", 1)[1]
    finished_late = sum(int(n) for n in re.findall(r"succeeded in [^:]*: \{'counted': (\d+)",
                                                   after_stop))

    start_worker(name="w2")
    wait_for(lambda: store.outcomes()["counted"] == len(orders) and drained(sqs_client, settings),
             timeout=180, message="every order counted and the queue empty")
    assert store.outcomes()["duplicate"] == 0, (store.outcomes(), finished_late)


# --- 3. Redis down -------------------------------------------------------------------------

@pytest.mark.slow
def test_redis_down_for_15_seconds_then_back(settings, sqs_client, start_worker, start_api,
                                             tmp_path):
    """Redis stops mid-stream for ~15 s: tasks retry, the API answers 503, both recover.

    A Redis of its own (the session's one serves the other tests) with an append-only
    file, so what was counted before the stop is still there after the restart. The
    retry budget must outlast the outage, or messages end in the DLQ as designed:
    TASK_MAX_RETRIES=20 with backoff capped at 4 s is well over a minute (production's
    defaults, 5 retries capped at 60 s plus 5 receives, give about two minutes).
    """
    redis_port = free_port()
    redis_server = RedisServer(redis_port, data_dir=tmp_path / "redis-data", log_dir=tmp_path,
                               name="redis-outage").start()
    try:
        own = replace(settings, redis_url=redis_server.url, task_max_retries=20)
        store = Store.from_url(own.redis_url)
        # Enough that the outage comes mid-stream: the worker drains ~1,000 orders a second.
        orders = make_orders("RD", 4000, users=30, rng=random.Random(4))
        expected = Expected()
        expected.add_orders(orders)
        api = start_api(own)
        # Queued before the worker starts: a worker as fast as the sender counted the
        # stream while it was sent, and Redis then stopped after the stream.
        send(sqs_client, own.orders_url, [dumps(body) for body, _ in orders])
        worker = start_worker(settings=own)

        wait_for(lambda: store.outcomes()["counted"] >= 300, timeout=120, message="300 counted")
        redis_server.stop()
        down_at = time.monotonic()
        answers = []
        while time.monotonic() - down_at < 15:
            for path in ("/stats/global", "/users/U001/stats", "/global/stats"):
                response = requests.get(f"{api}{path}", timeout=10)
                answers.append((path, response.status_code, response.headers["Content-Type"],
                                response.json()))
            time.sleep(1)
        health = requests.get(f"{api}/health", timeout=10)
        assert worker.process.poll() is None, worker.tail()

        redis_server.start()
        # Read at once, before the retries resume: the outage came mid-stream.
        assert store.outcomes()["counted"] < len(orders), "Redis stopped after the stream"
        wait_for(lambda: requests.get(f"{api}/stats/global", timeout=10).status_code == 200,
                 timeout=15, message="the API to recover by itself")
        wait_for(lambda: store.outcomes()["counted"] == len(orders)
                 and drained(sqs_client, own), timeout=180,
                 message="every order counted and the queue empty")

        assert answers and all(
            status == 503 and kind == "application/json"
            and body == {"error": "Statistics are unavailable: Redis does not answer.",
                         "status": 503}
            for _, status, kind, body in answers), answers
        assert health.status_code == 503 and health.json()["down"] == ["redis"], health.text
        assert "Retry in" in worker.log_path.read_text(errors="replace"), "no task retried"
        assert_totals(store, expected, api)
        assert_accounted(store, own, distinct=len(orders), counted=len(orders))
        assert_worker_survived(worker)
    finally:
        redis_server.stop()


# --- 4. SQS unreachable --------------------------------------------------------------------

@pytest.mark.slow
def test_sqs_unreachable_for_15_seconds_worker_reconnects(settings, store, sqs_client,
                                                          sqs_server, start_worker):
    """The worker reaches SQS through a proxy that is cut for ~15 s, then restored.

    Producers keep sending to SQS directly meanwhile. Deletes that failed during the
    outage leave counted messages on the queue: they come back after the visibility
    timeout (30 s) and end as duplicates.
    """
    proxy = TcpProxy("127.0.0.1", sqs_server.port).start()
    try:
        behind = replace(settings, sqs_endpoint_url=proxy.url)
        orders = make_orders("SQ", 1500, users=30, rng=random.Random(5))
        expected = Expected()
        expected.add_orders(orders)
        bodies = [dumps(body) for body, _ in orders]
        worker = start_worker(settings=behind)
        pid = worker.process.pid
        send(sqs_client, settings.orders_url, bodies[:1000])

        wait_for(lambda: store.outcomes()["counted"] >= 300, timeout=120, message="300 counted")
        proxy.cut()
        cut_at = time.monotonic()
        send(sqs_client, settings.orders_url, bodies[1000:])
        time.sleep(5)
        stalled = store.outcomes()["counted"]
        time.sleep(max(0.0, 15 - (time.monotonic() - cut_at)))
        assert store.outcomes()["counted"] == stalled, "counting went on without SQS?"
        assert stalled < len(orders), "the outage came after the stream"
        assert worker.process.poll() is None, worker.tail()
        proxy.restore()

        wait_for(lambda: store.outcomes()["counted"] == len(orders)
                 and drained(sqs_client, settings), timeout=180,
                 message="every order counted and the queue empty")
        assert worker.process.pid == pid and worker.process.poll() is None
        assert_totals(store, expected)
        assert_accounted(store, settings, distinct=len(orders), counted=len(orders))
    finally:
        proxy.stop()


# --- 5. a catalogue of bad bodies ----------------------------------------------------------

def order(**changes) -> dict:
    """A valid order (10.00 = 2 x 5.00) with some fields changed."""
    return valid_order(**{"user_id": "CAT-U1", "lines": [("P1", 2, 500)], "day": "2024-12-01",
                          **changes})


def item(**changes) -> list:
    return [{"product_id": "P1", "quantity": 2, "price_per_unit": 5.0, **changes}]


def padded(size: int) -> str:
    """A JSON order of exactly size bytes (a long shipping address)."""
    body = dumps(order(order_id="CAT-HUGE", shipping_address=""))
    padding = "x" * (size - len(body))
    return body.replace('"shipping_address":""', f'"shipping_address":"{padding}"')


# (name, body, path of the field the reason must name, words the reason must contain)
CATALOGUE = [
    ("not JSON", "this is not json", ("_schema",), "not valid JSON"),
    ("cut-off JSON", '{"order_id": "CAT-CUT", "user_id": "U1", "ord', ("_schema",),
     "not valid JSON"),
    # SQS refuses a 0-length body (MissingParameter, checked below): whitespace is the
    # emptiest body that can arrive.
    ("blank body", " ", ("_schema",), "empty"),
    ("whitespace body", "\n\t \r\n", ("_schema",), "empty"),
    ("JSON array", dumps([order(order_id="CAT-ARRAY")]), ("_schema",), "not an array"),
    ("JSON string", dumps("an order"), ("_schema",), "not a string"),
    ("JSON null", "null", ("_schema",), "not null"),
    ("JSON number", "42", ("_schema",), "not a number"),
    ("array nested 1,000 deep", "[" * 1000 + "]" * 1000, ("_schema",), "nested too deeply"),
    ("object nested 1,000 deep in a field",
     dumps(order(order_id="CAT-DEEP"))[:-1] + ',"shipping_address":' + '{"a":' * 1000 + "1"
     + "}" * 1001, ("_schema",), "nested too deeply"),
    ("256 KiB body", padded(256 * 1024), ("_schema",), "larger than 131072 bytes"),
    # LocalStack, like SQS since 2025, takes bodies of up to 1 MiB: the largest it accepts.
    ("1 MiB body (the largest SQS accepts)", padded(1024 * 1024), ("_schema",),
     "larger than 131072 bytes"),
    ("NaN order_value", dumps(order(order_id="CAT-NAN", order_value=float("nan")), ),
     ("order_value",), "finite"),
    ("Infinity price", dumps(order(order_id="CAT-INF", items=item(price_per_unit=float("inf")))),
     ("items", "0", "price_per_unit"), "finite"),
    ("-Infinity order_value", dumps(order(order_id="CAT-NINF", order_value=float("-inf"))),
     ("order_value",), "finite"),
    ("1e400 (overflows to inf)", dumps(order(order_id="CAT-E400"))
     .replace('"order_value":10.0', '"order_value":1e400'), ("order_value",), "finite"),
    ("order_value as a string", dumps(order(order_id="CAT-STR", order_value="10.00")),
     ("order_value",), "number"),
    ("order_value 'two hundred'", dumps(order(order_id="CAT-WORDS", order_value="two hundred")),
     ("order_value",), "number"),
    ("quantity as a string", dumps(order(order_id="CAT-QSTR", items=item(quantity="2"))),
     ("items", "0", "quantity"), "whole number"),
    ("price as a string", dumps(order(order_id="CAT-PSTR", items=item(price_per_unit="5.00"))),
     ("items", "0", "price_per_unit"), "number"),
    ("quantity true", dumps(order(order_id="CAT-QBOOL", items=item(quantity=True))),
     ("items", "0", "quantity"), "whole number"),
    ("order_value false", dumps(order(order_id="CAT-VBOOL", order_value=False)),
     ("order_value",), "number"),
    ("negative quantity", dumps(order(order_id="CAT-QNEG", order_value=-10.0,
                                      items=item(quantity=-2))),
     ("items", "0", "quantity"), "between 1"),
    ("zero quantity", dumps(order(order_id="CAT-QZERO", order_value=0, items=item(quantity=0))),
     ("items", "0", "quantity"), "between 1"),
    ("fractional quantity", dumps(order(order_id="CAT-QFRAC", order_value=7.5,
                                        items=item(quantity=1.5))),
     ("items", "0", "quantity"), "whole number"),
    ("negative price", dumps(order(order_id="CAT-PNEG", items=item(price_per_unit=-5.0))),
     ("items", "0", "price_per_unit"), "greater than or equal to 0"),
    ("empty items", dumps(order(order_id="CAT-EMPTY", items=[])), ("items",), "minimum length"),
    ("items not a list", dumps(order(order_id="CAT-ITEMOBJ", items={"product_id": "P1"})),
     ("items",), "list"),
    # 10,000 complete lines (~50 bytes each) are far over MAX_ORDER_BYTES (and 256 KiB);
    # 2,000 fit, and must be refused by the item limit (MAX_ITEMS=1000).
    ("2,000 items", dumps(order(order_id="CAT-2000", order_value=20000.0,
                                items=item(quantity=2) * 2000)),
     ("items",), "at most 1000 items"),
    ("control character in user_id", dumps(order(order_id="CAT-CTRL1", user_id="U\u00001")),
     ("user_id",), "control characters"),
    ("escape character in order_id", dumps(order(order_id="CAT-\u001b[31mRED")),
     ("order_id",), "control characters"),
    ("zero-width space in product_id", dumps(order(order_id="CAT-ZW",
                                                   items=item(product_id="P\u200b1"))),
     ("items", "0", "product_id"), "control characters"),
    ("lone surrogate in user_id", dumps(order(order_id="CAT-SURR", user_id="U\ud8001")),
     ("user_id",), "lone surrogate"),
    ("blank user_id", dumps(order(order_id="CAT-BLANK", user_id="   ")), ("user_id",), "blank"),
    ("missing user_id", dumps({k: v for k, v in order(order_id="CAT-NOUSER").items()
                               if k != "user_id"}), ("user_id",), "Missing"),
    ("order_timestamp far in the future",
     dumps(order(order_id="CAT-FUTURE", order_timestamp="2999-01-01T00:00:00Z")),
     ("order_timestamp",), "in the future"),
    ("order_timestamp unparsable", dumps(order(order_id="CAT-WHEN", order_timestamp="yesterday")),
     ("order_timestamp",), "ISO-8601"),
    ("order_timestamp day/month/year", dumps(order(order_id="CAT-DMY",
                                                   order_timestamp="31/12/2024 10:00")),
     ("order_timestamp",), "ISO-8601"),
    ("order_timestamp without zone", dumps(order(order_id="CAT-NAIVE",
                                                 order_timestamp="2024-12-01T10:00:00")),
     ("order_timestamp",), "time zone"),
    ("order_timestamp a number", dumps(order(order_id="CAT-EPOCH", order_timestamp=1733047200)),
     ("order_timestamp",), "ISO-8601"),
    ("total off by 0.02", dumps(order(order_id="CAT-MISMATCH", order_value=10.02)),
     ("order_value",), "does not match the item total 10.00"),
]


def reason_at(reasons: dict, path: tuple) -> str:
    """The messages at a field path of marshmallow-shaped reasons, joined."""
    node = reasons
    for key in path:
        assert isinstance(node, dict) and key in node, f"no {'.'.join(path)} in {reasons}"
        node = node[key]
    return " ".join(node) if isinstance(node, list) else json.dumps(node)


def test_catalogue_of_bad_bodies_is_rejected_with_reasons(settings, store, sqs_client,
                                                          start_worker, start_api):
    """Every bad body is rejected with a reason naming its field; good ones beside are counted."""
    good = [
        (order(order_id="CAT-OK-1"), "CAT-U1", Decimal("10.00")),
        # Non-ASCII ids are ids like any other (sent as raw UTF-8, not escaped).
        (order(order_id="CAT-ü-東京", user_id="Zoë 東京/1"), "Zoë 東京/1", Decimal("10.00")),
        # Off by one cent: within the tolerance, counted at the order_value sent.
        (order(order_id="CAT-CENT", user_id="CAT-U2", order_value=10.01), "CAT-U2",
         Decimal("10.01")),
        # Extra fields are ignored, even those named like parts of a kombu envelope.
        (order(order_id="CAT-PROPS", properties="gift wrap"), "CAT-U1", Decimal("10.00")),
        (order(order_id="CAT-ENVELOPE", properties={"delivery_info": "x"}, headers={},
               body="not a task"), "CAT-U1", Decimal("10.00")),
    ]
    expected = Expected()
    for _, user_id, value in good:
        expected.add(user_id, value)

    # SQS itself refuses a 0-length body and one over 1 MiB: they never reach a worker.
    for refused in ("", padded(1024 * 1024 + 1)):
        with pytest.raises(ClientError):
            sqs_client.send_message(QueueUrl=settings.orders_url, MessageBody=refused)

    api = start_api(settings)
    worker = start_worker()
    send(sqs_client, settings.orders_url,
         [json.dumps(body, ensure_ascii=False) for body, _, _ in good])
    bad_ids = send(sqs_client, settings.orders_url, [body for _, body, _, _ in CATALOGUE])
    # Ten thousand items: only incomplete ones fit in an SQS message.
    many_id, = send(sqs_client, settings.orders_url,
                    [dumps(order(order_id="CAT-10K", items=[{}] * 10_000))])

    total = len(good) + len(CATALOGUE) + 1
    wait_for(lambda: store.outcomes()["counted"] + store.outcomes()["rejected"] == total
             and drained(sqs_client, settings), timeout=120,
             message="every message to reach an outcome")

    failures = []
    for (name, _, path, words), message_id in zip(CATALOGUE, bad_ids):
        record = store.rejection(message_id)
        if record is None:
            failures.append(f"{name}: not rejected")
            continue
        text = reason_at(record["reasons"], path) if path[0] in record["reasons"] else ""
        if words not in text:
            failures.append(f"{name}: reasons {json.dumps(record['reasons'])[:300]}")
    assert not failures, "\n".join(failures)

    many = store.rejection(many_id)
    assert "items" in many["reasons"]
    # The CLI shows a record by order id, as an operator would look it up.
    shown = json.loads(celery_cli(settings, "rejected", "show", "CAT-MISMATCH", "--json").stdout)
    assert shown["message_id"] == bad_ids[-1] and "order_value" in shown["reasons"]

    assert_totals(store, expected, api)
    assert_accounted(store, settings, distinct=total, counted=len(good),
                     rejected={*bad_ids, many_id})
    assert_worker_survived(worker)


def test_ten_thousand_items_are_refused_by_the_item_limit():
    """The reason for 10,000 items is the item limit, in a few bytes (no worker needed:
    the catalogue above runs the same body through one)."""
    evaluated = evaluate(Incoming(dumps(order(order_id="CAT-10K", items=[{}] * 10_000)), "m-10k"),
                         Settings())
    reasons = evaluated.rejection.reasons
    assert reasons == {"items": ["Must have at most 1000 items."]}, \
        f"{len(json.dumps(reasons)):,} bytes of reasons"


# --- 6. a poison message -------------------------------------------------------------------

@pytest.mark.slow
def test_poison_message_is_dead_lettered_then_redriven_and_counted_once(settings, store,
                                                                        sqs_client,
                                                                        start_worker):
    """A message whose task raises every time reaches the DLQ intact after MAX_RECEIVE_COUNT
    receives; redriven after the cause is gone, it is counted exactly once.

    The poison is real data, not a test hook: the user's key holds a string, so the update
    script fails with WRONGTYPE before writing anything.
    """
    orders = make_orders("PO", 30, users=5, rng=random.Random(6))
    poisoned = [order(order_id="PO-P1", user_id="POISONED"),
                order(order_id="PO-P2", user_id="POISONED", order_value=15.0,
                      items=item(quantity=3))]
    store.redis.set(user_key("POISONED"), "not a hash")
    expected = Expected()
    expected.add_orders(orders)

    worker = start_worker()
    send(sqs_client, settings.orders_url, [dumps(body) for body, _ in orders])
    sent_at = time.monotonic()
    poison_ids = send(sqs_client, settings.orders_url, [dumps(body) for body in poisoned])

    def dead_lettered():
        return sqs.depth(settings, settings.dlq_name, sqs_client)["visible"] == len(poisoned)

    wait_for(lambda: store.outcomes()["counted"] == len(orders) and dead_lettered()
             and drained(sqs_client, settings), timeout=120,
             message="the good orders counted and the poisoned ones dead-lettered")
    # FAILURE_BACKOFF hides a failed message 1, 2, 4 s here, not the visibility timeout.
    assert time.monotonic() - sent_at < settings.visibility_timeout, \
        "the backoff policy was not applied: each retry waited the visibility timeout"
    letters = {letter.original_id: letter for letter in DeadLetterQueue(settings).list()}
    assert sorted(letters) == sorted(poison_ids)
    for message_id, body in zip(poison_ids, poisoned):
        assert letters[message_id].body == dumps(body), "the body must reach the DLQ intact"
        assert letters[message_id].receive_count > settings.max_receive_count
    assert_totals(store, expected)
    assert_accounted(store, settings, distinct=len(orders) + len(poisoned), counted=len(orders),
                     dead=poison_ids)
    log = worker.log_path.read_text(errors="replace")
    assert "WRONGTYPE" in log
    # Their batches' neighbours were counted and deleted at once (duplicates=0 above), and
    # each failed batch names its failed orders' message ids, the ids dlq redrive takes.
    named = {some_id for match in re.finditer(
        r"BatchPartlyFailed: \d+ order message\(s\) failed \(([^)]+)\)", log)
        for some_id in match.group(1).split(", ")}
    assert named == set(poison_ids), log[-3000:]

    # Redriven while the cause is still there: back in the DLQ, under the same id.
    celery_cli(settings, "dlq", "redrive", "--all")
    wait_for(lambda: dead_lettered() and drained(sqs_client, settings), timeout=90,
             message="the poisoned orders back in the DLQ")
    assert dead_letter_ids(settings) == sorted(poison_ids)
    assert store.outcomes()["counted"] == len(orders)

    # The cause goes away; one by id, the other with --all.
    store.redis.delete(user_key("POISONED"))
    celery_cli(settings, "dlq", "redrive", poison_ids[0])
    celery_cli(settings, "dlq", "redrive", "--all")
    expected.add("POISONED", Decimal("10.00"))
    expected.add("POISONED", Decimal("15.00"))
    wait_for(lambda: store.outcomes()["counted"] == len(orders) + len(poisoned)
             and drained(sqs_client, settings), timeout=60, message="the redriven orders counted")
    assert_totals(store, expected)
    assert_accounted(store, settings, distinct=len(orders) + len(poisoned),
                     counted=len(orders) + len(poisoned), duplicates=0)
    assert worker.process.poll() is None
