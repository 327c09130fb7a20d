"""What counts as a writable store, from INFO alone (no Flask, no CONFIG GET)."""
import pytest

from app.store_health import REQUIRED_POLICY, StoreHealth, assess, assess_nodes, problems

MIB = 1024 * 1024


def info(**fields):
    """An INFO of a healthy primary with 10 MiB used of 100 MiB, fields overriding."""
    return {"role": "master", "loading": 0, "used_memory": 10 * MIB,
            "mem_not_counted_for_evict": 0, "maxmemory": 100 * MIB,
            "maxmemory_policy": "noeviction", "rdb_last_bgsave_status": "ok",
            "aof_last_write_status": "ok", **fields}


def test_a_healthy_primary_is_writable_with_its_headroom():
    state = assess(info())
    assert state.writable and state.problems == ()
    assert state.headroom_bytes == 90 * MIB
    assert state.headroom_ratio == pytest.approx(0.9)
    assert state.policy == REQUIRED_POLICY


@pytest.mark.parametrize("fields, reason", [
    ({"role": "slave"}, "read-only"),
    ({"loading": 1}, "loading"),
    ({"used_memory": 100 * MIB + 1}, "memory full"),
    ({"rdb_last_bgsave_status": "err"}, "persistence failing: rdb_last_bgsave_status err"),
    ({"aof_last_write_status": "err"}, "persistence failing: aof_last_write_status err"),
    ({"maxmemory_policy": "volatile-lru"}, "eviction policy volatile-lru"),
    ({"maxmemory_policy": "allkeys-lru"}, "eviction policy allkeys-lru"),
])
def test_each_refusal_is_named(fields, reason):
    found = problems(info(**fields))
    assert len(found) == 1 and found[0].startswith(reason), found
    assert not assess(info(**fields)).writable


def test_memory_is_compared_as_redis_does_without_buffers_not_counted():
    # Redis refuses writes only when used_memory less its replication/AOF buffers exceeds maxmemory.
    at_limit = info(used_memory=100 * MIB + 5000, mem_not_counted_for_evict=5000)
    assert assess(at_limit).writable and assess(at_limit).headroom_bytes == 0
    over = info(used_memory=100 * MIB + 5001, mem_not_counted_for_evict=5000)
    assert problems(over) == [f"memory full: used_memory {100 * MIB + 1} > maxmemory {100 * MIB}"]
    assert assess(over).headroom_bytes == 0 and assess(over).headroom_ratio == 0


def test_without_maxmemory_there_is_no_headroom_to_report():
    state = assess(info(maxmemory=0, used_memory=10 ** 12))
    assert state.writable and state.headroom_bytes is None and state.headroom_ratio is None


def test_a_policy_not_reported_is_unknown_not_a_refusal():
    fields = info()
    del fields["maxmemory_policy"]
    state = assess(fields)
    assert state.writable and state.policy == "unknown"


def test_a_cluster_names_each_node_and_reports_the_tightest():
    state = assess_nodes({"a:1": info(), "b:2": info(used_memory=80 * MIB),
                          "c:3": info(role="slave", maxmemory_policy="volatile-lru")})
    assert [problem.split(":")[0] + ":" + problem.split(":")[1] for problem in state.problems] \
        == ["c:3", "c:3"]
    assert state.headroom_bytes == 20 * MIB
    assert state.policy == "noeviction,volatile-lru"


def test_a_real_redis_with_defaults_is_writable(redis_server):
    fresh = StoreHealth.from_url(redis_server.url, timeout=0.5)
    infos = fresh.infos()
    assert list(infos) == ["store"] and infos["store"]["role"] == "master"
    assert fresh.state().writable and fresh.state().policy == REQUIRED_POLICY


def test_a_real_cluster_is_read_node_by_node(redis_cluster):
    infos = StoreHealth.from_url(redis_cluster.url, timeout=0.5).infos()
    assert len(infos) == 3 and all(node["role"] == "master" for node in infos.values())
