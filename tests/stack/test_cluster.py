"""The local Redis Cluster (REDIS_CLUSTER=3 make run, the tests) and cluster detection."""
import pytest
import redis
from redis.cluster import RedisCluster

from app.redis_client import check_control_plane, connect, is_cluster
from app.settings import Settings
from stack.cluster import BUS_OFFSET, SLOTS, LocalRedisCluster, free_node_port


def test_three_primaries_serve_every_slot(redis_cluster):
    client = redis_cluster.client(decode_responses=True)
    primaries = [node for node in client.get_nodes() if node.server_type == "primary"]
    assert len(primaries) == 3
    slots = client.cluster_slots()
    assert sum(end - start + 1 for start, end in slots) == SLOTS
    # Keys spread over the primaries and read back through the one client.
    for i in range(30):
        client.set(f"key-{i}", i)
    assert [int(client.get(f"key-{i}")) for i in range(30)] == list(range(30))
    assert len({client.get_node_from_key(f"key-{i}").port for i in range(30)}) == 3


def test_describe_names_each_node_with_its_role(redis_cluster):
    lines = redis_cluster.describe()
    assert len(lines) == 3
    assert all("master" in line and "slots" in line for line in lines)
    assert {int(line.split()[0].rsplit(":", 1)[1]) for line in lines} == set(redis_cluster.ports)


def test_cluster_mode_is_detected_and_gets_a_cluster_client(redis_cluster, redis_server):
    assert is_cluster(redis_cluster.url) and not is_cluster(redis_server.url)
    assert isinstance(connect(redis_cluster.url), RedisCluster)
    standalone = connect(redis_server.url)
    assert isinstance(standalone, redis.Redis) and not isinstance(standalone, RedisCluster)


def test_the_control_plane_must_be_a_standalone_redis(redis_cluster, redis_server):
    with pytest.raises(ValueError, match="CONTROL_URL must name a standalone Redis"):
        check_control_plane(Settings(redis_url=redis_cluster.url))
    with pytest.raises(ValueError, match="is a Redis Cluster node"):
        check_control_plane(Settings(redis_url=redis_server.url, control_url=redis_cluster.url))
    check_control_plane(Settings(redis_url=redis_cluster.url, control_url=redis_server.url))
    check_control_plane(Settings(redis_url=redis_server.url))


def test_node_ports_leave_room_for_the_cluster_bus():
    port = free_node_port()
    assert port + BUS_OFFSET <= 65535


def test_a_cluster_needs_three_primaries():
    with pytest.raises(ValueError, match="at least 3 primaries"):
        LocalRedisCluster(primaries=2)
