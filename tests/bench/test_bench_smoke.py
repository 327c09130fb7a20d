"""make bench end to end on a tiny size: every contender runs and lands in the table.

A smoke test of the harness, not of speed: no figure is compared with anything.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "this project as shipped"
RTT_MS = 20.0
# (contender, round trip ms, worker processes), in the order the harness runs them.
ROWS = [("raw drain (no proxy)", 0, 1), ("raw drain", 0, 1), ("seed-style worker", 0, 1),
        ("stock Celery", 0, 1), ("tuned Celery", 0, 1), ("bare batched loop", 0, 1),
        (PROJECT, 0, 1), ("raw drain", RTT_MS, 1), ("seed-style worker", RTT_MS, 1),
        ("tuned Celery", RTT_MS, 1), ("bare batched loop", RTT_MS, 1), (PROJECT, RTT_MS, 1),
        (PROJECT, RTT_MS, 2)]
# The API rows need wrk, FastAPI and uvicorn (make bench-deps); without them the run
# skips its wrk phase and the rest is checked all the same.
WITH_API = (shutil.which("wrk") is not None and importlib.util.find_spec("uvicorn") is not None
            and importlib.util.find_spec("fastapi") is not None)

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_bench_runs_every_contender_and_writes_the_table(tmp_path):
    command = [sys.executable, "-m", "bench.run", "--orders", "200", "--users", "500",
               "--products", "50", "--api-seconds", "2" if WITH_API else "0",
               "--rtts", f"0,{RTT_MS:g}", "--worker-processes", "1,2",
               "--scale-users", "2000", "--scale-orders", "200", "--max-seconds", "20",
               "--files-items", "2000", "--files-larger", "0", "--range-orders-per-day", "200", "--range-days", "62",
               "--range-users", "2000", "--range-apply-seconds", "1", "--rounds", "1",
               "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]

    table = (tmp_path / "latest.md").read_text()
    assert run.stdout.strip() == table.strip()
    results = json.loads((tmp_path / "latest.json").read_text())
    rows = {(row["contender"], row["rtt_ms"], row["processes"]): row
            for row in results["ingest"]}
    assert list(rows) == ROWS
    for name, _, _ in ROWS:
        assert f"| {name}" in table
    # One Redis and a cluster of 3 primaries, each with every outcome in place.
    assert [row["redis_nodes"] for row in results["cluster"]] == [1, 3]
    for row in results["cluster"]:
        assert row["status"] == "ok" and "MISMATCH" not in row["check"], row
    assert "### Redis Cluster" in table
    # Stock Celery may hit the 20 s time box (it polls once a second by default), and so
    # may the seed-style worker at 20 ms (a DeleteMessage per order); the others get
    # through all 200 and their own checks hold.
    for (name, rtt, _), row in rows.items():
        assert row["done"] > 0, row
        assert "MISMATCH" not in row["check"], row
        assert row["cpu_ms_per_order"] > 0, row
        if name != "stock Celery" and not (name == "seed-style worker" and rtt):
            assert row["status"] == "ok", row
            assert row["done"] >= 200, row
    project = rows[(PROJECT, 0, 1)]
    assert project["sqs_requests"]["ReceiveMessage"] > 0
    assert project["redis_round_trips"] > 0
    # Contenders talked to SQS through the counting proxy; the direct drain did not.
    assert "ReceiveMessage" in rows[("seed-style worker", 0, 1)]["sqs_requests"]
    assert rows[("raw drain (no proxy)", 0, 1)]["sqs_requests"] == {}
    # Stock Celery runs kombu's own transport, which deletes message by message.
    assert "DeleteMessage" in rows[("stock Celery", 0, 1)]["sqs_requests"]
    # The proxy's round trip was paid: the raw drain (one receive, then one delete, per
    # ten messages per process) cannot beat 2 processes x 10 messages per 2 round trips.
    drain_far = rows[("raw drain", RTT_MS, 1)]
    assert drain_far["orders_per_s"] <= 2 * 10 / (2 * RTT_MS / 1000), drain_far
    assert "### Round-trip and scale-out targets" in table
    # The cost per order at 1 and 2 worker processes, and the capacity table from it.
    assert "### Scale-out: cost per order with more worker processes" in table
    assert "2 worker processes: SQS requests per order ≤ 1.1× one process's" in table
    assert "### Capacity and cost" in table and f"| {PROJECT} |" in table
    assert project["redis_cpu_ms_per_order"] > 0
    # One interleaved round of the ratio rows, each through every order.
    assert [(r["contender"], r["rtt_ms"], r["processes"], r["round"])
            for r in results["rounds"]] == [("raw drain", 0, 1, 1), (PROJECT, 0, 1, 1),
                                            (PROJECT, RTT_MS, 1, 1), (PROJECT, RTT_MS, 2, 1)]
    assert all(r["status"] == "ok" and r["done"] >= 200 for r in results["rounds"])
    assert "### Round-trip ratios: 1 interleaved round" in table
    assert "### Ingest and API targets" in table
    assert "API /stats/global agrees" in project["check"]
    [scale] = results["scale"]
    assert scale["users"] == 2000 and scale["status"] == "ok" and scale["bytes_per_user"] > 0
    # One files row: the larger one would take this test past its time limit.
    [files] = results["files"]["sizes"]
    assert files["pipeline"]["status"] == "succeeded" and files["floor"]["rows"] > 2000
    # CPU of the script, and of the worker and LocalStack while the pipeline ran.
    cpu = files["pipeline"]["cpu_seconds"]
    assert files["floor"]["cpu_seconds"] > 0 and cpu["worker"] > 0 and cpu["server"] > 0
    assert f"{cpu['worker']} + {cpu['server']} = " in table
    assert "| files pipeline" in table
    assert "Batch files targets" in table
    # The durability rows: every level drained every message, the last one through WAIT.
    levels = results["durability"]
    assert [r["wait_replicas"] for r in levels] == [0, 0, 1]
    assert all(r["status"] == "ok" and r["done"] >= 200 for r in levels), levels
    assert "WAIT" in levels[-1]["redis_commands"] or "wait" in levels[-1]["redis_commands"]
    assert "### Durability" in table
    assert all(row["answers_agree"] for row in results["range_queries"]["queries"])
    assert "### Range rankings" in table
    if not WITH_API:
        return

    servers = {(row["server"], row["endpoint"]) for row in results["api"]}
    assert servers == {(server, endpoint)
                       for server in ("project: gunicorn + Flask", "seed-style FastAPI + uvicorn")
                       for endpoint in ("/users/<id>/stats", "/stats/global")}
    for row in results["api"]:
        assert row["requests"] > 0 and row["errors"] == 0 and row["non_2xx"] == 0, row
    cost = results["dashboard_cost"]
    assert cost["polls"] > 0 and cost["failed_polls"] == 0, cost
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["non_2xx"] == 0
               for r in (cost["without"], cost["with"])), cost
    assert "### The live page's cost" in table
