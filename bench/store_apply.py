"""Redis time of the batch script per order, in one process (not a test).

Applies 20,000 sample-like orders (bench/order_builders.py make_orders: up to 4 lines over
30 products, 2,000 users) through Store.apply in batches of ten on a throwaway
redis-server, and prints orders/s, EVALSHA microseconds per batch (INFO commandstats),
Redis commands per order (and by command), redis-server CPU per order (INFO
used_cpu_user + used_cpu_sys) and this process's CPU per batch (building and sending the
calls). Run it on two checkouts to compare their scripts:
PYTHONPATH=. .venv/bin/python -m bench.store_apply
"""
from __future__ import annotations

import json
import random
import time

from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import Store
from bench.order_builders import make_orders
from bench.redis_meter import command_stats, used_cpu
from stack.services import RedisServer, free_port

ORDERS, BATCH = 20_000, 10


def main():
    orders = make_orders("B", ORDERS, users=2000, rng=random.Random(1))
    evaluated = [evaluate(Incoming(json.dumps(body), f"m{i}"), Settings())
                 for i, (body, _) in enumerate(orders)]
    with RedisServer(free_port()) as server:
        store = Store.from_url(server.url)
        redis_cpu = used_cpu(store.redis)
        start, client_cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(evaluated), BATCH):
            store.apply(evaluated[i:i + BATCH])
        took, client_cpu = time.perf_counter() - start, time.process_time() - client_cpu
        redis_cpu = used_cpu(store.redis) - redis_cpu
        stats = command_stats(store.redis)
    commands = sum(entry["calls"] for entry in stats.values())
    batches = -(-len(evaluated) // BATCH)
    print(f"{len(evaluated) / took:.0f} orders/s; EVALSHA "
          f"{stats['evalsha']['usec_per_call']:.0f} µs per batch of {BATCH}; "
          f"{commands / len(evaluated):.1f} Redis commands per order; redis-server "
          f"{redis_cpu * 1000 / len(evaluated):.3f} ms CPU per order; client "
          f"{client_cpu * 1e6 / batches:.0f} µs CPU per batch")
    by_command = sorted(((entry["calls"], name.upper())
                         for name, entry in stats.items()), reverse=True)
    print("per order: " + ", ".join(f"{name} {calls / len(evaluated):.1f}"
                                    for calls, name in by_command if calls >= len(evaluated) / 100))


if __name__ == "__main__":
    main()
