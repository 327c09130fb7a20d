"""/health answers 503 naming why a real Redis refuses writes, read as the API's ACL user;
/metrics shows the writability, memory headroom and eviction policy."""
from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for
from stack import redis_users
from stack.services import RedisServer, free_port

MIB = 1024 * 1024


@pytest.fixture
def acl_redis(tmp_path):
    """A redis-server of this test's own with the stack's worker and API users."""
    passwords = redis_users.new_passwords()
    data = tmp_path / "data"  # its snapshots' directory, which a test removes
    data.mkdir()
    server = RedisServer(free_port(), log_dir=tmp_path, extra_args=[
        "--dir", str(data), *redis_users.server_args(passwords)]).start()
    urls = {user: redis_users.url_for(server.url, user, passwords[user])
            for user in redis_users.USER_RULES}
    yield server, urls
    server.cleanup()


@pytest.fixture
def admin(acl_redis):
    """A client with the worker's rights, which changes the server's configuration."""
    with redis.Redis.from_url(acl_redis[1][redis_users.WORKER_USER], decode_responses=True) \
            as client:
        yield client


@pytest.fixture
def api(settings, acl_redis, start_api):
    """The API under gunicorn, reading as the API user."""
    return start_api(replace(settings, redis_url=acl_redis[1][redis_users.WORKER_USER],
                             api_redis_url=acl_redis[1][redis_users.API_USER]))


def health(api: str) -> tuple[int, dict]:
    response = requests.get(f"{api}/health", timeout=5)
    return response.status_code, response.json()


def metrics(api: str) -> dict[tuple, float]:
    text = requests.get(f"{api}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def store_metrics(api: str) -> dict[tuple, float]:
    return {key: value for key, value in metrics(api).items()
            if key[0].startswith("orders_store_")}


def counted_memory(admin) -> int:
    memory = admin.info("memory")
    return memory["used_memory"] - memory["mem_not_counted_for_evict"]


def test_full_memory_gives_503_naming_it_until_raised(api, admin):
    assert health(api) == (200, {"status": "ok", "down": [], "redis": "ok", "sqs": "ok"})
    admin.mset({f"filler:{n}": "x" * 1000 for n in range(2000)})
    admin.config_set("maxmemory", counted_memory(admin) // 2)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("one-more", "x")  # the server really refuses writes now
    status, body = health(api)
    assert status == 503 and body["down"] == ["redis"]
    assert body["redis"].startswith("not writable: memory full"), body
    found = store_metrics(api)
    assert found[("orders_store_writable", ())] == 0
    assert found[("orders_store_memory_headroom_bytes", ())] == 0
    assert found[("orders_store_memory_headroom_ratio", ())] == 0

    limit = counted_memory(admin) + 64 * MIB
    admin.config_set("maxmemory", limit)
    assert health(api)[0] == 200
    found = store_metrics(api)
    headroom = limit - counted_memory(admin)
    assert found[("orders_store_writable", ())] == 1
    assert found[("orders_store_memory_headroom_bytes", ())] == pytest.approx(headroom, abs=MIB)
    assert found[("orders_store_memory_headroom_ratio", ())] == pytest.approx(
        headroom / limit, abs=MIB / limit)


def test_a_replica_gives_503_naming_read_only(api, admin, tmp_path):
    primary = RedisServer(free_port(), log_dir=tmp_path, name="primary").start()
    try:
        admin.replicaof("127.0.0.1", primary.port)
        status, body = health(api)
        assert status == 503 and body["redis"].startswith("not writable: read-only"), body
        assert store_metrics(api)[("orders_store_writable", ())] == 0
        admin.replicaof("NO", "ONE")
        assert health(api)[0] == 200
    finally:
        primary.cleanup()


def test_an_eviction_policy_set_at_run_time_is_named(api, admin):
    policy = ("orders_store_maxmemory_policy_info", (("policy", "noeviction"),))
    assert store_metrics(api)[policy] == 1
    admin.config_set("maxmemory-policy", "volatile-lru")
    status, body = health(api)
    assert status == 503 and "eviction policy volatile-lru" in body["redis"], body
    found = store_metrics(api)
    assert found == {("orders_store_writable", ()): 0,
                     ("orders_store_maxmemory_policy_info", (("policy", "volatile-lru"),)): 1}


def test_failing_persistence_gives_503_naming_it(api, admin, tmp_path):
    shutil.rmtree(tmp_path / "data")  # the next snapshot cannot be written
    admin.bgsave()
    wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", timeout=10,
             message="the snapshot to fail")
    status, body = health(api)
    assert status == 503, body
    assert body["redis"] == "not writable: persistence failing: rdb_last_bgsave_status err"
