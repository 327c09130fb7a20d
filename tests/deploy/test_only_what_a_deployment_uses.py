"""Workers consume only the queues their deployment has: orders without any files
resources, files on workers of their own (`-Q`), and a missing queue named in one line.

Real worker processes on the session's LocalStack; the queues each test creates are the
only ones its settings name.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from app import aws, sqs
from app.files import kpis
from app.files.contract import ORDER_ITEMS, ORDERS, PRODUCTS
from app.settings import Settings, to_env
from app.store import FilesStore
from bench.order_builders import make_orders
from files_oracle import by_key, csv_of, expected_kpis, make_rows
from stack.launch import SCRIPTS, files_queues, orders_queues
from stack.services import PROJECT_ROOT, wait_for

KPI_RANGE = ("2024-01-01", "2024-01-31")


def orders_only(settings: Settings) -> Settings:
    """The test's settings with a files queue that exists nowhere (its orders queues do)."""
    return replace(settings, files_queue=f"absent-{uuid.uuid4().hex[:12]}")


def run_worker(settings: Settings, *options: str, **env: str) -> subprocess.CompletedProcess:
    """A real `celery -A tasks worker` on settings, expected to exit by itself."""
    return subprocess.run([str(SCRIPTS / "celery"), "-A", "tasks", "worker", "--pool", "solo",
                           *options], cwd=PROJECT_ROOT,
                          env={**os.environ, **to_env(settings), **env},
                          capture_output=True, text=True, timeout=90)


def refusal(finished: subprocess.CompletedProcess) -> str:
    """The one 'worker not started' line of a worker that exited, with no traceback."""
    assert finished.returncode != 0, finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]
    [line] = [line for line in finished.stderr.splitlines() if "worker not started" in line]
    return line


def test_a_worker_whose_files_queue_is_missing_stops_with_one_line_naming_it(settings):
    missing = orders_only(settings)
    line = refusal(run_worker(missing))
    for words in (f"queue {missing.files_queue}", "does not exist", "python -m stack.init_files",
                  "FILES_ENABLED=false"):
        assert words in line, line


def test_a_worker_whose_orders_queue_is_missing_stops_with_one_line_naming_it(settings):
    missing = replace(settings, orders_queue=f"absent-{uuid.uuid4().hex[:12]}")
    line = refusal(run_worker(missing))
    for words in (f"queue {missing.orders_queue}", "does not exist",
                  "python -m stack.init_queues"):
        assert words in line, line


def send_orders(settings: Settings, count: int, prefix: str) -> Decimal:
    """count sample orders on the orders queue; their revenue."""
    orders = make_orders(prefix, count, users=5, rng=random.Random(count))
    failed = []
    for batch in sqs.chunks(orders):
        failed += sqs.send_bodies(sqs.client(settings), settings.orders_url,
                                  [json.dumps(body) for body, _ in batch])
    assert not failed
    return sum((value for _, value in orders), Decimal(0))


def assert_counted(store, count: int, revenue: Decimal):
    wait_for(lambda: store.outcomes()["counted"] >= count, timeout=90,
             message=f"{count} orders counted")
    totals = store.global_stats()
    assert (totals.total_orders, Decimal(totals.total_revenue_cents) / 100) == (count, revenue)


def test_without_the_files_path_a_worker_counts_orders_where_no_files_queue_exists(
        settings, start_worker, store):
    orders_alone = replace(orders_only(settings), files_enabled=False)
    worker = start_worker(settings=orders_alone)
    assert_counted(store, 30, send_orders(orders_alone, 30, "NF"))
    assert orders_alone.files_queue not in worker.log_path.read_text()


def consumed(worker) -> list[str]:
    """The queues a worker's start banner lists (`.> NAME exchange=...`)."""
    return [line.split()[1] for line in worker.log_path.read_text().splitlines()
            if line.lstrip().startswith(".> ")]


def maps_polars(pid: int) -> bool:
    """Whether the process has polars' native library mapped (it imported polars)."""
    return "polars" in Path(f"/proc/{pid}/maps").read_text()


def test_orders_and_files_workers_each_consume_only_their_own_queue(
        files_settings, start_worker, store):
    settings = files_settings
    orders_worker = start_worker(settings=settings, name="orders", queues=orders_queues(settings))
    files_worker = start_worker(settings=settings, name="files", queues=files_queues(settings))
    assert consumed(orders_worker) == [settings.orders_queue]
    assert consumed(files_worker) == [settings.files_queue]

    products, orders, items = make_rows(random.Random(8), orders=30)
    s3 = aws.s3_client(settings)
    for name, data in {"products.csv": csv_of(PRODUCTS, products),
                       "orders_part1.csv": csv_of(ORDERS, orders),
                       "order_items_part1.csv": csv_of(ORDER_ITEMS, items)}.items():
        s3.put_object(Bucket=settings.files_bucket, Key=f"{aws.INPUT}{name}", Body=data)
    assert_counted(store, 20, send_orders(settings, 20, "SPLIT"))
    expected = expected_kpis(by_key(PRODUCTS, products), by_key(ORDERS, orders),
                             by_key(ORDER_ITEMS, items))
    files = FilesStore.from_url(settings.redis_url)
    wait_for(lambda: [kpis.order_kpi_answer(kpis.OrderKpi(**row))
                      for row in files.order_kpis(*KPI_RANGE)] == expected[0], timeout=180,
             message="the files' KPIs")
    # The file steps ran in the files worker's pool; polars never loaded in the orders one.
    assert not any(maps_polars(pid) for pid in orders_worker.service.members())
    assert any(maps_polars(pid) for pid in files_worker.service.members())
