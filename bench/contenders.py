"""The ingest contenders of make bench, each on a fresh queue holding the same orders, and
the checks that each got every order right: the raw drain, the seed-style worker, stock
and tuned Celery, the bare batched loop and the project's worker (at several round trips,
worker counts, durability levels, user counts, and on a Redis Cluster)."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from app import sqs
from app.settings import Settings, to_env
from bench import stock_celery
from bench.harness import Orders, ProcessGroup, Stack, ingest, send, start
from bench.redis_meter import ClusterMeter, RedisMeter
from stack.cluster import LocalRedisCluster
from stack.launch import SCRIPTS, worker_command
from stack.services import PROJECT_ROOT, Process, RedisServer, free_port, wait_for


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
    env = {"BENCH_BROKER_URL": f"sqs://test:test@127.0.0.1:{urlsplit(stack.proxy_url).port}",
           "BENCH_QUEUE": queue, "BENCH_REDIS_URL": stack.data.url}
    result = ingest(
        stack, label, len(orders.bodies),
        lambda: start(stack, label.replace(" ", "-").lower(),
                      [SCRIPTS / "celery", "-A", module, "worker", "--concurrency", 2,
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
                api_url: str | None = None, processes: int = 1, wait_replicas: int = 0,
                root: Path = PROJECT_ROOT) -> dict:
    """The project's worker as shipped (-c 2), `processes` of them, until every outcome is in.

    root: the tree whose code the workers run (an earlier commit's, for the baseline rows).
    """
    settings, urls = _project_queue(stack, orders, label, wait_replicas)
    total = len(orders.bodies)
    env = to_env(settings)

    def launch() -> ProcessGroup:
        # Separate `celery worker` processes, as a deployment scales out: own node names.
        return ProcessGroup([
            start(stack, f"project-worker-{i}", worker_command(f"bench{i}", 2, "WARNING"), env,
                  root)
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
    """The round-trip ratios measured side by side, `rounds` times over, interleaved.

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


def baseline_tree(rev: str, into: Path) -> tuple[Path, str]:
    """The project's files at git revision rev, extracted into `into`; (tree, short commit)."""
    commit = subprocess.run(["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=PROJECT_ROOT,
                            check=True, capture_output=True, text=True).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=PROJECT_ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into, commit


def run_baseline(stack: Stack, orders: Orders, rounds: int, tree: Path, commit: str) -> list[dict]:
    """The project's worker against an earlier commit's, at 0 ms, side by side in rounds.

    Which of the two runs first alternates from round to round, so a drift of the shared
    cores over the run weighs on both alike. Both read and write the same store layout.
    """
    rows = []
    stack.set_rtt(0)
    runs = [lambda: run_project(stack, orders),
            lambda: run_project(stack, orders, label=f"baseline {commit}", root=tree)]
    for number in range(1, rounds + 1):
        rows += [{**run(), "round": number} for run in runs[::1 if number % 2 else -1]]
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
