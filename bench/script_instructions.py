"""Instructions redis-server executes per order of Store.apply, under callgrind (not a test).

CPU time on shared cores varies by tens of percent from run to run; an instruction count
does not. Warms a redis-server run under valgrind with 2,000 orders, then counts the
instructions of the next N (default 1,000) orders of bench/order_builders.py make_orders,
in batches of ten. Run it on two checkouts to compare their scripts (needs valgrind):
PYTHONPATH=. .venv/bin/python -m bench.script_instructions [N]
"""
from __future__ import annotations

import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import redis

from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import Store
from bench.order_builders import make_orders
from stack.services import free_port

WARM, BATCH = 2000, 10


def _evaluated(prefix: str, count: int, seed: int):
    return [evaluate(Incoming(json.dumps(body), f"{prefix}{i}"), Settings())
            for i, (body, _) in enumerate(make_orders(prefix, count, users=2000,
                                                       rng=random.Random(seed)))]


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    warm, measured = _evaluated("W", WARM, 2), _evaluated("B", count, 1)
    port, out = free_port(), tempfile.mkdtemp(prefix="callgrind.")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/out.%p", "redis-server",
         "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        store = Store.from_url(f"redis://localhost:{port}", socket_timeout=60)
        for _ in range(300):
            try:
                store.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.2)
        for i in range(0, WARM, BATCH):
            store.apply(warm[i:i + BATCH])
        control = ["callgrind_control", str(server.pid)]
        subprocess.run(control[:1] + ["--zero"] + control[1:], check=True, capture_output=True)
        for i in range(0, count, BATCH):
            store.apply(measured[i:i + BATCH])
        subprocess.run(control[:1] + ["--dump"] + control[1:], check=True, capture_output=True)
        store.redis.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the shutdown closes the connection
    finally:
        server.wait(timeout=120)
    dumped = []
    for path in glob.glob(f"{out}/out.*"):
        with open(path) as f:
            text = f.read()
        if "Trigger: Program termination" not in text:  # the --dump, not the exit's
            dumped += [int(line.split()[1]) for line in text.splitlines()
                       if line.startswith(("summary:", "totals:"))]
        os.remove(path)
    os.rmdir(out)
    print(f"{max(dumped) / count:,.0f} redis-server instructions per order")


if __name__ == "__main__":
    main()
