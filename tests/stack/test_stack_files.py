"""make run's files path: resources created, sample files uploaded, KPIs served."""
import os
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest
import requests

from conftest import wait_for
from stack.services import PROJECT_ROOT, free_port

SCRIPTS = Path(sysconfig.get_path("scripts"))


@pytest.mark.slow
def test_orders_stack_run_uploads_sample_files_and_serves_their_kpis(tmp_path):
    ports = {name: free_port() for name in ("API_PORT", "FLOWER_PORT", "SQS_PORT", "REDIS_PORT")}
    env = {key: value for key, value in os.environ.items()
           if key not in ("REDIS_URL", "SQS_ENDPOINT_URL", "CONTROL_URL", "API_BIND")}
    env.update({name: str(port) for name, port in ports.items()}, DEMO_ORDERS="0",
               DEMO_FILE_ORDERS="200", FILES_BATCH_WINDOW="2", STACK_VAR_DIR=str(tmp_path / "var"))
    output = tmp_path / "orders-stack.out"
    with open(output, "wb") as out:
        run = subprocess.Popen([str(SCRIPTS / "orders-stack"), "run"], cwd=PROJECT_ROOT, env=env,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{ports['API_PORT']}"

    def executions():
        assert run.poll() is None, f"orders-stack exited early:\n{output.read_text()}"
        try:
            return [e for e in requests.get(f"{api}/files/executions", timeout=5).json()
                    if e["status"] != "running"]
        except requests.RequestException:
            return []

    samples = ["order_items_part1.csv", "orders_part1.csv", "products.csv"]

    def staged():
        # The uploads may span more than one FILES_BATCH_WINDOW: one execution or several.
        done = executions()
        return done if sorted(f for e in done for f in e["valid_files"]) == samples else None

    try:
        done = wait_for(staged, timeout=180, message="the sample files' executions")
        assert all(e["status"] == "succeeded" for e in done), done
        kpis = requests.get(f"{api}/kpis/orders", params={"from": "2024-01-01",
                                                          "to": "2024-12-31"}).json()
        assert [k["order_date"] for k in kpis] == sorted({d for e in done for d in e["dates"]})
        assert sum(k["total_orders"] for k in kpis) == next(
            f["rows_kept"] for e in done for f in e["files"] if f["name"] == "orders_part1.csv")
        assert "orders-files upload" in output.read_text()  # how to try the returns
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(120)
        except subprocess.TimeoutExpired:
            run.kill()
