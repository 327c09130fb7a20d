"""The statistics API on a real Redis: shapes, aliases, errors as JSON."""
import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from app.orders import Incoming, evaluate
from app.settings import Settings
from conftest import order
from stack.services import free_port
from web import create_app
from web.blueprint import ArgumentsParser
from web.schemas import TopUsersArgsSchema


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


def count(store, body: dict):
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    evaluated = evaluate(Incoming(json.dumps(body), body["order_id"]), Settings(), now=now)
    assert store.apply([evaluated]) == ["counted"]


def test_user_stats_have_the_documented_shape(client, store):
    count(store, order("O1", "U5678", lines=[("P1", 1, 9999)]))
    # A unit price finer than a cent: 9 x 73.3233 = 659.9097, rounded once per line.
    count(store, order("O2", "U5678", order_value=659.91,
                       items=[{"product_id": "P2", "quantity": 9, "price_per_unit": 73.3233}]))
    expected = {"user_id": "U5678", "order_count": 2, "total_spend": 759.9}
    for path in ("/users/U5678/stats", "/user/U5678/stats"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.get_json() == expected


def test_global_stats_are_zero_when_empty_and_exact_after(client, store):
    assert client.get("/stats/global").get_json() == {"total_orders": 0, "total_revenue": 0}
    count(store, order("O1", "U1", lines=[("P1", 1, 10)]))
    count(store, order("O2", "U2", lines=[("P1", 2, 10)]))
    for path in ("/stats/global", "/global/stats"):
        assert client.get(path).get_json() == {"total_orders": 2, "total_revenue": 0.3}


@pytest.mark.parametrize("user_id, path", [
    ("a/b", "/users/a%2Fb/stats"), ("a:b", "/users/a:b/stats"), ("é 1", "/users/%C3%A9%201/stats"),
    ("*", "/users/*/stats")])
def test_odd_user_ids_reach_their_own_stats(client, store, user_id, path):
    count(store, order("O-" + user_id, user_id))
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json()["user_id"] == user_id


def test_unknown_user_is_a_json_404(client):
    response = client.get("/users/nobody/stats")
    assert response.status_code == 404
    assert response.is_json and "nobody" in response.get_json()["error"]


@pytest.mark.parametrize("method, path, status", [
    ("get", "/no/such/page", 404), ("post", "/stats/global", 405), ("delete", "/users/U1/stats", 405)])
def test_errors_are_json_not_html(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.is_json
    assert response.get_json()["status"] == status


def test_health_is_ok_when_redis_and_sqs_answer(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "redis": "ok", "sqs": "ok", "down": []}


def test_redis_down_gives_503_json_naming_it(settings):
    dead = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = create_app(dead).test_client()
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["down"] == ["redis"]
    stats = client.get("/stats/global")
    assert stats.status_code == 503
    assert "Redis" in stats.get_json()["error"]


def test_sqs_down_is_named_by_health(settings):
    dead = replace(settings, sqs_endpoint_url=f"http://127.0.0.1:{free_port()}")
    response = create_app(dead).test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["down"] == ["sqs"]


def test_openapi_document_lists_every_route(client):
    spec = client.get("/openapi.json").get_json()
    assert {"/users/{user_id}/stats", "/user/{user_id}/stats", "/stats/global",
            "/global/stats", "/health"} <= set(spec["paths"])


def test_requests_without_a_query_string_get_the_schemas_answer_each_time(client):
    """ArgumentsParser loads an empty query string once per schema; what it answers must be
    what webargs answers: defaults, and a 422 each time for a required argument."""
    for _ in range(2):
        missing = client.get("/stats/daily")
        assert missing.status_code == 422
        assert sorted(missing.get_json()["errors"]) == ["from", "to"]
        ranking = client.get("/stats/top-users").get_json()
        assert (ranking["n"], ranking["by"], ranking["period"]) == (10, "spend", None)
    # With arguments in between, the next request without any is all-time again.
    assert client.get("/stats/top-users?n=2&by=orders").get_json()["n"] == 2
    assert client.get("/stats/top-users").get_json()["n"] == 10


def test_the_cached_arguments_are_a_copy_for_each_request(settings):
    """A view that changes its arguments cannot change the next request's."""
    app = create_app(settings)
    parser, schema = ArgumentsParser(), TopUsersArgsSchema()
    with app.test_request_context("/stats/top-users"):
        first = parser.parse(schema, location="query")
        first["n"] = 99
        second = parser.parse(schema, location="query")
    assert second == {"n": 10, "by": "spend", "period": None}
    assert second is not first
