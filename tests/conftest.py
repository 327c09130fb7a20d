"""Session-wide real services (redis-server, LocalStack SQS) and per-test settings."""
from __future__ import annotations

import os
import random
import signal
import sys
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from app import aws, sqs
from app.settings import Settings, to_env
from app.store import Store
from stack.services import Process, RedisServer, SqsServer, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free port for the whole session."""
    server = RedisServer(free_port(), log_dir=tmp_path_factory.mktemp("redis-log"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sqs_server(tmp_path_factory):
    """LocalStack's SQS on a free port for the whole session."""
    server = SqsServer(free_port(), data_dir=tmp_path_factory.mktemp("sqs"),
                       log_dir=tmp_path_factory.mktemp("sqs-log"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server, sqs_server, request) -> Settings:
    """Settings on the session's servers with a fresh queue pair and an empty Redis db."""
    name = f"t-{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)
    settings = Settings(redis_url=redis_server.url, sqs_endpoint_url=sqs_server.endpoint_url,
                        orders_queue=name, max_receive_count=3, failure_backoff=1,
                        visibility_timeout=30, retry_backoff_max=4,
                        files_queue=f"{name}-files", files_batch_window=2)
    Store.from_url(settings.redis_url).redis.flushdb()
    sqs.ensure_queues(settings)
    aws.ensure_files_queue(settings)  # workers consume it too
    return settings


@pytest.fixture
def files_settings(settings) -> Settings:
    """Settings with a fresh files bucket, events queue (+ DLQ) and topics on LocalStack."""
    files = replace(settings, files_bucket=f"files-{uuid.uuid4().hex[:12]}")
    aws.ensure_files_resources(files)
    return files


@pytest.fixture
def store(settings) -> Store:
    """The Redis gateway on the test's database."""
    return Store.from_url(settings.redis_url)


@pytest.fixture
def sqs_client(settings):
    """A boto3 SQS client on the test server."""
    return sqs.client(settings)


class Worker:
    """A real `celery -A tasks worker` process with the test's settings."""

    def __init__(self, settings: Settings, log_dir: Path, concurrency: int = 2, name: str = "w1"):
        self.settings = settings
        command = [BIN / "celery", "-A", "tasks", "worker", "--loglevel", "INFO",
                   "--concurrency", str(concurrency), "-n", f"{name}@%h"]
        env = {**os.environ, **to_env(settings), "PYTHONUNBUFFERED": "1"}
        self.service = Process(f"worker-{name}", command, env=env, log_dir=log_dir, cwd=ROOT)
        self.log_path = self.service.log_path

    @property
    def process(self):
        """The worker's Popen (poll() tells whether it still runs)."""
        return self.service.popen

    def start(self, timeout: float = 60) -> "Worker":
        """Start the worker and wait until it says it is ready."""
        already = self.log_path.read_bytes().count(b" ready.") if self.log_path.exists() else 0
        self.service.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_path.read_bytes().count(b" ready.") > already:
                return self
            if not self.service.running:
                break
            time.sleep(0.2)
        raise RuntimeError(f"worker did not start:\n{self.tail()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30):
        """Stop the worker and its pool (warm shutdown by default) and wait for them."""
        self.service.stop(timeout=timeout, signum=sig)

    def tail(self, lines: int = 60) -> str:
        """The end of the worker's log."""
        return self.service.log_tail(lines)


@pytest.fixture
def start_worker(settings, tmp_path):
    """Factory starting real workers; every one is stopped at the end of the test."""
    workers = []

    def start(**options) -> Worker:
        worker = Worker(options.pop("settings", settings), tmp_path, **options)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def api_server(settings, tmp_path):
    """The API under real gunicorn, on a free port; yields its base URL."""
    port = free_port()
    api_settings = replace(settings, api_bind=f"127.0.0.1:{port}", api_workers=2)
    gunicorn = Process("gunicorn", [BIN / "gunicorn", "-c", "web/gunicorn.conf.py",
                                    "web:create_app()"],
                       env={**os.environ, **to_env(api_settings)}, log_dir=tmp_path, cwd=ROOT)
    gunicorn.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base}/stats/global", timeout=5)
                break
            except requests.RequestException:
                if not gunicorn.running or time.monotonic() > deadline:
                    raise RuntimeError(gunicorn.log_tail()) from None
                time.sleep(0.2)
        yield base
    finally:
        gunicorn.stop(timeout=15)


def wait_for(condition, timeout: float = 60, interval: float = 0.25, message: str = ""):
    """Poll until condition() is truthy; fail with message after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")


def make_orders(prefix: str, count: int, users: int, rng: random.Random):
    """Valid orders as (body dict, exact Decimal value); order_value equals the item sum."""
    orders = []
    for i in range(count):
        items = [{"product_id": f"P{rng.randint(1, 30):03d}", "quantity": rng.randint(1, 4),
                  "price_per_unit": float(Decimal(rng.randint(1, 50000)) / 100)}
                 for _ in range(rng.randint(1, 4))]
        value = sum(Decimal(str(item["price_per_unit"])) * item["quantity"] for item in items)
        orders.append(({"order_id": f"{prefix}{i:05d}", "user_id": f"U{rng.randint(1, users):03d}",
                        "order_timestamp": f"2024-12-{rng.randint(1, 28):02d}T10:00:00Z",
                        "order_value": float(value), "items": items,
                        "shipping_address": "1 Main St", "payment_method": "UPI"}, value))
    return orders
