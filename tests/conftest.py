"""Session-wide real services (redis-server, LocalStack SQS) and per-test settings."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from app import aws, sqs
from app.settings import Settings, to_env
from app.store import Store
# The order builders, wait_for, BIN and ROOT are also the tests' to import from here.
from bench.order_builders import USER, make_orders, order, order_body  # noqa: F401
from stack import launch
from stack.cluster import LocalRedisCluster
from stack.launch import SCRIPTS as BIN
from stack.launch import Worker
from stack.services import PROJECT_ROOT as ROOT
from stack.services import RedisServer, SqsServer, free_port, wait_for  # noqa: F401


def ephemeral_ports() -> range:
    """The ports this kernel gives outgoing connections (net.ipv4.ip_local_port_range)."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free port for the whole session."""
    server = RedisServer(free_port(), log_dir=tmp_path_factory.mktemp("redis-log"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A local Redis Cluster of 3 primaries, started once for the tests that ask for it."""
    cluster = LocalRedisCluster(primaries=3, log_dir=tmp_path_factory.mktemp("cluster-log"))
    cluster.start()
    yield cluster
    cluster.stop()


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


@pytest.fixture(params=["standalone", "cluster"])
def any_store(request, settings) -> Store:
    """The Redis gateway on the test's standalone database, then on the session's cluster."""
    if request.param == "standalone":
        return Store.from_url(settings.redis_url)
    store = Store.from_url(request.getfixturevalue("redis_cluster").url)
    store.redis.flushall(target_nodes=RedisCluster.PRIMARIES)
    return store


@pytest.fixture
def sqs_client(settings):
    """A boto3 SQS client on the test server."""
    return sqs.client(settings)


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
def start_api(tmp_path):
    """Factory: the API under real gunicorn on given settings, on a free port; its base URL."""
    servers = []

    def start(settings: Settings) -> str:
        server, base = launch.start_api(replace(settings, api_workers=2), tmp_path,
                                        name=f"gunicorn-{len(servers)}")
        servers.append(server)
        return base

    yield start
    for server in servers:
        server.stop(timeout=15)


@pytest.fixture
def api_server(settings, start_api) -> str:
    """The API under real gunicorn on the test's settings; its base URL."""
    return start_api(settings)


class Notifications:
    """An SQS queue subscribed to both files topics: what SNS announced, in order."""

    def __init__(self, settings):
        self.client = sqs.client(settings)
        self.url = self.client.create_queue(QueueName=f"notes-{uuid.uuid4().hex[:10]}")["QueueUrl"]
        arn = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        sns = aws.sns_client(settings)
        for topic in (settings.files_success_topic, settings.files_failure_topic):
            sns.subscribe(TopicArn=aws.topic_arn(sns, topic), Protocol="sqs", Endpoint=arn)
        self.received = []

    def poll(self):
        response = self.client.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1)
        for message in response.get("Messages", []):
            envelope = json.loads(message["Body"])
            self.received.append((envelope["TopicArn"].rsplit(":", 1)[1],
                                  json.loads(envelope["Message"])))
            self.client.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return self.received

    def wait(self, count, timeout=120):
        return wait_for(lambda: len(self.poll()) >= count and self.received, timeout=timeout,
                        message=f"{count} SNS notification(s)")


def stuck_execution(files, seconds: int) -> str:
    """An execution recorded as started seconds ago and still running (its step lost); its id."""
    from app.files.execution import FileEvent, new_execution_id
    execution_id = new_execution_id()
    files.start(execution_id, [FileEvent(f"input/orders_{execution_id}.csv")])
    files.store.save_execution({**files.store.execution(execution_id),
                                "started_at_ms": int(time.time() * 1000) - seconds * 1000})
    return execution_id


def merge_sample_orders(files, seed: int) -> None:
    """A few sample orders merged straight into the orders table (no upload, no execution)."""
    from app.files.cleaning import clean, read_csv
    from app.files.contract import ORDERS
    from files_oracle import csv_of, make_rows
    rows = csv_of(ORDERS, make_rows(random.Random(seed), orders=5)[1])
    files.staging.upsert(ORDERS, clean(read_csv(rows, ORDERS), ORDERS).frame)


def table_objects(settings: Settings, file_type, folder: str) -> dict[str, float]:
    """Key -> last modified (epoch seconds) of a table's objects under one of its folders."""
    paginator = aws.s3_client(settings).get_paginator("list_objects_v2")
    prefix = f"{aws.STAGING}{file_type.table}/{folder}"
    return {o["Key"]: o["LastModified"].timestamp()
            for page in paginator.paginate(Bucket=settings.files_bucket, Prefix=prefix)
            for o in page.get("Contents", [])}


def celery_cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `celery -A tasks ...` with the settings' environment; by default it must succeed."""
    result = subprocess.run([BIN / "celery", "-A", "tasks", *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, **to_env(settings)}, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@dataclass
class StackRun:
    """One `orders-stack run` (make run) of a test: its process, output, ports and API."""

    process: subprocess.Popen
    output: Path
    ports: dict[str, int]

    @property
    def api(self) -> str:
        """Base URL of its API."""
        return f"http://127.0.0.1:{self.ports['API_PORT']}"

    def text(self) -> str:
        """What it printed so far."""
        return self.output.read_text(errors="replace")

    def assert_running(self):
        """Fail with its output if it exited."""
        assert self.process.poll() is None, f"orders-stack exited early:\n{self.text()}"

    def stop(self, timeout: float = 120) -> int:
        """SIGINT, as Ctrl-C; its exit status (killed if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture
def orders_stack(tmp_path):
    """Factory: `orders-stack run` on free ports with the given variables; stopped at the end."""
    runs = []

    def start(**variables: str) -> StackRun:
        ports = {name: free_port() for name in ("API_PORT", "FLOWER_PORT", "SQS_PORT",
                                                 "REDIS_PORT")}
        env = {key: value for key, value in os.environ.items()
               if key not in ("REDIS_URL", "SQS_ENDPOINT_URL", "CONTROL_URL", "API_BIND")}
        env.update({name: str(port) for name, port in ports.items()}, DEMO_ORDERS="0",
                   STACK_VAR_DIR=str(tmp_path / "var"))
        env.update(variables)
        output = tmp_path / f"orders-stack-{len(runs)}.out"
        with open(output, "wb") as out:
            process = subprocess.Popen([str(BIN / "orders-stack"), "run"], cwd=ROOT, env=env,
                                       stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        runs.append(StackRun(process, output, ports))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The documentation site, built once per session as make docs builds it: a broken link,
    a missing page or any warning fails the build."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if build.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{build.stderr}", pytrace=False)
    return out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them)")


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium driven by chromedriver; any address but loopback is a dead proxy."""
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--window-size=1280,900", "--proxy-server=http://127.0.0.1:9",
                     f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()
