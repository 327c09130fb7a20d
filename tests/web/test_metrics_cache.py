"""A slow SQS never holds an API worker: /metrics and /health read cached SQS figures."""
from __future__ import annotations

import time
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app import sqs
from conftest import wait_for
from tcp_proxy import TcpProxy

REFRESH_SECONDS = 1
# SQS answers this late while slowed: far beyond the refresher's timeout.
SLOW_SQS_SECONDS = 30


def samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def proxy(sqs_server):
    endpoint = urlsplit(sqs_server.endpoint_url)
    proxy = TcpProxy(endpoint.hostname, endpoint.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def settings(settings, proxy):
    """The test's queues, with the API reaching SQS through the proxy."""
    return replace(settings, sqs_endpoint_url=proxy.url, metrics_sqs_interval=REFRESH_SECONDS)


def timed_get(url: str, **params) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.get(url, params=params, timeout=SLOW_SQS_SECONDS)
    return response, time.monotonic() - started


def recovered(api: str) -> bool:
    """SQS up again in /metrics, with figures read within the last two refreshes."""
    found = samples(requests.get(f"{api}/metrics", timeout=10).text)
    return (found.get(("orders_dependency_up", (("dependency", "sqs"),))) == 1
            and found[("orders_sqs_figures_age_seconds", ())] <= 2 * REFRESH_SECONDS + 2)


def fast_sqs_up(api: str) -> float | None:
    """sqs up in /metrics, which must answer fast whatever SQS does."""
    metrics, elapsed = timed_get(f"{api}/metrics")
    assert elapsed < 2, f"/metrics took {elapsed:.1f} s"
    return samples(metrics.text).get(("orders_dependency_up", (("dependency", "sqs"),)))


def test_slow_sqs_leaves_metrics_and_other_routes_fast(settings, sqs_client, proxy, api_server):
    sqs.send_bodies(sqs_client, settings.orders_url, ["waiting"])
    visible = ("orders_queue_messages", (("queue", settings.orders_queue), ("state", "visible")))
    wait_for(lambda: samples(requests.get(f"{api_server}/metrics", timeout=10).text).get(visible)
             == 1, timeout=30, message="the cached depth to show the waiting message")
    assert requests.get(f"{api_server}/health", timeout=10).json()["sqs"] == "ok"

    proxy.delay = SLOW_SQS_SECONDS
    # Each gunicorn worker finds out on its own next refresh; ten answers in a row from
    # whichever workers took them. No request waits meanwhile either.
    wait_for(lambda: all(fast_sqs_up(api_server) == 0 for _ in range(10)), timeout=30,
             message="/metrics to report SQS down")
    for _ in range(4):
        metrics, elapsed = timed_get(f"{api_server}/metrics")
        found = samples(metrics.text)
        assert elapsed < 2, f"/metrics took {elapsed:.1f} s"
        assert found[("orders_dependency_up", (("dependency", "sqs"),))] == 0
        assert found[("orders_dependency_up", (("dependency", "redis"),))] == 1
        assert visible not in found  # no stale depth shown as current
        stats, elapsed = timed_get(f"{api_server}/stats/global")
        assert stats.status_code == 200 and elapsed < 2
        health, elapsed = timed_get(f"{api_server}/health")
        assert health.status_code == 503 and health.json()["down"] == ["sqs"] and elapsed < 2

    proxy.delay = 0
    wait_for(lambda: all(recovered(api_server) for _ in range(10)), timeout=30,
             message="SQS figures to come back, fresh")
