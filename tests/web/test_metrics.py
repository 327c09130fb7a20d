"""/metrics: valid Prometheus text whose counters match what happened."""
from datetime import datetime, timezone

import requests
from prometheus_client.parser import text_string_to_metric_families

from app import sqs
from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import rejected_key
from conftest import order_body, wait_for


def samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_outcomes_queue_depth_and_requests(settings, store, sqs_client, api_server):
    good = order_body("O1", day="2024-12-01")
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    sent = datetime(2024, 12, 31, tzinfo=timezone.utc)
    store.apply([evaluate(Incoming(body, f"m{i}", sent), Settings(), now=now)
                 for i, body in enumerate([good, good, "junk"])])
    sqs.send_bodies(sqs_client, settings.orders_url, ["waiting-1", "waiting-2"])
    for _ in range(3):
        requests.get(f"{api_server}/users/U1/stats")
    requests.get(f"{api_server}/users/nobody/stats")

    def scrape():
        response = requests.get(f"{api_server}/metrics")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return samples(response.text)

    # Queue depths come from each API process's cache, refreshed every METRICS_SQS_INTERVAL.
    visible = ("orders_queue_messages", (("queue", settings.orders_queue), ("state", "visible")))
    found = wait_for(lambda: (f := scrape()).get(visible) == 2 and f,
                     timeout=4 * settings.metrics_sqs_interval, message="the cached depth")
    assert found[("orders_messages", (("outcome", "counted"),))] == 1
    assert found[("orders_messages", (("outcome", "duplicate"),))] == 1
    assert found[("orders_messages", (("outcome", "rejected"),))] == 1
    assert found[("orders_queue_messages",
                  (("queue", settings.orders_queue), ("state", "visible")))] == 2
    route = "/users/<path:user_id>/stats"
    # Requests are counted across gunicorn's worker processes.
    assert found[("api_requests_total",
                  (("method", "GET"), ("route", route), ("status", "200")))] == 3
    assert found[("api_requests_total",
                  (("method", "GET"), ("route", route), ("status", "404")))] == 1
    assert found[("api_request_duration_seconds_count",
                  (("method", "GET"), ("route", route)))] == 4
    assert found[("orders_dependency_up", (("dependency", "redis"),))] == 1
    assert found[("orders_rejected_by_field_total", (("field", "_schema"),))] == 1
    assert found[("orders_processing_lag_seconds", ())] >= 0


def test_metrics_show_the_rejected_store_and_the_records_its_caps_dropped(store, api_server):
    capped = Settings(rejected_max_records=4)
    writer = type(store)(store.redis, capped)
    for batch in range(3):
        assert writer.apply([evaluate(Incoming(f"junk {batch}-{i}", f"m{batch}-{i}"), capped)
                             for i in range(3)]) == ["rejected"] * 3
    kept = [store.redis.hgetall(rejected_key(m)) for m in ("m1-2", "m2-0", "m2-1", "m2-2")]
    size = sum(len(record[f].encode()) for record in kept
               for f in ("message_id", "order_id", "body", "reasons", "first_seen"))
    found = samples(requests.get(f"{api_server}/metrics").text)
    assert found[("orders_rejected_records", ())] == 4
    assert found[("orders_rejected_bytes", ())] == size
    assert found[("orders_rejected_dropped_total", ())] == 9 - 4
    assert found[("orders_messages", (("outcome", "rejected"),))] == 9
