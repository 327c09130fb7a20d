"""The bench's harness: the shared servers of a run, the contenders' processes, and one
contender's ingest run, timed, with its SQS and Redis traffic and its CPU counted."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from app import aws, sample, sqs
from app.settings import Settings
from bench import seed_worker, sqs_counter
from bench.redis_meter import RedisMeter
from stack.produce import send_all
from stack.services import (PROJECT_ROOT, Process, RedisServer, SqsServer, free_port,
                            stat_fields)

POLL_SECONDS = 0.1
# A contender that moves nothing for this long is given up (its row says so).
STALL_SECONDS = 90
# Default time box of one contender: its figures are then over what it did in that time.
MAX_SECONDS = 180
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Shares of the generated orders; the rest are valid, first-time orders.
INVALID_SHARE, DUPLICATE_SHARE = 0.03, 0.02
SEED = 6
# The steady part of a run, for CPU per order: from the poll at which this share of the
# orders it got through was done to the one at which that share was. Each process's
# start-up (imports, forking the pool: ~0.7 s of CPU a `celery worker`) is before it, the
# last batches' stragglers after it.
STEADY_FROM, STEADY_TO = 0.2, 0.9


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, 0 if it is gone."""
    try:
        fields = stat_fields(Path(f"/proc/{pid}"))
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

    def total(self, name: str) -> float:
        """CPU seconds one group used since the start, up to the last sample."""
        return sum(s - self.start.get(pid, 0.0) for pid, s in self.last[name].items())

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
        sqs_counter.set_rtt(self.proxy_url, rtt_ms)
        self.rtt_ms = rtt_ms

    def proxy_counts(self) -> dict:
        """The proxy's counters: requests per action, messages sent/received/deleted."""
        return sqs_counter.counts(self.proxy_url)

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
        groups = {"sqs": fixed_members(self.sqs.process),
                  "redis": fixed_members(*data, self.control.process),
                  "proxy": fixed_members(self.proxy)}
        if contender is not None:
            groups["contender"] = contender.members
        return groups


def fixed_members(*processes: Process) -> Callable[[], list[int]]:
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


def steady_per_order(samples: list[tuple[int, ...]], done: int) -> list[float] | None:
    """Each counter's growth per order between STEADY_FROM and STEADY_TO of `done` orders.

    samples: (orders done, counter, counter, ...) at each poll, in order. None when the
    window holds no orders (a run too short or too slow to have one).
    """
    start = next((s for s in samples if s[0] >= STEADY_FROM * done), None)
    end = next((s for s in samples if s[0] >= STEADY_TO * done), None)
    if start is None or end is None or end[0] <= start[0]:
        return None
    return [(b - a) / (end[0] - start[0]) for a, b in zip(start[1:], end[1:])]


def send(stack: Stack, url: str, bodies: list[str], label: str):
    """Pre-queue bodies with SendMessageBatch straight on LocalStack (not counted)."""
    entries = (sample.Sample(body, "bench") for body in bodies)
    with tqdm(total=len(bodies), desc=f"queue {label}", unit="msg", leave=False,
              disable=None) as bar:
        totals = send_all(stack.direct, url, entries, threads=4, progress=bar)
    if sum(totals.failed.values()) or totals.skipped:
        raise RuntimeError(f"could not pre-queue every message for {label}: {totals}")


def contender(stack: Stack, name: str, command: list, env: dict | None = None,
              root: Path = PROJECT_ROOT) -> Process:
    """A contender's process (not started) running the code of root (the checkout, or an
    earlier commit's tree), logging to the run's log dir."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1", **(env or {})}
    return Process(name, command, env=env, log_dir=stack.log_dir, cwd=root)


def start(stack: Stack, name: str, command: list, env: dict | None = None,
          root: Path = PROJECT_ROOT) -> Process:
    """Start a contender's process (see contender)."""
    return contender(stack, name, command, env, root).start()


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
    memory0, redis_cpu0 = stack.data_meter.used_memory(), stack.data_meter.used_cpu()
    proxy0 = stack.proxy_counts()
    data0, control0 = stack.data_meter.snapshot(), stack.control_meter.snapshot()
    started = time.monotonic()
    process = launch()
    cpu = CpuMeter(stack.cpu_groups(process))
    result = {"contender": label, "rtt_ms": stack.rtt_ms, "processes": 1, "orders": total,
              "status": "ok"}
    done = last_done = first_done = 0
    last_change = first_at = None
    # (orders done, contender CPU seconds, SQS requests, Redis round trips) at each poll
    samples = []
    try:
        with tqdm(total=total, desc=label, unit="msg", leave=False, disable=None) as bar:
            while True:
                now = time.monotonic()
                traffic = _delta(proxy0, stack.proxy_counts())
                done = progress(traffic)
                bar.update(done - bar.n)
                cpu.sample()
                samples.append((done, cpu.total("contender"), sum(traffic["requests"].values()),
                                stack.data_meter.round_trips()))
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
        memory1, redis_cpu1 = stack.data_meter.used_memory(), stack.data_meter.used_cpu()
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
    # The same without each process's start-up (its imports, its first requests: the
    # queue's attributes, the store's scripts and checks) and the run's last stragglers:
    # the cost of an order once the workers run, which more orders or machines multiply.
    steady = steady_per_order(samples, done)
    result["steady"] = None if steady is None else {
        "cpu_ms_per_order": round(steady[0] * 1000, 3),
        "sqs_requests_per_order": round(steady[1], 4),
        "redis_round_trips_per_order": round(steady[2], 4)}
    # redis-server CPU (the aggregates' servers: every primary of a cluster) per order.
    result["redis_cpu_ms_per_order"] = (round((redis_cpu1 - redis_cpu0) * 1000 / done, 4)
                                        if done else None)
    tqdm.write(f"{label} at {stack.rtt_ms:g} ms: {done:,}/{total:,} in {elapsed:.1f} s "
               f"({result['status']})", file=sys.stderr)
    return result


def _delta(before: dict, after: dict) -> dict:
    """Proxy counters after minus before, per family."""
    return {family: {k: v - before[family].get(k, 0) for k, v in after[family].items()
                     if v - before[family].get(k, 0)} for family in ("requests", "messages")}


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
    proxy, proxy_url = sqs_counter.start_proxy(sqs_server.endpoint_url, log_dir)
    exits.callback(proxy.stop)
    stack = Stack(sqs_server, proxy, proxy_url, data, control, RedisMeter(data.url),
                  RedisMeter(control.url), log_dir)
    stack.direct = sqs.client(Settings(sqs_endpoint_url=sqs_server.endpoint_url))
    # Workers consume the (idle) files events queue too; it must exist for them to start.
    aws.ensure_files_queue(Settings(sqs_endpoint_url=sqs_server.endpoint_url), stack.direct)
    return stack
