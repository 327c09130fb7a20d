"""The Redis ACL users of make run and compose: the workers write, the API only reads."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timezone

import pytest
import redis
import requests

from app.analytics import Period, top_users
from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import Store
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
    assert 'orders_dependency_up{dependency="redis"} 1.0' in requests.get(
        f"{api_server}/metrics", timeout=10).text
    # Every connection the API opened is the read-only user's (one still in its handshake,
    # nothing sent yet, shows as the disabled default user: the heartbeats' listener starts
    # with the first /metrics of each process).
    users = {client["user"] for client in worker_store.redis.client_list()
             if client["id"] != str(worker_store.redis.client_id())
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
