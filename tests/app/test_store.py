"""The Redis gateway against a real redis-server: exact, exactly once, safe keys."""
import json
import re
from datetime import datetime, timezone

import pytest

from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import (Store, order_key, product_key, rejected_order_key, top_products_key,
                       top_users_key, user_key)
from bench.order_builders import order_body
from bench.redis_meter import CountingRedis

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def body(order_id, user_id="U1", cents=1000, product="P1", quantity=1, day="2024-12-13"):
    """An order of one line worth cents in all."""
    return order_body(order_id, user_id, lines=((product, quantity, cents / quantity),),
                      day=day, value_cents=cents)


@pytest.fixture
def store(any_store):
    """Each test on a standalone Redis and on the session's Redis Cluster."""
    return any_store


def all_keys(store, pattern: str) -> list[str]:
    """Keys matching pattern on every node."""
    return list(store.redis.scan_iter(pattern, count=1000))


def apply(store, *bodies, settings=None):
    evaluated = [evaluate(Incoming(b, f"msg-{i}-{hash(b)}"), settings or Settings(), now=NOW)
                 for i, b in enumerate(bodies)]
    return store.apply(evaluated)


def test_a_counted_order_updates_user_and_global_totals(store):
    assert apply(store, body("O1", cents=1999), body("O2", cents=1)) == ["counted", "counted"]
    user = store.user_stats("U1")
    assert (user.order_count, user.total_spend_cents) == (2, 2000)
    assert store.global_stats().total_revenue_cents == 2000
    # The seeds' hash fields stay readable, with exact decimal strings.
    assert store.redis.hget(user_key("U1"), "total_spend") == "20.00"


def test_the_same_order_delivered_again_is_counted_once(store):
    first = body("O1", cents=500)
    assert apply(store, first, first) == ["counted", "duplicate"]
    assert apply(store, first) == ["duplicate"]
    assert store.user_stats("U1").order_count == 1
    assert store.outcomes()["duplicate"] == 2


def test_a_reused_order_id_with_other_content_is_a_recorded_conflict(store):
    evaluated = [evaluate(Incoming(body("O1", user_id="U1"), "m1"), Settings(), now=NOW),
                 evaluate(Incoming(body("O1", user_id="U2"), "m2"), Settings(), now=NOW)]
    assert store.apply(evaluated) == ["counted", "conflict"]
    assert store.user_stats("U2") is None
    conflict = store.rejection("m2")
    assert conflict["kind"] == "conflict"
    assert json.loads(conflict["body"])["user_id"] == "U2"
    assert '"U1"' in conflict["first_seen"]
    assert store.outcomes()["conflict"] == 1


def test_a_rejection_is_recorded_once_per_message(store):
    evaluated = evaluate(Incoming("not json", "m-bad"), Settings(), now=NOW)
    assert store.apply([evaluated, evaluated]) == ["rejected", "rejected"]
    assert store.outcomes()["rejected"] == 1
    record = store.rejection("m-bad")
    assert record["body"] == "not json"
    assert "not valid JSON" in record["reasons"]["_schema"][0]
    assert [r["message_id"] for r in store.rejected()] == ["m-bad"]


def test_twenty_thousand_orders_of_ten_cents_total_exactly(store):
    count = 20_000
    bodies = [body(f"O{i}", user_id=f"U{i % 7}", cents=10) for i in range(count)]
    for start in range(0, count, 500):
        apply(store, *bodies[start:start + 500])
    float_total = 0.0
    for _ in range(count):
        float_total += 0.10
    assert float_total != 2000.0  # what accumulating floats would report
    assert store.global_stats().total_revenue_cents == 200_000
    assert sum(store.user_stats(f"U{u}").total_spend_cents for u in range(7)) == 200_000


@pytest.mark.parametrize("user_id", ["a:b", "*", "a b", "a/b", "é😀", "user:U1", "%41", "U1:x"])
def test_any_user_id_addresses_only_its_own_key(store, user_id):
    apply(store, body("O-plain", user_id="U1", cents=100),
          body("O-odd", user_id=user_id, cents=700))
    assert store.user_stats(user_id).total_spend_cents == 700
    assert store.user_stats("U1").total_spend_cents == 100
    assert user_key(user_id) != user_key("U1")
    assert len(all_keys(store, "user:*")) == 2


def test_day_product_and_top_aggregates_follow_the_order_time(store):
    apply(store, body("O1", user_id="A", cents=300, product="P1", quantity=3, day="2024-12-01"),
          body("O2", user_id="B", cents=500, product="P2", quantity=1, day="2024-12-01"),
          body("O3", user_id="A", cents=200, product="P1", quantity=2, day="2024-12-02"))
    assert store.kpis(["2024-12-01"]) == [(2, 800, 4, 2)]  # orders, cents, items, customers
    p1 = product_key("P1", store.product_shard("P1"))
    assert store.redis.hgetall(p1) == {"units_sold": "5", "revenue_cents": "500", "orders": "2"}
    a, b = store.user_shard("A"), store.user_shard("B")
    assert store.redis.zscore(top_users_key("spend", shard=a), "A") == 500
    assert store.redis.zscore(top_users_key("spend", shard=b), "B") == 500
    assert store.redis.zscore(top_users_key("orders", shard=a), "A") == 2
    assert store.redis.zscore(top_products_key("units", store.product_shard("P1")), "P1") == 5


def test_a_redelivered_order_counts_once_in_its_days_product_ranking(store):
    first = body("O1", cents=600, product="P1", quantity=3, day="2024-12-01")
    other = body("O2", cents=250, product="P1", quantity=1, day="2024-12-02")
    assert apply(store, first, first, other) == ["counted", "duplicate", "counted"]
    assert apply(store, first, other) == ["duplicate", "duplicate"]
    shard = store.product_shard("P1")
    for day, order in (("2024-12-01", first), ("2024-12-02", other)):
        [line] = json.loads(order)["items"]
        cents, units = round(line["price_per_unit"] * 100) * line["quantity"], line["quantity"]
        assert store.redis.zrange(top_products_key("revenue", shard, day=day), 0, -1,
                                  withscores=True) == [("P1", cents)]
        assert store.redis.zrange(top_products_key("units", shard, day=day), 0, -1,
                                  withscores=True) == [("P1", units)]


def test_corrections_are_recorded_beside_the_counted_value(store):
    apply(store, body("O1", cents=1000).replace('"order_value": 10.0', '"order_value": 12.0'),
          settings=Settings(order_value_mismatch="correct"))
    assert store.user_stats("U1").total_spend_cents == 1000
    assert store.correction("O1", "U1") == {"sent_cents": 1200, "counted_cents": 1000}
    assert store.corrected() == 1 and "corrected" not in store.outcomes()


def test_a_key_of_the_wrong_type_fails_the_whole_batch_before_any_write(store):
    store.redis.set(user_key("U2"), "corrupted")
    with pytest.raises(Exception, match=re.escape(f"WRONGTYPE {user_key('U2')}")):
        apply(store, body("O1", user_id="U1"), body("O2", user_id="U2"))
    assert store.global_stats().total_orders == 0
    assert store.redis.get(order_key("O1")) is None
    store.redis.delete(user_key("U2"))
    assert apply(store, body("O1", user_id="U1"), body("O2", user_id="U2")) == ["counted"] * 2


def test_a_forgotten_rejection_is_uncounted(store):
    apply(store, '{"order_id": "X1"}')
    record = store.rejection("X1")
    assert record and store.outcomes()["rejected"] == 1
    assert store.forget_rejection(record)
    assert store.rejection("X1") is None and store.outcomes()["rejected"] == 0
    assert store.redis.get(rejected_order_key("X1")) is None
    assert not store.forget_rejection(record)
    assert store.outcomes()["rejected"] == 0


def test_a_rejection_written_again_since_it_was_read_is_not_forgotten(store):
    evaluated = evaluate(Incoming('{"order_id": "X1"}', "m-x1"), Settings(), now=NOW)
    store.apply([evaluated])
    record = store.rejection("X1")
    store.apply([evaluated])  # the requeued body, rejected again by a worker
    assert not store.forget_rejection(record)
    assert store.rejection("X1")["at"] > record["at"]
    assert store.outcomes()["rejected"] == 1


def test_rejections_are_counted_by_field_and_lag_is_recorded(store):
    sent = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
    evaluated = [evaluate(Incoming(b, f"m{i}", sent), Settings(), now=NOW) for i, b in enumerate(
        ['{"order_id": "X"}', "junk", body("O1"), body("O1", user_id="OTHER")])]
    store.apply(evaluated)
    by_field = store.rejected_by_field()
    assert by_field["user_id"] == 1 and by_field["items"] == 1 and by_field["_schema"] == 1
    assert by_field["order_id"] == 1  # the conflict
    oldest, applied = store.lag()
    assert oldest == int(sent.timestamp() * 1000) and applied >= oldest


def test_the_top_of_every_shard_comes_in_one_round_trip_and_merges_exactly(settings):
    client = CountingRedis.from_url(settings.redis_url, decode_responses=True)
    store = Store(client, settings)
    users = [f"U{i}" for i in range(40)]
    assert len({store.user_shard(u) for u in users}) == store.shards  # every shard ranks
    apply(store, *(body(f"O{i}", user, cents=100 * (i % 7 + 1)) for i, user in enumerate(users)))
    client.function_flush()  # the first pipeline finds no function: installed, sent again
    client.sent.clear()

    top = store.top(lambda s: [top_users_key("spend", shard=s)],
                    lambda s: [top_users_key("orders", shard=s)], 5)

    spend = {user: 100 * (i % 7 + 1) for i, user in enumerate(users)}
    assert top == sorted(((u, c, 1) for u, c in spend.items()), key=lambda e: (-e[1], e[0]))[:5]
    assert client.sent == ["pipeline", "FUNCTION LOAD", "pipeline"]
    client.sent.clear()
    assert store.top(lambda s: [top_users_key("spend", shard=s)],
                     lambda s: [top_users_key("orders", shard=s)], 5) == top
    assert client.sent == ["pipeline"]


def test_a_batch_is_one_pipeline_and_a_flushed_script_is_loaded_then_sent_again(settings):
    client = CountingRedis.from_url(settings.redis_url, decode_responses=True)
    store = Store(client, settings)
    client.script_flush()
    client.sent.clear()
    assert apply(store, body("O1", cents=700)) == ["counted"]
    # A flushed cache: the API's read functions may be gone too, and only a worker may
    # install them.
    assert client.sent == ["pipeline", "SCRIPT LOAD", "FUNCTION LOAD", "pipeline"]
    client.sent.clear()
    assert apply(store, body("O2", cents=300)) == ["counted"]
    assert client.sent == ["pipeline"]
    assert store.user_stats("U1").total_spend_cents == 1000  # each applied once


class Recording(Store):
    """A Store that keeps each script call's payload as sent (JSON text), by phase."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.payloads: list[tuple[str, str]] = []

    def _run_calls(self, phase, calls, writes, keep_errors=False):
        self.payloads += [(phase, json.dumps(payload, ensure_ascii=False)) for _, payload in calls]
        return super()._run_calls(phase, calls, writes, keep_errors)


def test_a_valid_order_ships_its_body_only_in_the_record_of_its_rejection(store, settings):
    recording = Recording(store.redis, settings)
    note = "a note only the body carries"
    first = body("O1", cents=500).replace('"O1"', '"O1", "note": "' + note + '"')
    assert apply(recording, first, body("O2", cents=700)) == ["counted", "counted"]
    assert recording.payloads and not any(note in sent for _, sent in recording.payloads)

    recording.payloads.clear()
    conflicting = body("O1", cents=900).replace('"O1"', '"O1", "note": "' + note + '"')
    assert apply(recording, conflicting, body("O3", cents=100)) == ["conflict", "counted"]
    carrying = [phase for phase, sent in recording.payloads if note in sent]
    # Sent once, in the record written: the last batch call, or the cluster's write phase.
    assert carrying == ["write" if store.cluster else "batch"]
    assert json.loads(store.rejection("O1")["body"])["note"] == note


def test_a_batch_is_one_call_and_one_with_an_order_twice_two(settings):
    recording = Recording(Store.from_url(settings.redis_url).redis, settings)
    assert apply(recording, body("O1"), body("O2")) == ["counted", "counted"]
    assert [phase for phase, _ in recording.payloads] == ["batch"]
    recording.payloads.clear()
    # A redelivery of O2 beside a new order: the protocol alone decides, in the same call.
    assert apply(recording, body("O2"), body("O4")) == ["duplicate", "counted"]
    assert [phase for phase, _ in recording.payloads] == ["batch"]
    recording.payloads.clear()
    # O1 again (its checks: seen, applied), and O3 twice in one batch: the first counts it.
    assert apply(recording, body("O1"), body("O3"), body("O3")) == ["duplicate", "counted",
                                                                    "duplicate"]
    assert [phase for phase, _ in recording.payloads] == ["batch", "batch"]
    assert recording.outcomes() == {"counted": 4, "duplicate": 3, "rejected": 0, "conflict": 0}
    assert recording.user_stats("U1").order_count == 4
