"""The local Redis Cluster (REDIS_CLUSTER=3 make run, the tests) and cluster detection."""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from app.analytics import top_users
from app.orders import Incoming, evaluate
from app.redis_client import check_control_plane, connect, is_cluster
from app.settings import Settings, to_env
from app.store import Store, lua, top_users_key
from conftest import ephemeral_ports, order_body
from stack import redis_users
from stack.cluster import BUS_OFFSET, SLOTS, LocalRedisCluster, free_node_ports
from stack.services import PROJECT_ROOT, free_port


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


def test_node_ports_and_their_bus_ports_lie_outside_the_ephemeral_range():
    """An outgoing connection cannot take a node's port between its pick and redis-server's bind."""
    client_ports = ephemeral_ports()
    for _ in range(50):
        first = free_node_ports(6)
        for port in range(first, first + 6):
            assert port not in client_ports and port + BUS_OFFSET not in client_ports
            assert 1024 <= port and port + BUS_OFFSET <= 65535


def test_a_cluster_needs_three_primaries():
    with pytest.raises(ValueError, match="at least 3 primaries"):
        LocalRedisCluster(primaries=2)


def test_a_worker_on_a_cluster_store_without_control_url_exits_saying_why(redis_cluster):
    env = {**os.environ, **to_env(Settings(redis_url=redis_cluster.url))}
    env.pop("CONTROL_URL", None)
    finished = subprocess.run([str(Path(sys.executable).parent / "celery"), "-A", "tasks",
                               "worker", "--pool", "solo"], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode != 0
    assert "worker not started" in finished.stderr
    assert "CONTROL_URL must name a standalone Redis" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_cluster_with_the_stacks_users_lets_the_api_read_and_not_write(tmp_path):
    passwords = redis_users.new_passwords()
    worker = (redis_users.WORKER_USER, passwords[redis_users.WORKER_USER])
    with LocalRedisCluster(3, 1, log_dir=tmp_path, admin=worker,
                           server_args=redis_users.server_args(passwords)) as cluster:
        # Replicas synced with the worker user's password: the default user is off.
        assert len(cluster.describe()) == 6 and sum("slave" in n for n in cluster.describe()) == 3
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=cluster.ports[0]).ping()
        writer = RedisCluster.from_url(redis_users.url_for(cluster.url, *worker))
        keys = [f"key-{i}" for i in range(12)]
        for key in keys:
            writer.set(key, key)
        api_url = redis_users.url_for(cluster.url, redis_users.API_USER,
                                      passwords[redis_users.API_USER])
        reader = connect(api_url)
        assert isinstance(reader, RedisCluster)
        assert [reader.get(key) for key in keys] == [key.encode() for key in keys]
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.set(keys[0], "changed")

        # The rankings' function, installed on every primary by the workers' user, runs
        # for the API's wherever a shard's slot lives; a script of its own does not.
        worker_store = Store.from_url(redis_users.url_for(cluster.url, *worker))
        users = [f"U{i}" for i in range(20)]
        worker_store.apply([evaluate(Incoming(order_body(f"O{i}", user), f"m{i}"), Settings())
                            for i, user in enumerate(users)])
        assert len({reader.keyslot(top_users_key("spend", shard=worker_store.user_shard(u)))
                    for u in users}) > 1
        lua.install_read_functions(worker_store.redis)
        assert {row.user_id for row in top_users(Store.from_url(api_url), 20)} == set(users)
        for attempt in (lambda: reader.script_load("while true do end"),
                        lambda: reader.eval("return 1", 1, keys[0])):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()


def test_primary_ports_name_the_primaries(redis_cluster):
    client = redis_cluster.client()
    primaries = {node.port for node in client.get_nodes() if node.server_type == "primary"}
    assert set(redis_cluster.primary_ports()) == primaries and len(primaries) == 3


def test_a_replica_added_to_a_primary_syncs_with_it(tmp_path):
    with LocalRedisCluster(3, log_dir=tmp_path) as cluster:
        primary = cluster.primary_ports()[0]
        node = cluster.add_replica(primary)
        with redis.Redis(port=node.port, decode_responses=True) as replica:
            info = replica.info("replication")
        assert (info["role"], info["master_port"], info["master_link_status"]) == (
            "slave", primary, "up")
        assert cluster.primary_ports() == sorted(cluster.ports[:3])


def test_a_worker_starts_while_its_redis_does_not_answer_yet(settings, start_worker):
    down = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                   control_url=settings.control_plane_url)
    worker = start_worker(settings=down)
    assert "could not check the control plane" in worker.log_path.read_text()
