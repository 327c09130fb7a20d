"""REDIS_CLUSTER=3 REDIS_REPLICAS=1 make run: the stack on a local Redis Cluster."""
import re

import pytest
import requests
from redis.cluster import RedisCluster

from conftest import wait_for
from stack.cluster import free_node_ports

DEMO_ORDERS = 300


def settled(run) -> dict | None:
    """The run's outcomes from its API's /metrics once every demo order has one, else None."""
    run.assert_running()
    try:
        counts = requests.get(f"{run.api}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    outcomes = {m[0]: float(m[1]) for m in re.findall(
        r'^orders_messages\{outcome="(\w+)"\} (\S+)$', counts, re.M)}
    done = sum(outcomes.get(o, 0) for o in ("counted", "duplicate", "rejected", "conflict"))
    return outcomes if done >= DEMO_ORDERS else None


@pytest.mark.slow
def test_orders_stack_run_on_a_local_cluster_counts_the_demo_orders(orders_stack):
    first = free_node_ports(6)
    run = orders_stack(REDIS_CLUSTER="3", REDIS_REPLICAS="1", REDIS_CLUSTER_PORT=str(first),
                       DEMO_ORDERS=str(DEMO_ORDERS), DEMO_FILE_ORDERS="0")

    outcomes = wait_for(lambda: settled(run), timeout=180, message="every demo order settled")
    # The nodes, printed with their roles: 3 primaries with slots, 3 replicas.
    nodes = re.findall(r"127\.0\.0\.1:(\d+)  (master|slave)", run.text())
    assert sorted(role for _, role in nodes) == ["master"] * 3 + ["slave"] * 3
    assert {int(port) for port, _ in nodes} == set(range(first, first + 6))
    stats = requests.get(f"{run.api}/stats/global", timeout=5).json()
    assert stats["total_orders"] == outcomes["counted"] > 0
    assert run.stop() == 0, run.text()[-3000:]


@pytest.mark.slow
def test_orders_stack_run_on_an_external_cluster_starts_its_own_control_plane(orders_stack,
                                                                             redis_cluster):
    """REDIS_URL at a cluster node it did not start, no CONTROL_URL: it comes up and counts."""
    redis_cluster.client().flushall(target_nodes=RedisCluster.PRIMARIES)
    run = orders_stack(REDIS_URL=redis_cluster.url, DEMO_ORDERS=str(DEMO_ORDERS),
                       DEMO_FILE_ORDERS="0")

    outcomes = wait_for(lambda: settled(run), timeout=180, message="every demo order settled")
    assert "for the control plane (CONTROL_URL)" in run.text()
    stats = requests.get(f"{run.api}/stats/global", timeout=5).json()
    assert stats["total_orders"] == outcomes["counted"] > 0
    assert run.stop() == 0, run.text()[-3000:]
