"""REDIS_CLUSTER=3 REDIS_REPLICAS=1 make run: the stack on a local Redis Cluster."""
import os
import re
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest
import requests

from conftest import wait_for
from stack.cluster import BUS_OFFSET, free_node_port
from stack.services import PROJECT_ROOT, free_port, port_is_free

SCRIPTS = Path(sysconfig.get_path("scripts"))
DEMO_ORDERS = 300


def free_node_ports(count: int) -> int:
    """The first of count consecutive free ports whose bus ports are free too."""
    for _ in range(100):
        first = free_node_port()
        if all(port_is_free(p) and port_is_free(p + BUS_OFFSET) for p in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free node ports")


@pytest.mark.slow
def test_orders_stack_run_on_a_local_cluster_counts_the_demo_orders(tmp_path):
    ports = {name: free_port() for name in ("API_PORT", "FLOWER_PORT", "SQS_PORT", "REDIS_PORT")}
    first = free_node_ports(6)
    env = {key: value for key, value in os.environ.items()
           if key not in ("REDIS_URL", "SQS_ENDPOINT_URL", "CONTROL_URL", "API_BIND")}
    env.update({name: str(port) for name, port in ports.items()}, REDIS_CLUSTER="3",
               REDIS_REPLICAS="1", REDIS_CLUSTER_PORT=str(first), DEMO_ORDERS=str(DEMO_ORDERS),
               DEMO_FILE_ORDERS="0", STACK_VAR_DIR=str(tmp_path / "var"))
    output = tmp_path / "orders-stack.out"
    with open(output, "wb") as out:
        run = subprocess.Popen([str(SCRIPTS / "orders-stack"), "run"], cwd=PROJECT_ROOT, env=env,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{ports['API_PORT']}"

    def settled():
        assert run.poll() is None, f"orders-stack exited early:\n{output.read_text()}"
        try:
            counts = requests.get(f"{api}/metrics", timeout=5).text
        except requests.RequestException:
            return None
        outcomes = {m[0]: float(m[1]) for m in re.findall(
            r'^orders_messages\{outcome="(\w+)"\} (\S+)$', counts, re.M)}
        settled = sum(outcomes.get(o, 0) for o in ("counted", "duplicate", "rejected", "conflict"))
        return outcomes if settled >= DEMO_ORDERS else None

    try:
        outcomes = wait_for(settled, timeout=180, message="every demo order settled")
        text = output.read_text()
        # The nodes, printed with their roles: 3 primaries with slots, 3 replicas.
        nodes = re.findall(r"127\.0\.0\.1:(\d+)  (master|slave)", text)
        assert sorted(role for _, role in nodes) == ["master"] * 3 + ["slave"] * 3
        assert {int(port) for port, _ in nodes} == set(range(first, first + 6))
        stats = requests.get(f"{api}/stats/global", timeout=5).json()
        assert stats["total_orders"] == outcomes["counted"] > 0
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(120)
        except subprocess.TimeoutExpired:
            run.kill()
    assert run.returncode == 0, output.read_text()[-3000:]
