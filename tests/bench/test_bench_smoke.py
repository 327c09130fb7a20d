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
CONTENDERS = ["raw drain (no proxy)", "raw drain", "seed-style worker", "stock Celery",
              "this project as shipped"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None or importlib.util.find_spec("uvicorn") is None
                       or importlib.util.find_spec("fastapi") is None,
                       reason="needs wrk, fastapi and uvicorn: make bench-deps"),
]


@pytest.mark.timeout(300)
def test_bench_runs_every_contender_and_writes_the_table(tmp_path):
    command = [sys.executable, "-m", "bench.run", "--orders", "200", "--users", "500",
               "--products", "50", "--api-seconds", "2", "--scale-users", "2000",
               "--scale-orders", "200", "--max-seconds", "20", "--files-items", "2000",
               "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]

    table = (tmp_path / "latest.md").read_text()
    assert run.stdout.strip() == table.strip()
    results = json.loads((tmp_path / "latest.json").read_text())
    rows = {row["contender"]: row for row in results["ingest"]}
    assert list(rows) == CONTENDERS
    for name in CONTENDERS:
        assert f"| {name} |" in table
    # Stock Celery may hit the 20 s time box (it polls once a second by default); the
    # others get through all 200 and their own checks hold.
    for name, row in rows.items():
        assert row["done"] > 0, row
        assert "MISMATCH" not in row["check"], row
        if name != "stock Celery":
            assert row["status"] == "ok", row
            assert row["done"] >= 200, row
    project = rows["this project as shipped"]
    assert "API /stats/global agrees" in project["check"]
    assert project["sqs_requests"]["ReceiveMessage"] > 0
    assert project["redis_round_trips"] > 0
    # Contenders talked to SQS through the counting proxy; the direct drain did not.
    assert "ReceiveMessage" in rows["seed-style worker"]["sqs_requests"]
    assert rows["raw drain (no proxy)"]["sqs_requests"] == {}

    servers = {(row["server"], row["endpoint"]) for row in results["api"]}
    assert servers == {(server, endpoint)
                       for server in ("project: gunicorn + Flask", "seed-style FastAPI + uvicorn")
                       for endpoint in ("/users/<id>/stats", "/stats/global")}
    for row in results["api"]:
        assert row["requests"] > 0 and row["errors"] == 0 and row["non_2xx"] == 0, row

    [scale] = results["scale"]
    assert scale["users"] == 2000 and scale["status"] == "ok" and scale["bytes_per_user"] > 0
    assert "### Issue 6's targets" in table
    files = results["files"]
    assert files["pipeline"]["status"] == "succeeded" and files["floor"]["rows"] > 2000
    assert "| files pipeline" in table
