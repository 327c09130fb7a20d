"""No half-written order and distinct counts, against the session's real redis-server.

Totals are driven next to the largest exact total by seeding the very keys the script
adds to (what a long history would have left there); every expected figure is computed
here from MAX_TOTAL and the order sent.
"""
import json
from datetime import date, datetime, timezone

import pytest
import redis

from app import analytics
from app.money import format_cents
from app.orders import MAX_ORDER_CENTS, Incoming, evaluate
from app.settings import Settings
from app.store import (MAX_TOTAL, day_key, global_key, month_key, order_key, outcomes_key,
                       product_key, shard_of, top_products_key, top_users_key, user_days_key,
                       user_key)
from bench.order_builders import order_body

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)
DAY, MONTH = "2024-12-13", "2024-12"
# Keys that only record what became of a message, not the order's figures.
BOOKKEEPING = ("pipeline:", "rejected")
SHARDS = Settings().redis_shards
U1, P1 = shard_of("U1", SHARDS), shard_of("P1", SHARDS)  # the shards of U1's and P1's keys


@pytest.fixture
def store(any_store):
    """Each test on a standalone Redis and on the session's Redis Cluster."""
    return any_store


def order(order_id, *lines, user_id="U1", value_cents=None):
    """An order body on DAY; lines are (product, quantity, unit price in cents)."""
    return order_body(order_id, user_id, lines=lines, day=DAY, value_cents=value_cents)


def apply(store, *bodies, settings=None):
    evaluated = [evaluate(Incoming(b, f"m-{json.loads(b)['order_id']}"), settings or Settings(),
                          now=NOW) for b in bodies]
    return store.apply(evaluated)


def figures(client: redis.Redis) -> dict:
    """Every key holding an order's figures, with its whole content."""
    read = {"hash": client.hgetall, "string": client.get, "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}
    return {key: read[client.type(key)](key) for key in sorted(client.scan_iter(count=1000))
            if not key.startswith(BOOKKEEPING)}


def test_an_order_above_the_largest_order_is_rejected_before_redis(store):
    lines = [(f"P{i}", 1_000_000, 99_999_999_900) for i in range(1000)]
    big = order("BIG", *lines, value_cents=100)
    settings = Settings(order_value_mismatch="correct")
    assert apply(store, big, settings=settings) == ["rejected"]
    assert apply(store, big, settings=settings) == ["rejected"]  # not a "duplicate"
    assert store.redis.get(order_key("BIG")) is None
    assert store.global_stats().total_orders == 0
    [reason] = store.rejection("BIG")["reasons"]["order_value"]
    assert format_cents(MAX_ORDER_CENTS) in reason
    # The largest order itself is counted, to the cent.
    assert apply(store, order("MAX", ("P1", 1, MAX_ORDER_CENTS))) == ["counted"]
    assert store.global_stats().total_revenue_cents == MAX_ORDER_CENTS


# (type, key, field or member, what the order below adds there, the field its rejection
# names: order_value for money, items for units and products, _schema for counts)
PRICE, QUANTITY = 700, 3  # one line of product P1 for user U1 on DAY
CENTS = PRICE * QUANTITY
BOUNDS = [
    ("hash", user_key("U1"), "total_spend_cents", CENTS, "order_value"),
    ("hash", user_key("U1"), "order_count", 1, "_schema"),
    ("hash", global_key(U1), "total_revenue_cents", CENTS, "order_value"),
    ("hash", global_key(U1), "total_orders", 1, "_schema"),
    ("hash", day_key(DAY, U1), "total_revenue_cents", CENTS, "order_value"),
    ("hash", day_key(DAY, U1), "total_items_sold", QUANTITY, "items"),
    ("hash", month_key(MONTH, U1), "total_revenue_cents", CENTS, "order_value"),
    ("hash", month_key(MONTH, U1), "total_orders", 1, "_schema"),
    ("hash", product_key("P1", P1), "revenue_cents", CENTS, "items"),
    ("hash", product_key("P1", P1), "units_sold", QUANTITY, "items"),
    ("hash", product_key("P1", P1), "orders", 1, "items"),
    ("zset", top_users_key("spend", shard=U1), "U1", CENTS, "order_value"),
    ("zset", top_users_key("spend", day=DAY, shard=U1), "U1", CENTS, "order_value"),
    ("zset", top_users_key("orders", month=MONTH, shard=U1), "U1", 1, "_schema"),
    ("zset", top_products_key("revenue", P1), "P1", CENTS, "items"),
    ("zset", top_products_key("units", P1), "P1", QUANTITY, "items"),
    ("zset", top_products_key("revenue", P1, day=DAY), "P1", CENTS, "items"),
    ("zset", top_products_key("units", P1, day=DAY), "P1", QUANTITY, "items"),
]


def seed(client, kind, key, member, value):
    if kind == "hash":
        client.hset(key, member, value)
    else:
        client.zadd(key, {member: value})


def read(client, kind, key, member):
    return int(client.hget(key, member) if kind == "hash" else client.zscore(key, member))


@pytest.mark.parametrize("kind,key,member,adds,blamed", BOUNDS,
                         ids=[f"{b[1]}.{b[2]}" for b in BOUNDS])
def test_an_order_that_would_cross_the_largest_total_is_rejected_whole(store, kind, key, member,
                                                                       adds, blamed):
    seed(store.redis, kind, key, member, MAX_TOTAL - adds)
    assert apply(store, order("FITS", ("P1", QUANTITY, PRICE))) == ["counted"]
    assert read(store.redis, kind, key, member) == MAX_TOTAL
    before = figures(store.redis)
    assert apply(store, order("OVER", ("P1", QUANTITY, PRICE))) == ["rejected"]
    assert figures(store.redis) == before
    record = store.rejection("OVER")
    [(field, [reason])] = record["reasons"].items()
    limit = format_cents(MAX_TOTAL) if adds == CENTS else str(MAX_TOTAL)
    assert (record["kind"], field) == ("invalid", blamed)
    assert f"past {limit}," in reason, reason
    assert store.outcomes()["counted"] == 1 and store.outcomes()["rejected"] == 1


def test_the_user_total_at_the_limit_reads_exactly(store):
    store.redis.hset(user_key("U1"), "total_spend_cents", MAX_TOTAL - CENTS)
    assert apply(store, order("O1", ("P1", QUANTITY, PRICE))) == ["counted"]
    assert store.user_stats("U1").total_spend_cents == MAX_TOTAL
    assert store.redis.hget(user_key("U1"), "total_spend") == format_cents(MAX_TOTAL)


def test_in_one_batch_the_orders_that_fit_are_counted_and_the_rest_rejected(store):
    # Four users whose totals share one shard: its share of the revenue is near the limit.
    users = [u for u in (f"U{i}" for i in range(200)) if shard_of(u, SHARDS) == U1][:4]
    store.redis.hset(global_key(U1), "total_revenue_cents", MAX_TOTAL - 2 * CENTS)
    bodies = [order(f"O{i}", ("P1", QUANTITY, PRICE), user_id=u) for i, u in enumerate(users)]
    assert apply(store, *bodies) == ["counted", "counted", "rejected", "rejected"]
    assert store.global_stats() == type(store.global_stats())(2, MAX_TOTAL)
    assert store.user_stats(users[2]) is None and store.redis.get(order_key("O3")) is None


@pytest.mark.parametrize("key,field,value", [
    (user_key("U1"), "total_spend_cents", "abc"),
    (global_key(U1), "total_orders", "1.5"),
    (day_key(DAY, U1), "total_orders", "007"),
    (product_key("P1", P1), "units_sold", "99999999999999999999"),
    (outcomes_key(U1), "counted", "x"),
    (user_days_key("U1"), DAY, "1:x"),
])
def test_a_corrupted_figure_fails_the_batch_before_any_write(store, key, field, value):
    store.redis.hset(key, field, value)
    before = figures(store.redis)
    with pytest.raises(redis.ResponseError):
        apply(store, order("O1", ("P1", 1, 100)), order("O2", ("P2", 1, 100), user_id="U2"))
    assert figures(store.redis) == before
    assert store.redis.get(order_key("O1")) is None


def test_a_product_on_two_lines_counts_one_order(store):
    assert apply(store, order("O1", ("P1", 2, 500), ("P2", 1, 100), ("P1", 3, 200)),
                 order("O2", ("P1", 1, 500), user_id="U2")) == ["counted", "counted"]
    stats = analytics.product_stats(store, "P1")
    assert (stats.orders, stats.units_sold, stats.revenue_cents) == (2, 2 + 3 + 1,
                                                                       1000 + 600 + 500)
    assert analytics.product_stats(store, "P2").orders == 1
    [day] = analytics.daily(store, analytics.Period.of_day(datetime(2024, 12, 13).date()))
    assert (day.total_orders, day.unique_customers, day.total_items_sold) == (2, 2, 7)
    [month] = analytics.monthly(store, analytics.MonthRange(date(2024, 12, 1), date(2024, 12, 1)))
    assert (month.total_orders, month.unique_customers) == (2, 2)
    assert [(p.product_id, p.units_sold) for p in analytics.top_products(store, 2, "units")] \
        == [("P1", 6), ("P2", 1)]
