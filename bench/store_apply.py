"""Redis time of the batch script per order, in one process (not a test).

Applies 20,000 sample-like orders (conftest's make_orders: up to 4 lines over 30
products, 2,000 users) through Store.apply in batches of ten on a throwaway
redis-server, and prints orders/s, EVALSHA microseconds per batch (INFO commandstats)
and Redis commands per order. Run it on two checkouts to compare their scripts:
PYTHONPATH=. .venv/bin/python -m bench.store_apply
"""
from __future__ import annotations

import json
import random
import time

from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import Store
from stack.services import RedisServer, free_port
from tests.conftest import make_orders

ORDERS, BATCH = 20_000, 10


def main():
    orders = make_orders("B", ORDERS, users=2000, rng=random.Random(1))
    evaluated = [evaluate(Incoming(json.dumps(body), f"m{i}"), Settings())
                 for i, (body, _) in enumerate(orders)]
    with RedisServer(free_port()) as server:
        store = Store.from_url(server.url)
        start = time.perf_counter()
        for i in range(0, len(evaluated), BATCH):
            store.apply(evaluated[i:i + BATCH])
        took = time.perf_counter() - start
        stats = store.redis.info("commandstats")
    commands = sum(entry["calls"] for entry in stats.values())
    print(f"{len(evaluated) / took:.0f} orders/s; EVALSHA "
          f"{stats['cmdstat_evalsha']['usec_per_call']:.0f} µs per batch of {BATCH}; "
          f"{commands / len(evaluated):.1f} Redis commands per order")


if __name__ == "__main__":
    main()
