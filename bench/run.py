"""make bench: every contender on the same servers, one after the other, in one run.

Starts LocalStack's SQS, a counting proxy in front of it (bench/sqs_counter.py), a
redis-server for the aggregates and one for the project's control plane, all on free
ports; then, each on a fresh queue and a flushed Redis:

1. ingest of the same pre-queued orders by the raw SQS drain (direct and through the
   proxy), the seed-style worker, stock and tuned Celery, the bare batched loop and the
   project's worker as shipped, counting SQS requests (at the proxy), Redis round trips
   (INFO stats), commands and CPU per order; then again with the proxy adding each round
   trip of --rtts, and the project with 1, 2 and 4 worker processes at the largest;
2. wrk against the project's gunicorn API and the seed-style FastAPI peer;
3. the project's ingest at several user counts, with Redis memory per user;
4. the batch files path on about --files-items order_items rows against a bare polars
   script (bench/files.py);
5. top users over 3 months and a year at --range-orders-per-day orders a day, merged page
   by page against the ZUNIONSTORE script, on its own redis-server (bench/range_queries.py),
   with the users spread over the shards as the store places them and all in one shard.

Prints one Markdown table and writes it with the raw figures to --out (latest.md, latest.json).

    python -m bench.run [--orders 20000] [--rtts 0,10,25] [--api-seconds 20]
                        [--scale-users 2000,20000,100000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from app import aws, sample, sqs
from app.settings import Settings, to_env
from app.store import Store
from bench import files as files_bench
from bench import range_queries
from bench import report, seed_worker, stock_celery
from bench.sqs_counter import COUNTS_PATH, rtt_url
from stack.cluster import LocalRedisCluster
from stack.produce import send_all
from stack.services import PROJECT_ROOT, Process, RedisServer, SqsServer, free_port, wait_for
from tests.counting import CountingRedis

BIN = Path(sys.executable).parent
LUA = PROJECT_ROOT / "bench" / "wrk_paths.lua"
POLL_SECONDS = 0.1
# A contender that moves nothing for this long is given up (its row says so).
STALL_SECONDS = 90
# Default time box of one contender: its figures are then over what it did in that time.
MAX_SECONDS = 180
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Shares of the generated orders; the rest are valid, first-time orders.
INVALID_SHARE, DUPLICATE_SHARE = 0.03, 0.02
SEED = 6


def env_int(name: str, default: int) -> int:
    """An integer from the environment (make bench BENCH_ORDERS=...), else default."""
    return int(os.environ.get(name) or default)


class RedisMeter:
    """What one redis-server did between two snapshots, less the harness's own commands.

    INFO commandstats also counts the commands a Lua script runs, so it gives commands,
    not round trips. Round trips come from INFO stats' total_writes_processed: the server
    writes one reply per request (a pipeline's or an EVALSHA's replies leave together).
    """

    def __init__(self, url: str):
        self.client = CountingRedis.from_url(url, decode_responses=True)
        self.store = Store(self.client)

    def snapshot(self) -> tuple[Counter, int, Counter, int]:
        """The harness's own commands and requests so far, the server's calls per command,
        its replies."""
        # Before INFO: the INFO itself is not in its answer.
        own, own_trips = self.client.commands(), self.client.round_trips()
        info = self.client.info("stats", "commandstats")
        calls = Counter({name.removeprefix("cmdstat_"): value["calls"]
                         for name, value in info.items() if name.startswith("cmdstat_")})
        return own, own_trips, calls, info["total_writes_processed"]

    @staticmethod
    def delta(before, after) -> tuple[Counter, int]:
        """Commands per name and round trips between two snapshots, without the harness's."""
        (own0, trips0, calls0, writes0), (own1, trips1, calls1, writes1) = before, after
        calls = calls1.copy()
        calls.subtract(calls0)
        calls.subtract(own1 - own0)
        return +calls, writes1 - writes0 - (trips1 - trips0)

    def used_memory(self) -> int:
        """INFO memory's used_memory."""
        return self.client.info("memory")["used_memory"]

    def flush(self):
        """Empty every database (a fresh start for the next contender)."""
        self.client.flushall()


class ClusterMeter:
    """RedisMeter's figures summed over a Redis Cluster's primaries (replicas only copy)."""

    def __init__(self, cluster: LocalRedisCluster):
        self.cluster = cluster
        self.store = Store(cluster.client(decode_responses=True))
        self.primaries = [RedisMeter(f"redis://127.0.0.1:{port}/0")
                          for port in cluster.primary_ports()]

    def snapshot(self) -> list:
        """Each primary's snapshot."""
        return [meter.snapshot() for meter in self.primaries]

    @staticmethod
    def delta(before: list, after: list) -> tuple[Counter, int]:
        """Commands per name and round trips of all the primaries together."""
        calls, trips = Counter(), 0
        for one_before, one_after in zip(before, after):
            node_calls, node_trips = RedisMeter.delta(one_before, one_after)
            calls.update(node_calls)
            trips += node_trips
        return calls, trips

    def used_memory(self) -> int:
        """used_memory summed over the primaries."""
        return sum(meter.used_memory() for meter in self.primaries)

    def flush(self):
        """Empty every primary."""
        for meter in self.primaries:
            meter.flush()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by groups of processes during a phase, sampled at each poll.

    A process that exits keeps the last figure sampled, so short-lived pool processes
    and the drain's children are counted up to the last poll before they ended.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]):
        self.groups = groups
        self.start: dict[int, float] = {}
        self.last: dict[str, dict[int, float]] = {name: {} for name in groups}
        self.sample(first=True)

    def sample(self, first: bool = False):
        """Read the CPU time of every member of every group."""
        for name, members in self.groups.items():
            for pid in members():
                seconds = cpu_seconds(pid)
                if first:
                    self.start[pid] = seconds
                if seconds:
                    self.last[name][pid] = seconds

    def busy(self, elapsed: float) -> dict[str, float]:
        """Per group, CPU seconds used since the start divided by the elapsed time."""
        return {name: round(sum(s - self.start.get(pid, 0.0) for pid, s in pids.items())
                            / elapsed, 2) for name, pids in self.last.items()}


@dataclass
class Stack:
    """The shared servers of the run and how to reach them."""

    sqs: SqsServer
    proxy: Process
    proxy_url: str
    data: RedisServer
    control: RedisServer
    data_meter: RedisMeter
    control_meter: RedisMeter
    log_dir: Path
    max_seconds: float = MAX_SECONDS
    direct: object = None  # boto3 client straight to LocalStack: the harness's own calls
    rtt_ms: float = 0  # the round trip the proxy adds to every request right now

    def set_rtt(self, rtt_ms: float):
        """Make the proxy add rtt_ms to every SQS request from now on."""
        with urllib.request.urlopen(rtt_url(self.proxy_url, rtt_ms), timeout=10) as response:
            json.load(response)
        self.rtt_ms = rtt_ms

    def proxy_counts(self) -> dict:
        """The proxy's counters: requests per action, messages sent/received/deleted."""
        with urllib.request.urlopen(self.proxy_url + COUNTS_PATH, timeout=10) as response:
            return json.load(response)

    def settings(self, queue: str, endpoint: str | None = None) -> Settings:
        """Project settings on these servers: SQS through the proxy unless told otherwise."""
        return Settings(redis_url=self.data.url, control_url=self.control.url,
                        sqs_endpoint_url=endpoint or self.proxy_url, orders_queue=queue)

    def new_queue(self, label: str) -> str:
        """A fresh queue (no redrive policy) straight on LocalStack; its URL."""
        return self.direct.create_queue(QueueName=f"bench-{label}-{uuid.uuid4().hex[:8]}")[
            "QueueUrl"]

    def cpu_groups(self, contender: Process | None) -> dict:
        """The process groups whose CPU time is reported for each phase."""
        data = [node.process for node in getattr(self.data, "nodes", [self.data])]
        groups = {"sqs": _fixed(self.sqs.process), "redis": _fixed(*data, self.control.process),
                  "proxy": _fixed(self.proxy)}
        if contender is not None:
            groups["contender"] = contender.members
        return groups


def _fixed(*processes: Process) -> Callable[[], list[int]]:
    """The members of long-running services, looked up once."""
    pids = [pid for process in processes for pid in process.members()]
    return lambda: pids


class ProcessGroup:
    """Several contender processes measured and stopped as one (worker processes side by side)."""

    def __init__(self, processes: list[Process]):
        self.processes = processes
        self.log_path = processes[0].log_path

    def members(self) -> list[int]:
        """Live processes of every group."""
        return [pid for process in self.processes for pid in process.members()]

    @property
    def running(self) -> bool:
        """True while every command runs."""
        return all(process.running for process in self.processes)

    @property
    def returncode(self) -> int | None:
        """The first exit status, once one of them exited."""
        return next((p.returncode for p in self.processes if p.returncode is not None), None)

    def stop(self, timeout: float = 10.0):
        """Stop them all."""
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.stop(timeout=timeout)


@dataclass
class Orders:
    """One set of generated bodies and what the contenders should make of them."""

    bodies: list[str]
    users: int
    products: int
    kinds: Counter = field(default_factory=Counter)
    seed_valid: int = 0  # bodies the seed-style validation counts (re-sent ones again)
    counted_users: list[str] = field(default_factory=list)  # users with a valid order

    @classmethod
    def generate(cls, count: int, users: int, products: int) -> "Orders":
        """count bodies over users and products, a few percent invalid and re-sent."""
        samples = list(sample.generate(count, users=users, products=products,
                                       invalid_share=INVALID_SHARE,
                                       duplicate_share=DUPLICATE_SHARE, seed=SEED))
        orders = cls([s.body for s in samples], users, products, Counter(s.kind for s in samples))
        orders.seed_valid = sum(seed_worker.is_valid(seed_worker.parse(b)) for b in orders.bodies)
        orders.counted_users = sorted({json.loads(s.body)["user_id"] for s in samples
                                       if s.kind == "valid"})
        return orders

    def describe(self) -> str:
        """A short description for the table."""
        n = len(self.bodies)
        return (f"{n:,} orders over {self.users:,} users and {self.products:,} products: "
                f"{self.kinds['invalid']:,} invalid, {self.kinds['duplicate']:,} re-sent")


def send(stack: Stack, url: str, bodies: list[str], label: str):
    """Pre-queue bodies with SendMessageBatch straight on LocalStack (not counted)."""
    entries = (sample.Sample(body, "bench") for body in bodies)
    with tqdm(total=len(bodies), desc=f"queue {label}", unit="msg", leave=False,
              disable=None) as bar:
        totals = send_all(stack.direct, url, entries, threads=4, progress=bar)
    if sum(totals.failed.values()) or totals.skipped:
        raise RuntimeError(f"could not pre-queue every message for {label}: {totals}")


def start(stack: Stack, name: str, command: list, env: dict | None = None) -> Process:
    """Start a contender process from the checkout, logging to the run's log dir."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    return Process(name, command, env=env, log_dir=stack.log_dir, cwd=PROJECT_ROOT).start()


def ingest(stack: Stack, label: str, total: int, launch: Callable[[], Process | ProcessGroup],
           progress: Callable[[dict], int], finished: Callable[[Process, int], bool]) -> dict:
    """Run one contender until finished(); time it and count its SQS and Redis traffic.

    progress(proxy delta) says how many messages are done so far (for the bar and the
    stall check); finished(process, done) says whether the contender is through. A
    contender still running after stack.max_seconds is stopped: its figures are then
    those of the messages it got through.
    """
    stack.data_meter.flush()
    stack.control_meter.flush()
    memory0 = stack.data_meter.used_memory()
    proxy0 = stack.proxy_counts()
    data0, control0 = stack.data_meter.snapshot(), stack.control_meter.snapshot()
    started = time.monotonic()
    process = launch()
    cpu = CpuMeter(stack.cpu_groups(process))
    result = {"contender": label, "rtt_ms": stack.rtt_ms, "processes": 1, "orders": total,
              "status": "ok"}
    done = last_done = first_done = 0
    last_change = first_at = None
    try:
        with tqdm(total=total, desc=label, unit="msg", leave=False, disable=None) as bar:
            while True:
                now = time.monotonic()
                done = progress(_delta(proxy0, stack.proxy_counts()))
                bar.update(done - bar.n)
                cpu.sample()
                if done and first_at is None:
                    first_at, first_done = now, done
                if done != last_done or last_change is None:
                    last_done, last_change = done, now
                if finished(process, done):
                    break
                if not process.running:
                    result["status"] = f"exited with {process.returncode} after {done:,}"
                    break
                if now - last_change > STALL_SECONDS:
                    result["status"] = f"stalled at {done:,} of {total:,}"
                    break
                if now - started > stack.max_seconds:
                    result["status"] = (f"time-boxed: {done:,} of {total:,} in "
                                        f"{stack.max_seconds:.0f} s")
                    break
                time.sleep(POLL_SECONDS)
        elapsed = time.monotonic() - started
        proxy1 = stack.proxy_counts()
        done = progress(_delta(proxy0, proxy1))  # a drain may have said its last word since
        data1, control1 = stack.data_meter.snapshot(), stack.control_meter.snapshot()
        memory1 = stack.data_meter.used_memory()
    finally:
        process.stop(timeout=15)
    traffic = _delta(proxy0, proxy1)
    data_commands, data_trips = stack.data_meter.delta(data0, data1)
    control_commands, control_trips = stack.control_meter.delta(control0, control1)
    result.update(
        seconds=round(elapsed, 2), done=done, orders_per_s=round(done / elapsed, 1),
        # From the first orders done: what the contender sustains once it runs.
        steady_per_s=round((done - first_done) / (elapsed - (first_at - started)), 1)
        if first_at and done > first_done else None,
        sqs_requests=traffic["requests"], sqs_messages=traffic["messages"],
        redis_commands=dict(data_commands), redis_round_trips=data_trips,
        control_commands=dict(control_commands), control_round_trips=control_trips,
        memory_bytes=memory1 - memory0, cpu_busy=cpu.busy(elapsed), log=str(process.log_path))
    # CPU time of the contender's processes (every pool process included) per order done.
    result["cpu_ms_per_order"] = (round(result["cpu_busy"]["contender"] * elapsed * 1000 / done,
                                        3) if done else None)
    tqdm.write(f"{label} at {stack.rtt_ms:g} ms: {done:,}/{total:,} in {elapsed:.1f} s "
               f"({result['status']})", file=sys.stderr)
    return result


def _delta(before: dict, after: dict) -> dict:
    """Proxy counters after minus before, per family."""
    return {family: {k: v - before[family].get(k, 0) for k, v in after[family].items()
                     if v - before[family].get(k, 0)} for family in ("requests", "messages")}


def warm_up(stack: Stack, orders: Orders, count: int = 2000):
    """Send and drain a few thousand messages unmeasured: the first run on a fresh
    LocalStack was markedly slower than the same run later."""
    url = stack.new_queue("warm-up")
    bodies = orders.bodies[:count]
    send(stack, url, bodies, "warm-up")
    subprocess.run([sys.executable, "-m", "bench.drain", "--endpoint", stack.sqs.endpoint_url,
                    "--queue-url", url, "--expect", str(len(bodies))], cwd=PROJECT_ROOT,
                   capture_output=True, timeout=300, check=True)
    stack.direct.delete_queue(QueueUrl=url)


def run_drain(stack: Stack, orders: Orders, through_proxy: bool) -> dict:
    """The raw drain: receive 10 + DeleteMessageBatch, 2 processes, until all are deleted."""
    label = "raw drain" + ("" if through_proxy else " (no proxy)")
    url = stack.new_queue("drain")
    send(stack, url, orders.bodies, label)
    endpoint = stack.proxy_url if through_proxy else stack.sqs.endpoint_url
    name = "drain-proxy" if through_proxy else "drain-direct"
    # Progress from the drain's own count (direct, the proxy sees nothing).
    result = ingest(
        stack, label, len(orders.bodies),
        lambda: start(stack, name, [sys.executable, "-m", "bench.drain", "--endpoint",
                                    endpoint, "--queue-url", url, "--expect",
                                    len(orders.bodies), "--processes", 2]),
        lambda traffic: _last_json(stack.log_dir / f"{name}.log").get("deleted", 0),
        lambda process, done: process.returncode == 0)
    stack.direct.delete_queue(QueueUrl=url)
    result["check"] = _check(result["done"] == len(orders.bodies), f"{result['done']:,} deleted")
    return result


def run_seed(stack: Stack, orders: Orders) -> dict:
    """The seed-style worker, 2 processes, until every message is deleted and counted."""
    url = stack.new_queue("seed")
    send(stack, url, orders.bodies, "seed-style worker")
    result = ingest(
        stack, "seed-style worker", len(orders.bodies),
        lambda: start(stack, "seed-worker", [sys.executable, "-m", "bench.seed_worker",
                                             "--endpoint", stack.proxy_url, "--queue-url", url,
                                             "--redis-url", stack.data.url, "--processes", 2]),
        lambda traffic: traffic["messages"].get("deleted", 0),
        _seed_finished(stack, orders))
    stack.direct.delete_queue(QueueUrl=url)
    return _seed_check(stack, orders, result)


def run_stock_celery(stack: Stack, orders: Orders, tuned: bool = False) -> dict:
    """Stock (or tuned) Celery, -c 2, one task per message published as .delay() would."""
    label, module = (("tuned Celery", "bench.tuned_celery") if tuned
                     else ("stock Celery", "bench.stock_celery"))
    url = stack.new_queue("tuned" if tuned else "stock")
    queue = url.rsplit("/", 1)[1]
    envelopes = list(stock_celery.envelopes(f"sqs://test:test@127.0.0.1:{stack.sqs.port}", queue,
                                            orders.bodies))
    send(stack, url, envelopes, label)
    env = {"BENCH_BROKER_URL": f"sqs://test:test@127.0.0.1:{_port(stack.proxy_url)}",
           "BENCH_QUEUE": queue, "BENCH_REDIS_URL": stack.data.url}
    result = ingest(
        stack, label, len(orders.bodies),
        lambda: start(stack, label.replace(" ", "-").lower(),
                      [BIN / "celery", "-A", module, "worker", "--concurrency", 2,
                       "--loglevel", "WARNING"], env),
        lambda traffic: traffic["messages"].get("deleted", 0),
        # Stock Celery acks before the task runs (the default): the count comes last.
        _seed_finished(stack, orders))
    stack.direct.delete_queue(QueueUrl=url)
    return _seed_check(stack, orders, result)


def _seed_finished(stack: Stack, orders: Orders) -> Callable[[Process, int], bool]:
    """Every message deleted and every order the seeds' checks accept counted."""
    def finished(process: Process, done: int) -> bool:
        return done >= len(orders.bodies) and _seed_counted(stack) >= orders.seed_valid
    return finished


def _seed_check(stack: Stack, orders: Orders, result: dict) -> dict:
    """A finished seed-style run counted exactly the bodies the seeds' checks accept."""
    counted = _seed_counted(stack)
    if result["status"] == "ok":
        result["check"] = _check(counted == orders.seed_valid,
                                 f"{counted:,} counted of {orders.seed_valid:,} the seeds accept")
    else:
        result["check"] = f"{counted:,} counted"
    return result


def _seed_counted(stack: Stack) -> int:
    """Orders the seed-style contenders counted so far."""
    return int(stack.data_meter.client.hget("global:stats", "total_orders") or 0)


def project_outcomes(stack: Stack) -> int:
    """Messages the project's worker settled: counted + duplicate + rejected + conflict."""
    outcomes = stack.data_meter.store.outcomes()
    return sum(outcomes[name] for name in ("counted", "duplicate", "rejected", "conflict"))


def _project_queue(stack: Stack, orders: Orders, label: str,
                   wait_replicas: int = 0) -> tuple[Settings, dict]:
    """A fresh orders queue (with its DLQ) holding the orders; settings and queue URLs."""
    queue = f"bench-project-{uuid.uuid4().hex[:8]}"
    settings = replace(stack.settings(queue), redis_wait_replicas=wait_replicas)
    urls = sqs.ensure_queues(replace(settings, sqs_endpoint_url=stack.sqs.endpoint_url),
                             stack.direct)
    send(stack, urls[queue], orders.bodies, label)
    return settings, urls


def run_bare_loop(stack: Stack, orders: Orders) -> dict:
    """The bare batched loop (bench/bare_loop.py), 2 processes, until every outcome is in."""
    label = "bare batched loop"
    settings, urls = _project_queue(stack, orders, label)
    total = len(orders.bodies)
    result = ingest(
        stack, label, total,
        lambda: start(stack, "bare-loop", [sys.executable, "-m", "bench.bare_loop",
                                           "--processes", 2], to_env(settings)),
        lambda traffic: min(project_outcomes(stack), traffic["messages"].get("deleted", 0)),
        lambda process, done: done >= total)
    for url in urls.values():
        stack.direct.delete_queue(QueueUrl=url)
    return _outcome_check(stack, total, result)


def run_project(stack: Stack, orders: Orders, label: str = "this project as shipped",
                api_url: str | None = None, processes: int = 1, wait_replicas: int = 0) -> dict:
    """The project's worker as shipped (-c 2), `processes` of them, until every outcome is in."""
    settings, urls = _project_queue(stack, orders, label, wait_replicas)
    total = len(orders.bodies)
    env = {**to_env(settings)}

    def launch() -> ProcessGroup:
        # Separate `celery worker` processes, as a deployment scales out: own node names.
        return ProcessGroup([
            start(stack, f"project-worker-{i}", [BIN / "celery", "-A", "tasks", "worker",
                                                 "--concurrency", 2, "--loglevel", "WARNING",
                                                 "-n", f"bench{i}@%h"], env)
            for i in range(1, processes + 1)])

    result = ingest(
        stack, label, total, launch,
        # Done when every message has its outcome in Redis and is deleted from SQS.
        lambda traffic: min(project_outcomes(stack), traffic["messages"].get("deleted", 0)),
        lambda process, done: done >= total)
    for url in urls.values():
        stack.direct.delete_queue(QueueUrl=url)
    result["processes"] = processes
    result = _outcome_check(stack, total, result)
    if api_url:
        result["check"] = _api_check(stack, api_url, result["check"])
    return result


def run_rounds(stack: Stack, orders: Orders, rounds: int, far_ms: float,
               scale_out: list[int]) -> list[dict]:
    """Issue 12's ratios measured side by side, `rounds` times over, interleaved.

    Each round runs the raw drain and the project at 0 ms, then the project at far_ms with
    each number of worker processes: one round's rows ran within a minute or two of each
    other, so their ratios are less at the mercy of what the shared cores did meanwhile.
    """
    rows = []
    for number in range(1, rounds + 1):
        stack.set_rtt(0)
        round_rows = [run_drain(stack, orders, through_proxy=True), run_project(stack, orders)]
        stack.set_rtt(far_ms)
        round_rows += [run_project(stack, orders, processes=n) for n in scale_out]
        rows += [{**row, "round": number} for row in round_rows]
    stack.set_rtt(0)
    return rows


# Each durability level of the aggregates' Redis: its options, and the replicas that must
# confirm every batch (REDIS_WAIT_REPLICAS) before its SQS messages are deleted.
DURABILITY_LEVELS = (("append-only, appendfsync everysec", ["--appendfsync", "everysec"], 0),
                     ("append-only, appendfsync always (make run, compose)",
                      ["--appendfsync", "always"], 0),
                     ("appendfsync always + WAIT 1 (one replica)", ["--appendfsync", "always"], 1))


def run_durability(stack: Stack, orders: Orders, data_dir: Path) -> list[dict]:
    """The project's ingest at each durability level, each on a fresh append-only Redis."""
    rows = []
    for level, options, replicas in DURABILITY_LEVELS:
        with ExitStack() as servers:
            primary = RedisServer(free_port(), data_dir=data_dir / f"primary-{len(rows)}",
                                  log_dir=stack.log_dir, name=f"redis-durability-{len(rows)}",
                                  extra_args=options)
            servers.callback(primary.cleanup)
            primary.start()
            for n in range(replicas):
                replica = RedisServer(free_port(), data_dir=data_dir / f"replica-{len(rows)}-{n}",
                                      log_dir=stack.log_dir, name=f"redis-replica-{len(rows)}",
                                      extra_args=[*options, "--replicaof", "127.0.0.1",
                                                  str(primary.port)])
                servers.callback(replica.cleanup)
                replica.start()
            meter = RedisMeter(primary.url)

            def online() -> int:
                # Connected is not enough: WAIT counts a replica only once its sync is done.
                info = meter.client.info("replication")
                return sum(info.get(f"slave{n}", {}).get("state") == "online"
                           for n in range(replicas))

            wait_for(lambda: online() >= replicas, 30,
                     message=f"{replicas} replica(s) in sync")
            durable = replace(stack, data=primary, data_meter=meter)
            row = run_project(durable, orders, label=f"this project, {level}",
                              wait_replicas=replicas)
        row["level"], row["wait_replicas"] = level, replicas
        rows.append(row)
    return rows


def run_cluster(stack: Stack, orders: Orders, primaries: int = 3) -> list[dict]:
    """The project's ingest on a standalone Redis and on a local Redis Cluster, side by side."""
    rows = [run_project(stack, orders, label="this project, one standalone Redis")]
    with LocalRedisCluster(primaries, log_dir=stack.log_dir) as cluster:
        on_cluster = replace(stack, data=cluster, data_meter=ClusterMeter(cluster))
        rows.append(run_project(on_cluster, orders,
                                label=f"this project, Redis Cluster of {primaries} primaries"))
    for row, nodes in zip(rows, (1, primaries)):
        row["redis_nodes"] = nodes
    return rows


def _outcome_check(stack: Stack, total: int, result: dict) -> dict:
    """Every message has exactly one outcome in Redis (unless the run was cut short)."""
    result["outcomes"] = outcomes = stack.data_meter.store.outcomes()
    settled = project_outcomes(stack)
    result["check"] = _check(settled == total or result["status"] != "ok",
                             f"{settled:,} outcomes ({outcomes['counted']:,} counted, "
                             f"{outcomes['duplicate']:,} duplicate, "
                             f"{outcomes['rejected'] + outcomes['conflict']:,} rejected)")
    return result


def _api_check(stack: Stack, api_url: str, check: str) -> str:
    """Whether GET /stats/global agrees with Store.global_stats."""
    with urllib.request.urlopen(f"{api_url}/stats/global", timeout=10) as response:
        shown = json.load(response)
    stats = stack.data_meter.store.global_stats()
    agrees = (shown["total_orders"] == stats.total_orders
              and round(shown["total_revenue"] * 100) == stats.total_revenue_cents)
    return f"{check}; API /stats/global {'agrees' if agrees else 'DIFFERS'} " \
           f"({shown['total_orders']:,} orders)"


def _check(ok: bool, text: str) -> str:
    return text if ok else f"MISMATCH: {text}"


def _last_json(log: Path) -> dict:
    """The last JSON line a process wrote to its log."""
    if not log.exists():
        return {}
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def wait_http(url: str, process: Process, timeout: float = 60):
    """Wait until url answers (any status), or fail with the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if not process.running:
                break
            time.sleep(0.2)
    raise process.failure(f"{url} did not answer")


def start_gunicorn(stack: Stack) -> tuple[Process, str]:
    """The project's API as shipped (web/gunicorn.conf.py), on a free port."""
    port = free_port()
    # SQS straight to LocalStack: nothing the API might ask SQS is counted as ingest traffic.
    settings = replace(stack.settings("orders-queue", stack.sqs.endpoint_url),
                       api_bind=f"127.0.0.1:{port}")
    process = start(stack, "gunicorn", [BIN / "gunicorn", "-c", "web/gunicorn.conf.py",
                                        "web:create_app()"], to_env(settings))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/stats/global", process)
    return process, url


def start_peer(stack: Stack) -> tuple[Process, str]:
    """The seed-style FastAPI peer under uvicorn (1 worker, as the seeds run it)."""
    port = free_port()
    process = start(stack, "fastapi-peer", [BIN / "uvicorn", "bench.fastapi_peer:app",
                                            "--host", "127.0.0.1", "--port", port],
                    {"BENCH_REDIS_URL": stack.data.url})
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/stats/global", process)
    return process, url


def wrk(stack: Stack, server: str, process: Process, url: str, endpoint: str,
        paths: list[str], seconds: int) -> dict:
    """32 connections for `seconds` from wrk (2 threads), paths drawn at random."""
    paths_file = stack.log_dir / f"wrk-paths-{endpoint.strip('/').replace('/', '-')}.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    cpu = CpuMeter({"server": process.members, "redis": _fixed(stack.data.process)})
    command = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA), url,
               "--", str(paths_file)]
    with tqdm(total=seconds, desc=f"wrk {server} {endpoint}", unit="s", leave=False,
              disable=None) as bar, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True) as load:
        started = time.monotonic()
        while load.poll() is None:
            time.sleep(0.5)
            cpu.sample()
            bar.update(min(seconds, round(time.monotonic() - started)) - bar.n)
        output = load.stdout.read()
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH-RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    figures = json.loads(line.split(" ", 1)[1])
    duration = figures["duration_us"] / 1e6
    result = {"server": server, "endpoint": endpoint, "seconds": round(duration, 1),
              "requests": figures["requests"],
              "requests_per_s": round(figures["requests"] / duration, 1),
              "p50_ms": figures["p50_us"] / 1000, "p99_ms": figures["p99_us"] / 1000,
              "max_ms": figures["max_us"] / 1000, "errors": figures["errors"],
              "non_2xx": figures["non_2xx"], "cpu_busy": cpu.busy(duration)}
    tqdm.write(f"wrk {server} {endpoint}: {result['requests_per_s']:,.0f} req/s, "
               f"p99 {result['p99_ms']:.1f} ms", file=sys.stderr)
    return result


def run_api(stack: Stack, orders: Orders, servers: list[tuple[str, Process, str]],
            seconds: int) -> list[dict]:
    """wrk on /users/<id>/stats (ids with a counted order) and /stats/global, per server."""
    user_paths = [f"/users/{user}/stats" for user in orders.counted_users]
    results = []
    for server, process, url in servers:
        results.append(wrk(stack, server, process, url, "/users/<id>/stats", user_paths,
                           seconds))
        results.append(wrk(stack, server, process, url, "/stats/global", ["/stats/global"],
                           seconds))
    return results


def run_scale(stack: Stack, users: list[int], count: int, products: int) -> list[dict]:
    """The project's ingest of `count` orders at each user count; Redis memory per user."""
    rows = []
    for n in users:
        orders = Orders.generate(count, users=n, products=products)
        result = run_project(stack, orders, label=f"project at {n:,} users")
        distinct = len(orders.counted_users)
        result.update(users=n, users_with_orders=distinct,
                      ms_per_order=round(result["seconds"] * 1000 / count, 3),
                      bytes_per_user=round(result["memory_bytes"] / distinct) if distinct else None,
                      bytes_per_order=round(result["memory_bytes"] / count))
        rows.append(result)
    return rows


def start_stack(stack_dir: Path, log_dir: Path, exits: ExitStack) -> Stack:
    """LocalStack, the counting proxy, and the two redis-servers, on free ports."""
    sqs_server = SqsServer(free_port(), data_dir=stack_dir / "sqs", log_dir=log_dir)
    exits.callback(sqs_server.stop)
    data = RedisServer(free_port(), log_dir=log_dir, name="redis-data")
    exits.callback(data.cleanup)
    control = RedisServer(free_port(), log_dir=log_dir, name="redis-control")
    exits.callback(control.cleanup)
    tqdm.write("starting LocalStack SQS, 2 redis-servers and the counting proxy...",
               file=sys.stderr)
    data.start()
    control.start()
    sqs_server.start()
    proxy_port = free_port()
    proxy = Process("sqs-counter", [sys.executable, "-m", "bench.sqs_counter", "--port",
                                    proxy_port, "--upstream", sqs_server.endpoint_url],
                    env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, log_dir=log_dir,
                    cwd=PROJECT_ROOT).start()
    exits.callback(proxy.stop)
    stack = Stack(sqs_server, proxy, f"http://127.0.0.1:{proxy_port}", data, control,
                  RedisMeter(data.url), RedisMeter(control.url), log_dir)
    wait_http(stack.proxy_url + COUNTS_PATH, proxy)
    stack.direct = sqs.client(Settings(sqs_endpoint_url=sqs_server.endpoint_url))
    # Workers consume the (idle) files events queue too; it must exist for them to start.
    aws.ensure_files_queue(Settings(sqs_endpoint_url=sqs_server.endpoint_url), stack.direct)
    return stack


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_args(argv):
    """Options, with defaults from BENCH_* environment variables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=env_int("BENCH_ORDERS", 20_000),
                        help="orders pre-queued for each ingest contender [BENCH_ORDERS]")
    parser.add_argument("--users", type=int, default=env_int("BENCH_USERS", 20_000))
    parser.add_argument("--products", type=int, default=env_int("BENCH_PRODUCTS", 2_000))
    parser.add_argument("--rtts", default=os.environ.get("BENCH_RTTS", "0,10,25"),
                        help="comma-separated round trips (ms) the proxy adds to every SQS "
                             "request, one set of ingest rows each [BENCH_RTTS]")
    parser.add_argument("--worker-processes",
                        default=os.environ.get("BENCH_WORKER_PROCESSES", "1,2,4"),
                        help="worker processes (-c 2 each) of the project's rows at the "
                             "largest round trip [BENCH_WORKER_PROCESSES]")
    parser.add_argument("--rounds", type=int, default=env_int("BENCH_ROUNDS", 3),
                        help="interleaved rounds of issue 12's ratio rows (raw drain and "
                             "project at 0 ms, project at the largest round trip with each "
                             "number of worker processes); 0 for none [BENCH_ROUNDS]")
    parser.add_argument("--api-seconds", type=int, default=env_int("BENCH_API_SECONDS", 20),
                        help="wrk run per server and endpoint, 0 for none [BENCH_API_SECONDS]")
    parser.add_argument("--scale-users", default=os.environ.get("BENCH_SCALE_USERS",
                                                                "2000,20000,100000"),
                        help="comma-separated user counts of the scale rows")
    parser.add_argument("--scale-orders", type=int,
                        default=env_int("BENCH_SCALE_ORDERS", 0) or None,
                        help="orders per scale row [BENCH_SCALE_ORDERS; default: --orders]")
    parser.add_argument("--max-seconds", type=float,
                        default=float(os.environ.get("BENCH_MAX_SECONDS") or MAX_SECONDS),
                        help="time box of one ingest contender [BENCH_MAX_SECONDS]")
    parser.add_argument("--files-items", type=int,
                        default=env_int("BENCH_FILES_ITEMS", 1_000_000),
                        help="order_items rows of the files row; 0 skips it [BENCH_FILES_ITEMS]")
    parser.add_argument("--range-orders-per-day", type=int,
                        default=env_int("BENCH_RANGE_ORDERS_PER_DAY", 10_000),
                        help="orders a day of the range rankings' data; 0 skips them "
                             "[BENCH_RANGE_ORDERS_PER_DAY]")
    parser.add_argument("--range-days", type=int, default=env_int("BENCH_RANGE_DAYS", 366))
    parser.add_argument("--range-users", type=int,
                        default=env_int("BENCH_RANGE_USERS", 1_000_000),
                        help="customer base of the range rankings' data [BENCH_RANGE_USERS]")
    parser.add_argument("--range-apply-seconds", type=float, default=10,
                        help="Store.apply loop of each range latency row")
    parser.add_argument("--durability", type=int, default=env_int("BENCH_DURABILITY", 1),
                        help="1: the project's ingest at each Redis durability level")
    parser.add_argument("--cluster", type=int, default=env_int("BENCH_CLUSTER", 1),
                        help="1: the project's ingest on a standalone Redis and on a local "
                             "Redis Cluster of 3 primaries [BENCH_CLUSTER]")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results",
                        help="where latest.md, latest.json and the logs go")
    return parser.parse_args(argv)


def main(argv=None):
    """Run everything once; print the table and write latest.md and latest.json."""
    args = parse_args(argv)
    args.scale_orders = args.scale_orders or args.orders
    log_dir = args.out / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)  # logs append: start from empty ones
    log_dir.mkdir(parents=True)
    scale_users = [int(n) for n in args.scale_users.split(",") if n.strip()]
    rtts = sorted({float(n) for n in args.rtts.split(",") if n.strip()} | {0.0})
    scale_out = sorted({int(n) for n in args.worker_processes.split(",") if n.strip()} | {1})
    results = {"meta": report.machine(), "settings": {
        "orders": args.orders, "users": args.users, "products": args.products,
        "rtts_ms": rtts, "worker_processes": scale_out,
        "api_seconds": args.api_seconds, "scale_users": scale_users,
        "scale_orders": args.scale_orders, "max_seconds": args.max_seconds,
        "files_items": args.files_items, "durability": args.durability,
        "range_orders_per_day": args.range_orders_per_day, "range_days": args.range_days,
        "cluster": args.cluster, "rounds": args.rounds}}
    # SIGTERM (make interrupted, a test's timeout) unwinds like Ctrl-C: every server stops.
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as exits, tempfile.TemporaryDirectory(prefix="bench-") as stack_dir:
        stack = start_stack(Path(stack_dir), log_dir, exits)
        stack.max_seconds = args.max_seconds
        results["meta"]["redis_server"] = stack.data_meter.client.info("server")["redis_version"]
        orders = Orders.generate(args.orders, users=args.users, products=args.products)
        results["settings"]["describe"] = orders.describe()
        warm_up(stack, orders)
        # The proxy check compares two rates near each other on shared cores: each drain
        # runs twice, interleaved, and its row is the better run.
        drains = [run_drain(stack, orders, through_proxy=through_proxy)
                  for through_proxy in (False, True, False, True)]
        results["proxy_check"] = {"direct_per_s": [d["orders_per_s"] for d in drains[0::2]],
                                  "proxy_per_s": [d["orders_per_s"] for d in drains[1::2]]}
        results["ingest"] = [max(drains[0::2], key=lambda d: d["orders_per_s"]),
                             max(drains[1::2], key=lambda d: d["orders_per_s"]),
                             run_seed(stack, orders),
                             run_stock_celery(stack, orders),
                             run_stock_celery(stack, orders, tuned=True),
                             run_bare_loop(stack, orders)]
        gunicorn, api_url = start_gunicorn(stack)
        exits.callback(gunicorn.stop)
        results["ingest"].append(run_project(stack, orders, api_url=api_url))
        for rtt in rtts[1:]:
            stack.set_rtt(rtt)
            results["ingest"] += [run_drain(stack, orders, through_proxy=True),
                                  run_seed(stack, orders),
                                  run_stock_celery(stack, orders, tuned=True),
                                  run_bare_loop(stack, orders),
                                  run_project(stack, orders)]
        stack.set_rtt(rtts[-1])
        results["ingest"] += [run_project(stack, orders, processes=n)
                              for n in scale_out if n > 1]
        stack.set_rtt(0)
        if args.rounds:
            results["rounds"] = run_rounds(stack, orders, args.rounds, rtts[-1], scale_out)
        if args.api_seconds:
            # The API phase reads what the project's worker just wrote.
            servers = [("project: gunicorn + Flask", gunicorn, api_url)]
            results["api"] = run_api(stack, orders, servers, args.api_seconds)
            gunicorn.stop()
            peer, peer_url = start_peer(stack)
            exits.callback(peer.stop)
            results["api"] += run_api(stack, orders, [("seed-style FastAPI + uvicorn", peer,
                                                       peer_url)], args.api_seconds)
            peer.stop()
        results["scale"] = run_scale(stack, scale_users, args.scale_orders, args.products)
        if args.cluster:
            results["cluster"] = run_cluster(stack, orders)
        if args.durability:
            results["durability"] = run_durability(stack, orders, Path(stack_dir) / "durable")
        if args.files_items:
            results["files"] = files_bench.run(stack.data.url, stack.control.url,
                                               stack.sqs.endpoint_url, log_dir, args.files_items)
        if args.range_orders_per_day:
            results["range_queries"] = range_queries.run(
                log_dir, args.range_orders_per_day, args.range_days, args.range_users,
                args.range_apply_seconds)
    results["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    table = report.markdown(results)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "latest.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
