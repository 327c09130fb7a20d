"""The orders tasks run in-process on an app built from the test's settings."""
import json

import tasks.orders  # noqa: F401  (registers the shared tasks on every app)
from tasks.celery import create_celery
from tasks.names import PROCESS_BATCH, PROCESS_ORDER


def body(order_id, cents=1234):
    return json.dumps({"order_id": order_id, "user_id": "U1",
                       "order_timestamp": "2024-12-13T10:00:00Z", "order_value": cents / 100,
                       "items": [{"product_id": "P1", "quantity": 1,
                                  "price_per_unit": cents / 100}]})


def test_the_tasks_take_their_store_and_retry_limits_from_the_apps_settings(settings, store):
    app = create_celery(settings)
    process = app.tasks[PROCESS_ORDER]
    assert (process.max_retries, process.retry_backoff_max) == (
        settings.task_max_retries, settings.retry_backoff_max)
    outcome = process.apply(args=[body("IN-1")], kwargs={"message_id": "m-1"}).get()
    assert outcome == {"message_id": "m-1", "order_id": "IN-1", "status": "counted"}
    again = process.apply(args=[body("IN-1")], kwargs={"message_id": "m-2"}).get()
    assert again["status"] == "duplicate"
    assert store.user_stats("U1").total_spend_cents == 1234


def test_a_batch_task_counts_its_orders_and_rejects_the_bad_one(settings, store):
    batch = [{"body": body(f"B-{i}", 100 * (i + 1)), "message_id": f"m-{i}", "sent_at_ms": None}
             for i in range(3)] + [{"body": "not json", "message_id": "m-bad", "sent_at_ms": None}]
    outcomes = create_celery(settings).tasks[PROCESS_BATCH].apply(args=[batch]).get()
    assert outcomes == {"counted": 3, "duplicate": 0, "rejected": 1}
    assert store.global_stats().total_revenue_cents == 100 + 200 + 300
