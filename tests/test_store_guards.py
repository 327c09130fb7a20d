"""Issue 19: a worker refuses, at start, a store that may evict and a control plane on a cluster.

Real worker processes against real redis-servers: each must exit with one line that says
why and how to fix it, without a traceback.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import replace

import pytest
from redis.cluster import ClusterNode

from app.redis_client import EvictingStore, check_eviction_policy, eviction_policies
from app.settings import Settings, to_env
from conftest import BIN, ROOT
from stack.services import RedisServer, free_port


def run_worker(settings: Settings, **env: str) -> subprocess.CompletedProcess:
    """A real `celery -A tasks worker` on settings, expected to exit by itself."""
    return subprocess.run([str(BIN / "celery"), "-A", "tasks", "worker", "--pool", "solo"],
                          cwd=ROOT, env={**os.environ, **to_env(settings), **env},
                          capture_output=True, text=True, timeout=60)


def assert_refused(finished: subprocess.CompletedProcess, *words: str) -> str:
    """The worker exited non-zero with one 'worker not started' line holding every word."""
    assert finished.returncode != 0, finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]
    [line] = [line for line in finished.stderr.splitlines() if "worker not started" in line]
    for word in words:
        assert word in line, line
    return line


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru"])
def test_a_worker_against_an_evicting_store_exits_saying_why(policy, settings, tmp_path):
    with RedisServer(free_port(), log_dir=tmp_path,
                     extra_args=["--maxmemory-policy", policy]) as server:
        finished = run_worker(replace(settings, redis_url=server.url))
    assert_refused(finished, f"maxmemory-policy is {policy}", "must be noeviction",
                   "parameter group's maxmemory-policy", "ElastiCache and MemoryDB")


def test_a_store_that_hides_its_policy_is_refused_only_when_required(settings, tmp_path,
                                                                    caplog):
    # A managed service's way: CONFIG is not a command there.
    with RedisServer(free_port(), log_dir=tmp_path,
                     extra_args=["--rename-command", "CONFIG", ""]) as server:
        own = replace(settings, redis_url=server.url)
        assert set(eviction_policies(own.redis_url).values()) == {None}
        finished = run_worker(own, REQUIRE_NOEVICTION="true")
        assert_refused(finished, "does not tell its maxmemory-policy", "REQUIRE_NOEVICTION")
        # Not required: said once, and the check lets the worker start.
        check_eviction_policy(own)
        [warning] = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert "starting all the same" in warning.getMessage()
        with pytest.raises(EvictingStore):
            check_eviction_policy(replace(own, require_noeviction=True))


def test_every_node_of_a_cluster_store_is_checked(redis_cluster):
    client = redis_cluster.client()
    nodes = client.get_nodes()
    assert set(eviction_policies(redis_cluster.url).values()) == {"noeviction"}
    assert len(eviction_policies(redis_cluster.url)) == len(nodes)
    last: ClusterNode = nodes[-1]
    node = client.get_redis_connection(last)
    node.config_set("maxmemory-policy", "volatile-ttl")
    try:
        with pytest.raises(EvictingStore, match=f"volatile-ttl on {last.name}"):
            check_eviction_policy(Settings(redis_url=redis_cluster.url))
    finally:
        node.config_set("maxmemory-policy", "noeviction")
    check_eviction_policy(Settings(redis_url=redis_cluster.url))


def test_a_worker_given_a_cluster_node_as_control_plane_exits_saying_why(settings, redis_cluster):
    # What make run passed on: the control plane derived from a cluster node's URL (db 1),
    # which a cluster node refuses to SELECT; and a cluster node's URL as it is.
    for control_url in (redis_cluster.url.rsplit("/", 1)[0] + "/1", redis_cluster.url):
        finished = run_worker(replace(settings, control_url=control_url))
        assert_refused(finished, "is a Redis Cluster node", "must name a standalone Redis")
    # Derived from REDIS_URL at a cluster node, CONTROL_URL unset.
    derived = replace(settings, redis_url=redis_cluster.url, control_url="")
    env = to_env(derived)
    env.pop("CONTROL_URL")
    finished = subprocess.run([str(BIN / "celery"), "-A", "tasks", "worker", "--pool", "solo"],
                              cwd=ROOT, env={**{k: v for k, v in os.environ.items()
                                                if k != "CONTROL_URL"}, **env},
                              capture_output=True, text=True, timeout=60)
    assert_refused(finished, "CONTROL_URL must name a standalone Redis")
