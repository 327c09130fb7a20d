"""The data of make bench's range rankings: a year of per-day and per-month top-users
sorted sets from customers with Pareto activity, in the shards a layout gives them."""
from __future__ import annotations

import itertools
import random
import statistics
import time
from collections import Counter
from datetime import date, timedelta

import redis

from app.analytics import Period, month_end, month_text
from app.store import top_users_key
from bench.redis_meter import used_memory

FIRST_DAY = date(2024, 1, 1)
# Customer activity: Pareto weights, capped so no one orders more than ~100x the typical.
PARETO_ALPHA, WEIGHT_CAP = 1.5, 100.0
# Order values: lognormal cents, median e^8.3 ~ $40.
VALUE_MU, VALUE_SIGMA = 8.3, 0.9
ZADD_CHUNK = 1000


def _zadd(pipe, by: str, totals: Counter, shard_of, **bucket):
    """ZADDs of the totals into top_users_key(by, **bucket) of each user's shard."""
    by_shard: dict[int, list] = {}
    for user, total in totals.items():
        by_shard.setdefault(shard_of(user), []).append((user, total))
    for shard, items in by_shard.items():
        key = top_users_key(by, shard=shard, **bucket)
        for i in range(0, len(items), ZADD_CHUNK):
            pipe.zadd(key, dict(items[i:i + ZADD_CHUNK]))


def fill(client: redis.Redis, orders_per_day: int, days: int, users: int, shard_of,
         seed: int = 5) -> dict:
    """Write the day and month rankings of the generated orders, each user's in the shard
    shard_of(user_id); figures about them (the same orders for the same arguments)."""
    rng = random.Random(seed)
    ids = [f"U{u:07d}" for u in range(users)]
    weights = itertools.accumulate(min(rng.paretovariate(PARETO_ALPHA), WEIGHT_CAP)
                                   for _ in range(users))
    cumulative = list(weights)
    year_orders: Counter = Counter()
    day_users = []
    month_spend: Counter = Counter()
    month_orders: Counter = Counter()
    month = None
    started = time.monotonic()
    for offset in range(days):
        day = FIRST_DAY + timedelta(days=offset)
        if month and month_text(day) != month:
            pipe = client.pipeline(transaction=False)
            _zadd(pipe, "spend", month_spend, shard_of, month=month)
            _zadd(pipe, "orders", month_orders, shard_of, month=month)
            pipe.execute()
            month_spend, month_orders = Counter(), Counter()
        month = month_text(day)
        spend: Counter = Counter()
        picks = [ids[u] for u in rng.choices(range(users), cum_weights=cumulative,
                                             k=orders_per_day)]
        for user in picks:
            spend[user] += int(rng.lognormvariate(VALUE_MU, VALUE_SIGMA)) + 1
        count = Counter(picks)
        pipe = client.pipeline(transaction=False)
        _zadd(pipe, "spend", spend, shard_of, day=day.isoformat())
        _zadd(pipe, "orders", count, shard_of, day=day.isoformat())
        pipe.execute()
        month_spend.update(spend)
        month_orders.update(count)
        year_orders.update(count)
        day_users.append(len(count))
    pipe = client.pipeline(transaction=False)
    _zadd(pipe, "spend", month_spend, shard_of, month=month)
    _zadd(pipe, "orders", month_orders, shard_of, month=month)
    pipe.execute()
    per_user = sorted(year_orders.values(), reverse=True)
    return {"orders_per_day": orders_per_day, "days": days, "customer_base": users,
            "orders": orders_per_day * days, "users_with_orders": len(year_orders),
            "users_per_day": round(statistics.mean(day_users)),
            "most_orders_by_one_user": per_user[0],
            "median_orders_per_user": statistics.median(per_user),
            "orders_by_top_10pct_users": round(sum(per_user[:len(per_user) // 10])
                                               / sum(per_user), 3),
            "fill_seconds": round(time.monotonic() - started, 1),
            "used_memory_mb": round(used_memory(client) / 2**20)}


def describe(data: dict, fills: dict) -> str:
    """The data set in one sentence, for the table (fills: each layout's memory)."""
    return (f"{data['orders']:,} orders ({data['orders_per_day']:,} a day over {data['days']} "
            f"days) from a base of {data['customer_base']:,} customers with Pareto(α="
            f"{PARETO_ALPHA:g}) activity capped at {WEIGHT_CAP:g}× (user reuse: "
            f"{data['users_with_orders']:,} users ordered, the top 10% placed "
            f"{data['orders_by_top_10pct_users']:.0%} of the orders, median "
            f"{data['median_orders_per_user']:g} orders a user, most "
            f"{data['most_orders_by_one_user']:,}; {data['users_per_day']:,} users a day); "
            f"order value lognormal, median ~$40; Redis used "
            + ", ".join(f"{fill['used_memory_mb']:,} MiB {layout}"
                        for layout, fill in fills.items()))


def periods(days: int) -> list[tuple[str, Period]]:
    """A year (the whole span), its last 3 whole months, and 3 months cut mid-month."""
    last = FIRST_DAY + timedelta(days=days - 1)
    starts = [d for d in Period(FIRST_DAY, last).each_day()
              if d.day == 1 and month_end(d) <= last]
    whole = (Period(starts[-3], month_end(starts[-1])) if len(starts) >= 3
             else Period(max(FIRST_DAY, last - timedelta(days=90)), last))
    cut_last = max(FIRST_DAY, last - timedelta(days=15))
    cut = Period(max(FIRST_DAY, cut_last - timedelta(days=90)), cut_last)
    return [("a year", Period(FIRST_DAY, last)), ("3 whole months", whole),
            ("3 months cut mid-month", cut)]
