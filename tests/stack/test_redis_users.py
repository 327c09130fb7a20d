"""The Redis ACL users of make run and compose: the workers write, the API only reads."""
from __future__ import annotations

import os
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import redis
import requests

from app.analytics import Period, top_users
from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import Store, lua
from conftest import order_body, wait_for
from stack import redis_users
from stack.services import RedisServer, free_port


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    """A redis-server with the stack's users, each with a fresh password."""
    passwords = redis_users.new_passwords()
    server = RedisServer(free_port(), log_dir=tmp_path_factory.mktemp("acl-redis"),
                         extra_args=redis_users.server_args(passwords))
    server.start()
    yield server, passwords
    server.cleanup()


def url(acl_redis, user: str) -> str:
    server, passwords = acl_redis
    return redis_users.url_for(server.url, user, passwords[user])


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's open sockets, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def count(store: Store, bodies: list[str]) -> list[str]:
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    return store.apply([evaluate(Incoming(body, f"m-{i}-{body[:20]}", now), Settings(), now=now)
                        for i, body in enumerate(bodies)])


@pytest.fixture
def worker_store(acl_redis) -> Store:
    store = Store.from_url(url(acl_redis, redis_users.WORKER_USER))
    store.redis.flushdb()
    return store


def test_without_a_password_redis_refuses_every_command(acl_redis):
    server, _ = acl_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(server.url).get("global:stats")


def test_the_api_user_reads_but_cannot_write(acl_redis, worker_store):
    assert count(worker_store, [order_body("O1", "U1", day="2024-12-01"),
                                order_body("O2", "U2", day="2024-12-02")]) == ["counted", "counted"]
    before = {key: worker_store.redis.dump(key) for key in worker_store.redis.keys("*")}

    api = Store.from_url(url(acl_redis, redis_users.API_USER))
    assert api.ping()
    assert api.global_stats() == worker_store.global_stats()
    assert api.outcomes()["counted"] == 2
    # A ranking over two days reads both, page by page.
    ranked = top_users(api, 5, period=Period(date(2024, 12, 1), date(2024, 12, 2)))
    assert [row.user_id for row in ranked] == ["U1", "U2"]
    assert api.redis.info("server")["redis_version"]

    for write in (lambda: api.redis.set("global:stats", "x"),
                  lambda: api.redis.hincrby("global:stats", "total_orders", 1),
                  lambda: api.redis.delete("user:U1"),
                  lambda: api.redis.flushdb(),
                  lambda: api.redis.publish("celery", "x"),
                  lambda: api.redis.config_set("appendonly", "no"),
                  lambda: count(api, [order_body("O3", "U3", day="2024-12-03")])):
        # NOPERM, or from inside a script "The user executing the script can't run this".
        with pytest.raises(redis.ResponseError, match="no permissions|can't run this command"):
            write()
    # The refused script wrote nothing before its first write was refused.
    assert {key: worker_store.redis.dump(key) for key in worker_store.redis.keys("*")} == before


BUSY = "while true do end"


def test_the_api_user_runs_the_projects_read_functions_and_no_script_of_its_own(
        acl_redis, worker_store):
    assert count(worker_store, [order_body("O1", "U1", day="2024-12-01"),
                                order_body("O2", "U2", day="2024-12-01"),
                                order_body("O3", "U1", day="2024-12-02")]) == ["counted"] * 3
    lua.install_read_functions(worker_store.redis)  # as a worker does at its start
    api = Store.from_url(url(acl_redis, redis_users.API_USER))
    # All-time and one day: each shard's top through the ranking function, with FCALL_RO.
    assert [(row.user_id, row.order_count) for row in top_users(api, 5, by="orders")] == [
        ("U1", 2), ("U2", 1)]
    assert [row.user_id for row in top_users(api, 5, period=Period(date(2024, 12, 2),
                                                                   date(2024, 12, 2)))] == ["U1"]

    # What the workers' user may load, the API's may still not run.
    worker_store.redis.function_load(
        "#!lua name=writer\nredis.register_function('touch', function(keys) "
        "return redis.call('SET', keys[1], '1') end)")
    writer_sha = worker_store.redis.script_load("return redis.call('SET', KEYS[1], '1')")
    ranked = lua.ReadFunction(api.redis, "ranked").name
    own_function = ("#!lua name=mine\nredis.register_function{function_name='spin', "
                    f"callback=function() {BUSY} end, flags={{'no-writes'}}}}")
    refused = {
        "EVAL": lambda: api.redis.eval(BUSY, 0),
        "EVAL_RO": lambda: api.redis.eval_ro(BUSY, 0),
        "EVALSHA": lambda: api.redis.evalsha(writer_sha, 1, "k"),
        "EVALSHA_RO": lambda: api.redis.evalsha_ro(writer_sha, 1, "k"),
        "SCRIPT LOAD": lambda: api.redis.script_load(BUSY),
        "SCRIPT FLUSH": lambda: api.redis.script_flush(),
        "FUNCTION LOAD": lambda: api.redis.function_load(own_function),
        "FUNCTION DELETE": lambda: api.redis.function_delete("writer"),
        "FCALL of a write function": lambda: api.redis.fcall("touch", 1, "k"),
        "FCALL of the read function": lambda: api.redis.fcall(ranked, 1, "k", 1),
    }
    for name, attempt in refused.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
            pytest.fail(f"{name} went through")
    # FCALL_RO runs only functions flagged no-writes.
    with pytest.raises(redis.ResponseError, match="write flag"):
        api.redis.fcall_ro("touch", 1, "k")
    assert worker_store.redis.get("k") is None
    assert {dict(zip(lib[::2], lib[1::2]))["library_name"]
            for lib in worker_store.redis.function_list()} == {
        "writer", f"orders_read_{lua.read_library()[1]}"}
    worker_store.redis.function_delete("writer")


def test_a_store_without_the_read_functions_is_named_and_the_next_write_installs_them(
        acl_redis, worker_store):
    count(worker_store, [order_body("O1", "U1", day="2024-12-01")])
    # What a restarted Redis without persistence, or a flush, leaves.
    worker_store.redis.function_flush()
    worker_store.redis.script_flush()
    api = Store.from_url(url(acl_redis, redis_users.API_USER))
    with pytest.raises(lua.ReadFunctionsMissing, match="a worker installs them"):
        top_users(api, 5)
    # A worker's next batch finds its script gone, loads it and installs the functions.
    count(worker_store, [order_body("O2", "U2", day="2024-12-01")])
    assert [row.user_id for row in top_users(api, 5)] == ["U1", "U2"]


@pytest.fixture
def settings(settings, acl_redis):
    """The session's queues with the ACL Redis: workers' URL and the API's own."""
    worker_url = url(acl_redis, redis_users.WORKER_USER)
    Store.from_url(worker_url).redis.flushdb()
    return replace(settings, redis_url=worker_url, api_redis_url=url(acl_redis,
                                                                     redis_users.API_USER))


def test_the_api_under_gunicorn_serves_stats_with_the_read_only_user(settings, api_server):
    worker_store = Store.from_url(settings.redis_url)
    count(worker_store, [order_body("O1", "U1", day="2024-12-01"),
                         order_body("O2", "U1", day="2024-12-02"),
                         order_body("O3", "U2", day="2024-12-02")])
    expected = worker_store.global_stats()

    assert requests.get(f"{api_server}/stats/global", timeout=10).json() == {
        "total_orders": expected.total_orders, "total_revenue": expected.total_revenue_cents / 100}
    assert requests.get(f"{api_server}/users/U1/stats", timeout=10).json()["order_count"] == 2
    ranking = requests.get(f"{api_server}/stats/top-users",
                           params={"from": "2024-12-01", "to": "2024-12-02", "by": "orders"},
                           timeout=10)
    assert ranking.status_code == 200, ranking.text
    daily = requests.get(f"{api_server}/stats/daily",
                         params={"from": "2024-12-01", "to": "2024-12-02"}, timeout=10)
    assert daily.status_code == 200, daily.text
    assert requests.get(f"{api_server}/health", timeout=10).json()["redis"] == "ok"
    # The live page's figures: every read of them is allowed to the read-only user.
    figures = requests.get(f"{api_server}/dashboard/figures", timeout=10)
    assert figures.status_code == 200, figures.text
    assert figures.json()["outcomes"] == worker_store.outcomes()
    # A store no worker prepared: the rankings say so, with a 503.
    lua.install_read_functions(worker_store.redis)
    assert requests.get(f"{api_server}/stats/top-users", timeout=10).status_code == 200
    worker_store.redis.function_flush()
    missing = requests.get(f"{api_server}/stats/top-users", timeout=10)
    assert missing.status_code == 503
    assert "read functions are not installed" in missing.json()["error"]
    lua.install_read_functions(worker_store.redis)
    assert 'orders_dependency_up{dependency="redis"} 1.0' in requests.get(
        f"{api_server}/metrics", timeout=10).text
    # Every connection the API opened is the read-only user's (one still in its handshake,
    # nothing sent yet, shows as the disabled default user: the heartbeats' listener starts
    # with the first /metrics of each process). This process's own connections (its
    # stores, some not yet garbage-collected) are the worker user's.
    ours = local_ports(os.getpid())
    users = {client["user"] for client in worker_store.redis.client_list()
             if int(client["addr"].rsplit(":", 1)[1]) not in ours
             and (client["user"], client["cmd"]) != ("default", "NULL")}
    assert users == {redis_users.API_USER}


def test_the_read_only_api_user_hears_the_workers_heartbeats(settings, start_worker,
                                                             api_server):
    start_worker()

    def live():
        text = requests.get(f"{api_server}/metrics", timeout=10).text
        return 'orders_workers_live 1.0' in text and text

    text = wait_for(live, timeout=30, message="the worker live in /metrics")
    assert 'orders_dependency_up{dependency="control_plane"} 1.0' in text
