"""Analytics queries on a real Redis, against figures worked out by hand below."""
import json
import random
import re
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest

from app import analytics
from app.analytics import Kpis, MonthRange, Period, RangeError, TopProduct, TopUser, UserDay
from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import month_key, top_users_key, user_days_key
from bench.order_builders import order_body

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)
P1, P2, P3 = 500, 1000, 100  # unit prices in cents


def order(order_id, user_id, at, *lines):
    """An order body placed at a time; lines are (product, quantity, unit cents)."""
    return order_body(order_id, user_id, lines=lines, order_timestamp=at)


def apply(store, *bodies):
    evaluated = [evaluate(Incoming(b, f"m-{json.loads(b)['order_id']}-{i}"), Settings(), now=NOW)
                 for i, b in enumerate(bodies)]
    return store.apply(evaluated)


# Seven orders over five UTC days, then a late one and two redeliveries:
#   day         order  user  lines                      cents  items
#   2024-11-30  O5     B     P2 x2                      2000   2
#   2024-12-01  O1     A     P1 x2                      1000   2
#   2024-12-01  O2     B     P2 x1                      1000   1
#   2024-12-01  O3     C     P1 x1, P3 x3  (01:59:59+02:00 on 12-02 is 23:59:59Z on 12-01)
#                                                        800   4
#   2024-12-02  O4     A     P3 x5                       500   5
#   2024-12-31  O6     D     P1 x1                       500   1
#   2025-01-01  O7     A     P2 x1                      1000   1
#   2024-12-01  O8     C     P2 x1  (arrives last)      1000   1
ORDERS = [
    order("O1", "A", "2024-12-01T09:00:00Z", ("P1", 2, P1)),
    order("O2", "B", "2024-12-01T10:00:00Z", ("P2", 1, P2)),
    order("O3", "C", "2024-12-02T01:59:59+02:00", ("P1", 1, P1), ("P3", 3, P3)),
    order("O4", "A", "2024-12-02T08:00:00Z", ("P3", 5, P3)),
    order("O5", "B", "2024-11-30T12:00:00Z", ("P2", 2, P2)),
    order("O6", "D", "2024-12-31T23:00:00Z", ("P1", 1, P1)),
    order("O7", "A", "2025-01-01T00:30:00Z", ("P2", 1, P2)),
]
LATE = order("O8", "C", "2024-12-01T12:00:00Z", ("P2", 1, P2))


@pytest.fixture
def store(any_store):
    """Each test on a standalone Redis and on the session's Redis Cluster."""
    return any_store


@pytest.fixture
def shop(store):
    """The store with the orders above counted, the late one last, two of them twice."""
    assert apply(store, *ORDERS[:4]) == ["counted"] * 4
    assert apply(store, *ORDERS[4:], ORDERS[1]) == ["counted"] * 3 + ["duplicate"]
    assert apply(store, LATE, ORDERS[2]) == ["counted", "duplicate"]
    return store


def test_daily_kpis_count_each_order_on_its_own_utc_day_with_zeros_between(shop):
    rows = analytics.daily(shop, Period(date(2024, 11, 30), date(2025, 1, 2)))
    assert len(rows) == 34  # 1 day of November, 31 of December, 2 of January
    by_day = {row.bucket: row for row in rows}
    # 12-01: O1 1000 + O2 1000 + O3 800 + O8 1000; items 2 + 1 + 4 + 1; users A, B, C.
    assert by_day["2024-12-01"] == Kpis("2024-12-01", 4, 3800, 8, 3)
    assert by_day["2024-12-01"].avg_order_cents == 950
    assert by_day["2024-11-30"] == Kpis("2024-11-30", 1, 2000, 2, 1)
    assert by_day["2024-12-02"] == Kpis("2024-12-02", 1, 500, 5, 1)
    assert by_day["2024-12-31"] == Kpis("2024-12-31", 1, 500, 1, 1)
    assert by_day["2025-01-01"] == Kpis("2025-01-01", 1, 1000, 1, 1)
    empty = [row for row in rows if row.bucket not in
             ("2024-11-30", "2024-12-01", "2024-12-02", "2024-12-31", "2025-01-01")]
    assert len(empty) == 29
    assert all(row.total_orders == row.total_revenue_cents == row.total_items_sold
               == row.unique_customers == row.avg_order_cents == 0 for row in empty)
    assert [row.bucket for row in rows[:3]] == ["2024-11-30", "2024-12-01", "2024-12-02"]


def test_monthly_kpis_have_exact_unique_customers_and_zeros(shop):
    rows = analytics.monthly(shop, MonthRange(date(2024, 11, 1), date(2025, 2, 1)))
    # December: O1, O2, O3, O4, O6, O8 = 1000 + 1000 + 800 + 500 + 500 + 1000 cents,
    # 2 + 1 + 4 + 5 + 1 + 1 items, users A, B, C, D (A, B and C ordered more than once).
    assert rows == [Kpis("2024-11", 1, 2000, 2, 1), Kpis("2024-12", 6, 4800, 14, 4),
                    Kpis("2025-01", 1, 1000, 1, 1), Kpis("2025-02", 0, 0, 0, 0)]
    assert [row.avg_order_cents for row in rows] == [2000, 800, 1000, 0]


def test_month_ranges_are_ordered_and_at_most_12_months(shop):
    with pytest.raises(RangeError, match="after the end") as backwards:
        MonthRange(date(2025, 1, 1), date(2024, 12, 1))
    assert backwards.value.end == "first"
    with pytest.raises(RangeError, match="at most 12 months") as too_long:
        MonthRange(date(2024, 1, 1), date(2025, 1, 1))
    assert too_long.value.end == "last"
    assert MonthRange(date(2025, 1, 15), date(2025, 1, 1)).months == 1  # a day stands for its month
    assert len(analytics.monthly(shop, MonthRange(date(9999, 1, 1), date(9999, 12, 31)))) == 12


def test_top_users_all_time_break_ties_by_user_id(shop):
    # Spend: A 1000 + 500 + 1000, B 2000 + 1000, C 800 + 1000, D 500.
    assert analytics.top_users(shop, 10, "spend") == [
        TopUser(1, "B", 3000, 2), TopUser(2, "A", 2500, 3), TopUser(3, "C", 1800, 2),
        TopUser(4, "D", 500, 1)]
    # Orders: A 3, then B and C with 2 each; the second place goes to B.
    assert analytics.top_users(shop, 2, "orders") == [TopUser(1, "A", 2500, 3),
                                                      TopUser(2, "B", 3000, 2)]
    assert analytics.top_users(shop, 1, "spend")[0].avg_order_cents == 1500
    assert TopUser(1, "A", 2500, 3).avg_order_cents == 833  # 833.33... rounds down


def test_top_users_of_a_day_count_that_day_only(shop):
    day = Period.of_day(date(2024, 12, 1))
    # C: O3 800 + O8 1000 (the late one); A and B 1000 each, A first by id.
    assert analytics.top_users(shop, 2, "spend", day) == [TopUser(1, "C", 1800, 2),
                                                          TopUser(2, "A", 1000, 1)]
    assert [u.user_id for u in analytics.top_users(shop, 3, "orders", day)] == ["C", "A", "B"]
    assert analytics.top_users(shop, 5, "spend", Period.of_day(date(2024, 12, 3))) == []


def test_top_users_of_a_month(shop):
    december = Period.of_month(date(2024, 12, 1))
    assert december == Period(date(2024, 12, 1), date(2024, 12, 31))
    # A: O1 1000 + O4 500; B: O2 1000 (O5 was in November); C 1800; D 500.
    assert analytics.top_users(shop, 10, "spend", december) == [
        TopUser(1, "C", 1800, 2), TopUser(2, "A", 1500, 2), TopUser(3, "B", 1000, 1),
        TopUser(4, "D", 500, 1)]
    assert [u.user_id for u in analytics.top_users(shop, 10, "orders", december)] == [
        "A", "C", "B", "D"]


@pytest.mark.parametrize("first, last, expected", [
    # Two days: B 2000 + 1000 (2 orders), C 1800 (2), A 1000 (1).
    ("2024-11-30", "2024-12-01", [TopUser(1, "B", 3000, 2), TopUser(2, "C", 1800, 2),
                                  TopUser(3, "A", 1000, 1)]),
    # Days of November, all of December, one day of January: everything.
    ("2024-11-15", "2025-01-01", [TopUser(1, "B", 3000, 2), TopUser(2, "A", 2500, 3),
                                  TopUser(3, "C", 1800, 2), TopUser(4, "D", 500, 1)]),
    # 12-02 .. 01-01: A 500 + 1000, D 500.
    ("2024-12-02", "2025-01-01", [TopUser(1, "A", 1500, 2), TopUser(2, "D", 500, 1)]),
])
def test_top_users_over_a_range_add_up_its_days(shop, first, last, expected):
    period = Period(date.fromisoformat(first), date.fromisoformat(last))
    assert analytics.top_users(shop, 10, "spend", period) == expected


def test_top_users_over_ranges_of_every_shard_equal_the_sums_of_their_orders(any_store):
    """Users in every shard, ranges of days, whole months and cut months: exact, ties too."""
    rng = random.Random(31)
    users = [f"U{u:03d}" for u in range(240)]
    assert len({any_store.user_shard(u) for u in users}) == any_store.shards
    placed, bodies = [], []
    for i in range(1200):
        user, day = rng.choice(users), date(2024, 11, 1) + timedelta(days=rng.randrange(61))
        quantity, cents = rng.randint(1, 3), rng.choice([P1, P2, P3])
        bodies.append(order(f"R{i:05d}", user, f"{day}T10:00:00Z", ("P1", quantity, cents)))
        placed.append((user, day, quantity * cents))
    for i in range(0, len(bodies), 100):
        apply(any_store, *bodies[i:i + 100])
    for first, last in [("2024-11-01", "2024-12-31"), ("2024-11-20", "2024-12-10"),
                        ("2024-12-03", "2024-12-04")]:
        period = Period(date.fromisoformat(first), date.fromisoformat(last))
        spend, count = Counter(), Counter()
        for user, day, cents in placed:
            if period.first <= day <= period.last:
                spend[user] += cents
                count[user] += 1
        for by, measure in (("spend", spend), ("orders", count)):
            expected = [(u, spend[u], count[u])
                        for u in sorted(measure, key=lambda u: (-measure[u], u))]
            for n in (1, 10, 100):
                got = analytics.top_users(any_store, n, by, period)
                assert [(u.user_id, u.spend_cents, u.order_count) for u in got] == expected[:n]


def test_top_users_over_a_range_break_ties_by_user_id(shop):
    period = Period(date(2024, 11, 30), date(2024, 12, 1))
    # Orders: B 2 (O5, O2) and C 2 (O3, O8) tie; A 1.
    assert [(u.user_id, u.order_count) for u in analytics.top_users(shop, 2, "orders", period)
            ] == [("B", 2), ("C", 2)]


def test_ties_follow_byte_order_of_ids_when_the_cut_falls_inside_them(store):
    ids = ["u3", "u10", "u2", "u1", "z", "é"]
    apply(store, *(order(f"O-{u}", u, "2024-12-01T10:00:00Z", ("P", 1, 700)) for u in ids))
    apply(store, order("O-big", "a-big", "2024-12-01T11:00:00Z", ("P", 1, 900)))
    # a-big first; then the six 700s by code point: u1 < u10 < u2 < u3 < z < é.
    expected = ["a-big", "u1", "u10", "u2", "u3", "z", "é"]
    for n in range(1, 8):
        for period in (None, Period.of_day(date(2024, 12, 1)),
                       Period(date(2024, 11, 30), date(2024, 12, 1))):
            ranked = analytics.top_users(store, n, "spend", period)
            assert [u.user_id for u in ranked] == expected[:n]
            assert [u.rank for u in ranked] == list(range(1, n + 1))


def test_top_products_rank_by_revenue_or_units(shop):
    # P1: O1 2 x 500, O3 1 x 500, O6 1 x 500; P2: O2, O5 (x2), O7, O8 at 1000;
    # P3: O3 3 x 100, O4 5 x 100.
    assert analytics.top_products(shop, 10, "revenue") == [
        TopProduct(1, "P2", 5000, 5), TopProduct(2, "P1", 2000, 4), TopProduct(3, "P3", 800, 8)]
    assert analytics.top_products(shop, 2, "units") == [
        TopProduct(1, "P3", 800, 8), TopProduct(2, "P2", 5000, 5)]


def products_of_day(bodies, day: date) -> list[TopProduct]:
    """The day's products by revenue, ties by id, worked out from the order bodies."""
    sales: dict[str, tuple[int, int]] = {}
    for order_id, body in {json.loads(b)["order_id"]: json.loads(b) for b in bodies}.items():
        if datetime.fromisoformat(body["order_timestamp"]).astimezone(timezone.utc).date() != day:
            continue
        for item in body["items"]:
            cents, units = sales.get(item["product_id"], (0, 0))
            sales[item["product_id"]] = (cents + round(item["price_per_unit"] * 100)
                                         * item["quantity"], units + item["quantity"])
    ranked = sorted(sales.items(), key=lambda entry: (-entry[1][0], entry[0]))
    return [TopProduct(rank, product_id, cents, units)
            for rank, (product_id, (cents, units)) in enumerate(ranked, start=1)]


def test_top_products_of_a_day_count_that_day_only_and_each_order_once(shop):
    # 12-01 holds O1, O2, O3 (its UTC day) and the late O8; O2 and O3 came twice.
    day = date(2024, 12, 1)
    expected = products_of_day([*ORDERS, LATE], day)
    assert [p.product_id for p in expected] == ["P2", "P1", "P3"]
    assert analytics.top_products(shop, 10, "revenue", day) == expected
    by_units = sorted(expected, key=lambda p: (-p.units_sold, p.product_id))
    assert analytics.top_products(shop, 2, "units", day) == [
        TopProduct(rank, p.product_id, p.revenue_cents, p.units_sold)
        for rank, p in enumerate(by_units[:2], start=1)]
    assert analytics.top_products(shop, 10, "revenue", date(2024, 12, 31)) == products_of_day(
        ORDERS, date(2024, 12, 31))
    assert analytics.top_products(shop, 5, "revenue", date(2024, 12, 3)) == []


def test_top_products_ties_go_to_the_smaller_id(store):
    apply(store, order("O1", "U", "2024-12-01T10:00:00Z", ("Pb", 1, 300), ("Pa", 3, 100),
                       ("Pc", 1, 300)))
    assert [p.product_id for p in analytics.top_products(store, 2, "revenue")] == ["Pa", "Pb"]
    assert [p.product_id for p in analytics.top_products(store, 3, "units")] == [
        "Pa", "Pb", "Pc"]


def test_product_stats(shop):
    assert analytics.product_stats(shop, "P1") == analytics.ProductStats("P1", 4, 2000, 3)
    assert analytics.product_stats(shop, "P2") == analytics.ProductStats("P2", 5, 5000, 4)
    assert analytics.product_stats(shop, "nope") is None


def test_user_period_lists_every_day_with_zeros(shop):
    stats = analytics.user_period(shop, "A", Period(date(2024, 11, 30), date(2024, 12, 2)))
    assert stats.days == (UserDay(date(2024, 11, 30), 0, 0), UserDay(date(2024, 12, 1), 1, 1000),
                          UserDay(date(2024, 12, 2), 1, 500))
    assert (stats.order_count, stats.total_spend_cents, stats.avg_order_cents) == (2, 1500, 750)
    late = analytics.user_period(shop, "C", Period.of_day(date(2024, 12, 1)))
    assert (late.order_count, late.total_spend_cents) == (2, 1800)
    quiet = analytics.user_period(shop, "D", Period(date(2024, 12, 1), date(2024, 12, 2)))
    assert (quiet.order_count, quiet.total_spend_cents, quiet.avg_order_cents) == (0, 0, 0)
    assert analytics.user_period(shop, "nobody", Period.of_day(date(2024, 12, 1))) is None


def test_user_summary_has_first_and_last_order_times(shop):
    a = analytics.user_summary(shop, "A")
    assert (a.order_count, a.total_spend_cents, a.avg_order_cents) == (3, 2500, 833)
    assert a.first_order_at == datetime(2024, 12, 1, 9, tzinfo=timezone.utc)
    assert a.last_order_at == datetime(2025, 1, 1, 0, 30, tzinfo=timezone.utc)
    # The late O8 (12:00) is earlier than O3 (23:59:59) on the same day.
    c = analytics.user_summary(shop, "C")
    assert c.first_order_at == datetime(2024, 12, 1, 12, tzinfo=timezone.utc)
    assert c.last_order_at == datetime(2024, 12, 1, 23, 59, 59, tzinfo=timezone.utc)
    assert analytics.user_summary(shop, "nobody") is None


@pytest.mark.parametrize("first, last", [("2024-12-02", "2024-12-01"),
                                         ("2024-01-01", "2025-01-01")])
def test_a_period_is_ordered_and_at_most_366_days(first, last):
    with pytest.raises(RangeError) as refused:
        Period(date.fromisoformat(first), date.fromisoformat(last))
    assert refused.value.end == ("first" if first > last else "last")


def test_a_leap_year_is_a_valid_period():
    assert Period(date(2024, 1, 1), date(2024, 12, 31)).days == 366


@pytest.mark.parametrize("first, last, buckets", [
    ("2024-12-01", "2024-12-31", [("", "2024-12")]),
    ("2024-12-30", "2025-01-02", [("2024-12-30", ""), ("2024-12-31", ""), ("2025-01-01", ""),
                                  ("2025-01-02", "")]),
    ("2024-11-30", "2025-01-31", [("2024-11-30", ""), ("", "2024-12"), ("", "2025-01")]),
    ("9999-12-01", "9999-12-31", [("", "9999-12")]),
])
def test_a_period_is_covered_by_whole_months_and_single_days(first, last, buckets):
    assert Period(date.fromisoformat(first), date.fromisoformat(last)).buckets() == buckets


@pytest.mark.parametrize("n", [0, 101])
def test_rankings_are_between_1_and_100_long(store, n):
    with pytest.raises(ValueError):
        analytics.top_users(store, n)
    with pytest.raises(ValueError):
        analytics.top_products(store, n)


def test_a_key_of_the_wrong_type_for_the_new_aggregates_fails_the_batch_first(store):
    month = month_key("2024-12", store.user_shard("A"))
    store.redis.set(month, "corrupted")
    with pytest.raises(Exception, match=re.escape(f"WRONGTYPE {month}")):
        apply(store, ORDERS[0])
    assert store.global_stats().total_orders == 0
    assert not store.redis.exists(top_users_key("spend", day="2024-12-01",
                                                shard=store.user_shard("A")))
    assert not store.redis.exists(user_days_key("A"))


def command_calls(store) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (script calls included)."""
    return {name.removeprefix("cmdstat_"): stats["calls"]
            for name, stats in store.redis.info("commandstats").items()}


def test_an_order_batch_is_one_round_trip_and_queries_never_scan(shop):
    if shop.cluster:
        pytest.skip("counts the calls of one standalone server")
    shards = shop.shards
    shop.redis.config_resetstat()
    apply(shop, order("O9", "E", "2024-12-05T10:00:00Z", ("P1", 1, P1)),
          order("O10", "F", "2024-12-06T10:00:00Z", ("P1", 1, P1)))
    assert command_calls(shop)["evalsha"] == 1

    shop.redis.config_resetstat()
    analytics.top_users(shop, 10, "spend")
    analytics.top_users(shop, 10, "orders", Period.of_day(date(2024, 12, 1)))
    analytics.top_users(shop, 10, "spend", Period.of_month(date(2024, 12, 1)))
    analytics.top_products(shop, 10, "units")
    calls = command_calls(shop)
    # A single bucket is read by rank (ZREVRANGE) in each shard, never by adding sets up,
    # through the ranking function (FCALL_RO: the API's user runs no script of its own).
    assert calls["fcall_ro"] == 4 * shards and calls["zrevrange"] == 4 * shards
    assert "zunionstore" not in calls

    shop.redis.config_resetstat()
    analytics.top_users(shop, 10, "spend", Period(date(2024, 1, 1), date(2024, 12, 31)))
    analytics.daily(shop, Period(date(2024, 1, 1), date(2024, 12, 31)))
    analytics.user_period(shop, "A", Period(date(2024, 1, 1), date(2024, 12, 31)))
    calls = command_calls(shop)
    # Each shard's 12 months are read a page each (each shorter than a page: read to the
    # end), then their second measure looked up; nothing is added up or written in Redis.
    assert calls["zrevrange"] == 12 * shards and calls["zmscore"] <= 12 * shards
    assert calls["hmget"] == 366 * shards + 1
    assert not {"zunionstore", "unlink", "evalsha", "fcall_ro"} & set(calls)
    assert not {"keys", "scan", "hgetall", "smembers", "zrange"} & set(calls)
