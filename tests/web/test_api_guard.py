"""The API under real gunicorn against clients that hold connections, a stalled Redis and
invented methods: /health stays fast, the metrics' series stay bounded."""
from __future__ import annotations

import socket
import string
import threading
import time
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from stack.services import RedisServer, free_port
from web.metrics import STANDARD_METHODS

HALF_SENT_CONNECTIONS = 100
INVENTED_METHODS = 1000
# /health must answer within this, whatever clients or Redis do.
HEALTH_BUDGET = 1.0


def timed_health(api: str) -> tuple[requests.Response | None, float]:
    """GET /health and its duration; no response (inf) when it took longer than 5 s."""
    started = time.monotonic()
    try:
        response = requests.get(f"{api}/health", timeout=5)
    except requests.Timeout:
        return None, float("inf")
    return response, time.monotonic() - started


def half_sent(api: str, count: int) -> list[socket.socket]:
    """count connections, each having sent half a request line and nothing more."""
    address = urlsplit(api)
    sockets = []
    for _ in range(count):
        connection = socket.create_connection((address.hostname, address.port), timeout=5)
        connection.sendall(b"GET /stats/glo")
        sockets.append(connection)
    return sockets


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own: it gets paused."""
    server = RedisServer(free_port(), log_dir=tmp_path).start()
    yield server
    server.cleanup()


def test_half_sent_requests_do_not_delay_health(api_server):
    assert timed_health(api_server)[0].status_code == 200  # warm: every worker is up
    held = half_sent(api_server, HALF_SENT_CONNECTIONS)
    try:
        time.sleep(0.5)  # every connection accepted and waiting for the rest of its line
        for _ in range(5):  # several, so every worker process is asked
            response, elapsed = timed_health(api_server)
            assert elapsed < HEALTH_BUDGET, f"/health took {elapsed:.1f} s"
            assert response.status_code == 200
    finally:
        for connection in held:
            connection.close()


def test_stalled_redis_does_not_delay_health(settings, own_redis, start_api):
    api = start_api(replace(settings, redis_url=own_redis.url))
    assert timed_health(api)[0].status_code == 200
    pause_seconds = 4
    with redis.Redis.from_url(own_redis.url) as admin:
        admin.execute_command("CLIENT", "PAUSE", pause_seconds * 1000, "ALL")
    paused_at = time.monotonic()
    # Requests that wait on the paused Redis, more than the API has workers.
    waiting = [threading.Thread(target=requests.get, args=(f"{api}/stats/global",),
                                kwargs={"timeout": 15}, daemon=True) for _ in range(10)]
    for thread in waiting:
        thread.start()
    time.sleep(0.3)
    response, elapsed = timed_health(api)
    assert time.monotonic() - paused_at < pause_seconds, "the pause ended before the check"
    assert elapsed < HEALTH_BUDGET, f"/health took {elapsed:.1f} s"
    assert response.status_code == 503
    assert response.json()["down"] == ["redis"]
    assert response.json()["redis"].startswith("unavailable")
    for thread in waiting:
        thread.join(15)


def test_more_requests_waiting_on_redis_than_its_default_pool_all_answer(settings, own_redis,
                                                                          start_api):
    # redis-py's pool refuses a 101st connection by default; a gevent worker may have many
    # more requests in flight, each holding one while Redis is slow.
    api = start_api(replace(settings, redis_url=own_redis.url))
    assert requests.get(f"{api}/stats/global", timeout=5).status_code == 200
    in_flight = 2 * 150  # 150 for each of the test's 2 workers, and more for either
    with redis.Redis.from_url(own_redis.url) as admin:
        admin.execute_command("CLIENT", "PAUSE", 2000, "ALL")
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(
        requests.get(f"{api}/stats/global", timeout=15).status_code)) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(statuses) == in_flight
    assert set(statuses) == {200}, f"{statuses.count(503)} answered 503"


def series(api: str, family: str) -> set[tuple]:
    """Label sets of one metric family in the API's /metrics."""
    text = requests.get(f"{api}/metrics", timeout=10).text
    return {tuple(sorted(s.labels.items())) for f in text_string_to_metric_families(text)
            if f.name == family for s in f.samples if s.name == family + "_total"
            or s.name == family}


def invented(n: int) -> str:
    """The n-th made-up method: upper-case letters only, as HTTP tokens allow."""
    letters = ""
    while True:
        n, digit = divmod(n, 26)
        letters += string.ascii_uppercase[digit]
        if not n:
            return "ZZ" + letters


def test_invented_methods_and_paths_add_at_most_one_series(api_server):
    series(api_server, "api_requests")  # the scrape itself is counted from the next one on
    before = series(api_server, "api_requests")
    methods = [invented(n) for n in range(INVENTED_METHODS)]
    assert not STANDARD_METHODS & set(methods)
    with requests.Session() as session:
        statuses = {session.request(method, f"{api_server}/stats/global", timeout=10).status_code
                    for method in methods}
        # Raw paths that match no route: one route label value for all of them.
        statuses |= {session.get(f"{api_server}/no/such/{n}", timeout=10).status_code
                     for n in range(100)}
    assert statuses == {405, 404}  # gunicorn passed every invented method to the app
    added = series(api_server, "api_requests") - before
    assert added == {(("method", "other"), ("route", "unmatched"), ("status", "405")),
                     (("method", "GET"), ("route", "unmatched"), ("status", "404"))}


def test_each_connection_ends_after_its_response(api_server):
    """Every answer says Connection: close and the server closes the connection after it
    (web/gunicorn_worker.py): the next request comes on a new connection, which the least
    busy worker accepts."""
    address = urlsplit(api_server)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):  # b"" once the server has closed it
            received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 200") and "\r\nconnection: close" in head, head


def test_a_half_sent_first_request_is_closed_after_the_keepalive_timeout(api_server):
    """The first request of a connection is still read under gunicorn's keepalive timeout,
    so a client that never finishes it does not hold its greenlet for ever."""
    keepalive = 2  # web/gunicorn.conf.py's keepalive
    [sock] = half_sent(api_server, 1)
    try:
        sock.settimeout(keepalive * 5)
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server, nothing answered
        assert time.monotonic() - started < keepalive * 3
    finally:
        sock.close()
