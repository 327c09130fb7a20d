"""Redis memory per user and per order-day, measured at 100,000 users (not a test).

Fills a throwaway redis-server through Store.apply, the workers' own atomic path, in
four rounds of one order per user, and prints used_memory deltas as Markdown:

    round  orders on    what each order adds
    A      2024-12-01   a new user, a new day, a new month
    B      2024-12-02   a new day for the user, same month
    C      2024-12-02   nothing new but the order
    D      2025-01-01   a new day and a new month

so a user costs A - D, an order-day B - C, a user-month D - B and an order C. The dedup
window's share of an order (its claim and its parts' applied markers, which expire after
DEDUP_WINDOW_DAYS) is measured by deleting them at the end, as their expiry would.
The keyspace's own table doubles at powers of two, a jump that would land on whichever
round crosses one: its growth is taken out of each delta and every key added is charged
the table's final average bytes per key instead.
Run with the project's venv from the checkout: python -m bench.memory [--users N]
[--cluster] (a local Redis Cluster of 3 primaries, memory summed over them).
"""
from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from app.orders import Evaluated, Incoming, Line, Order
from app.store import Store
from bench.redis_meter import used_memory
from stack.cluster import LocalRedisCluster
from stack.services import RedisServer, free_port

ROUNDS = [("A", datetime(2024, 12, 1, 10, tzinfo=timezone.utc)),
          ("B", datetime(2024, 12, 2, 10, tzinfo=timezone.utc)),
          ("C", datetime(2024, 12, 2, 15, tzinfo=timezone.utc)),
          ("D", datetime(2025, 1, 1, 10, tzinfo=timezone.utc))]
PRODUCTS = 1000


def orders_of_round(name: str, placed_at: datetime, users: int, rng: random.Random):
    """One order per user, 1 to 3 lines from the catalogue, as the pipeline evaluates it."""
    for u in range(users):
        lines = tuple(Line(f"P{rng.randrange(PRODUCTS):04d}", q, q * rng.randint(100, 9999))
                      for q in (rng.randint(1, 3) for _ in range(rng.randint(1, 3))))
        order = Order(order_id=f"O{name}{u:06d}", user_id=f"U{u:06d}", placed_at=placed_at,
                      value_cents=sum(line.line_cents for line in lines), lines=lines)
        yield Evaluated(Incoming("", order.order_id), order=order)


def measure(store: Store) -> tuple[int, int, int]:
    """used_memory, the keyspace table's bytes, the number of keys (summed over primaries)."""
    nodes = ([store.redis.get_redis_connection(n) for n in store.redis.get_primaries()]
             if store.cluster else [store.redis])
    used = table = keys = 0
    for node in nodes:
        stats = node.memory_stats()
        used += used_memory(node)
        table += stats.get("db.0", {}).get("overhead.hashtable.main", 0)
        keys += node.dbsize()
    return used, table, keys


# What expires with the dedup window: claims and the parts' applied markers.
WINDOW_KEYS = ("order:*", "applied:*")


def window_bytes(store: Store) -> int:
    """MEMORY USAGE of the claims and markers (a SCAN: fine in a benchmark)."""
    total = 0
    for pattern in WINDOW_KEYS:
        keys = list(store.redis.scan_iter(pattern, count=5000))
        for start in range(0, len(keys), 2000):
            pipe = store.redis.pipeline(transaction=False)
            for key in keys[start:start + 2000]:
                pipe.memory_usage(key, samples=0)
            total += sum(size or 0 for size in pipe.execute())
    return total


def expire_window(store: Store) -> None:
    """Delete what DEDUP_WINDOW_DAYS would expire (a SCAN: fine in a benchmark)."""
    for pattern in WINDOW_KEYS:
        keys = list(store.redis.scan_iter(pattern, count=5000))
        for key in keys:
            store.redis.unlink(key)


def fill(store: Store, name: str, placed_at: datetime, users: int, batch: int,
         rng: random.Random) -> tuple[int, int, int]:
    """Count one round; return the measures after it."""
    pending = []
    for evaluated in orders_of_round(name, placed_at, users, rng):
        pending.append(evaluated)
        if len(pending) == batch:
            assert set(store.apply(pending)) == {"counted"}
            pending = []
    if pending:
        assert set(store.apply(pending)) == {"counted"}
    return measure(store)


FAMILIES = [  # (prefix of the key without its hash tag, label), longest prefixes first
    ("top:users:spend:day:", "top:users:spend:{s<k>}:day:<d>"),
    ("top:users:orders:day:", "top:users:orders:{s<k>}:day:<d>"),
    ("top:users:spend:month:", "top:users:spend:{s<k>}:month:<m>"),
    ("top:users:orders:month:", "top:users:orders:{s<k>}:month:<m>"),
    ("top:", "top:users:*, top:products:* (all-time, per shard)"),
    ("user-days:", "user-days:{u:<id>}"),
    ("user:", "user:{u:<id>}"),
    ("order:", "order:{o:<id>} claims (window)"),
    ("applied:users:", "applied:users:{s<k>} markers (window)"),
    ("applied:products:", "applied:products:{s<k>} markers (window)"),
    ("applied:", "applied:{u:<id>} markers (window)"),
    ("product:", "product:{s<k>}:<id>"),
    ("month:", "month:{s<k>}:<m>"),
    ("day:", "day:{s<k>}:<d>, its :customers"),
]
HASH_TAG = re.compile(r"\{[^}]*\}:?")


def by_family(store: Store) -> dict[str, int]:
    """MEMORY USAGE summed per key family (a SCAN: fine in a benchmark, never on a request)."""
    totals: dict[str, int] = defaultdict(int)
    keys = list(store.redis.scan_iter(count=5000))
    for start in range(0, len(keys), 2000):
        chunk = keys[start:start + 2000]
        pipe = store.redis.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(chunk, pipe.execute()):
            bare = HASH_TAG.sub("", key, count=1)
            label = next((lbl for prefix, lbl in FAMILIES if bare.startswith(prefix)), "other")
            totals[label] += size or 0
    return totals


def main(argv=None):
    """Fill, measure, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500, help="orders per Store.apply")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cluster", action="store_true", help="on a local 3-primary cluster")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    if args.cluster:
        server = LocalRedisCluster(primaries=3, log_dir=Path(tempfile.mkdtemp())).start()
    else:
        server = RedisServer(free_port(), name="bench-redis").start()
    try:
        store = Store.from_url(server.url)
        version = store.redis.info("server")["redis_version"]
        after = {"start": measure(store)}
        started = time.monotonic()
        window = {}
        for name, placed_at in ROUNDS:
            after[name] = fill(store, name, placed_at, args.users, args.batch, rng)
            if name in "BC":
                window[name] = window_bytes(store)
        elapsed = time.monotonic() - started
        n = args.users
        used_end, table_end, keys_end = after["D"]
        per_key = table_end / keys_end
        delta = {}
        for name, prev in zip("ABCD", ["start", "A", "B", "C"]):
            (used1, table1, keys1), (used0, table0, keys0) = after[name], after[prev]
            delta[name] = (used1 - used0) - (table1 - table0) + (keys1 - keys0) * per_key
        rows = [
            ("per user (A - D): user hash, all-time rankings, first user-days entry",
             delta["A"] - delta["D"]),
            ("per order-day (B - C): day customers, 2 day rankings, user-days field",
             delta["B"] - delta["C"]),
            ("per user-month (D - B): 2 month rankings", delta["D"] - delta["B"]),
            ("per order (C), within the window: its claim and applied markers included",
             delta["C"]),
            ("first order of a new user (A)", delta["A"]),
        ]
        print(f"Redis {version}, {n:,} users, {4 * n:,} orders through Store.apply "
              f"in {elapsed:.0f} s; used_memory deltas, bytes per item:\n")
        print("| measure | bytes |\n| --- | ---: |")
        for label, total in rows:
            print(f"| {label} | {total / n:.0f} |")
        print(f"| keyspace table, per key (included above) | {per_key:.0f} |")
        print(f"| total used_memory after the four rounds | {used_end:,} |")
        families = by_family(store)
        marker_c = (window["C"] - window["B"]) / n
        print(f"| of which the claim and markers of the order (C, MEMORY USAGE) | {marker_c:.0f} |")
        print(f"| per order (C) once the window expired it | {delta['C'] / n - marker_c:.0f} |")
        expire_window(store)
        used_after, table_after, keys_after = measure(store)
        freed = ((used_end - used_after) - (table_end - table_after)
                 + (keys_end - keys_after) * per_key) / (4 * n)
        print(f"| freed by the window's expiry, per order of the four rounds | {freed:.0f} |")
        print("\nMEMORY USAGE by key family after the four rounds "
              f"({n:,} users, 3 order-days and 2 months each):\n")
        print("| keys | bytes | per user |\n| --- | ---: | ---: |")
        for label, total in sorted(families.items(), key=lambda item: -item[1]):
            print(f"| {label} | {total:,} | {total / n:.0f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
