"""The orders tasks run in-process on an app built from the test's settings."""
import tasks.orders  # noqa: F401  (registers the shared tasks on every app)
from conftest import USER, order_body
from tasks.celery import create_celery
from tasks.names import PROCESS_BATCH, PROCESS_ORDER

CENTS = 1234
ONE_ORDER = order_body("IN-1", lines=[("P1", 1, CENTS)])


def test_the_tasks_take_their_store_and_retry_limits_from_the_apps_settings(settings, store):
    app = create_celery(settings)
    process = app.tasks[PROCESS_ORDER]
    assert (process.max_retries, process.retry_backoff_max) == (
        settings.task_max_retries, settings.retry_backoff_max)
    outcome = process.apply(args=[ONE_ORDER], kwargs={"message_id": "m-1"}).get()
    assert outcome == {"message_id": "m-1", "order_id": "IN-1", "status": "counted"}
    again = process.apply(args=[ONE_ORDER], kwargs={"message_id": "m-2"}).get()
    assert again["status"] == "duplicate"
    assert store.user_stats(USER).total_spend_cents == CENTS


def test_a_batch_task_counts_its_orders_and_rejects_the_bad_one(settings, store):
    bodies = [order_body(f"B-{i}", lines=[("P1", 1, 100 * (i + 1))]) for i in range(3)]
    batch = [{"body": body, "message_id": f"m-{i}", "sent_at_ms": None}
             for i, body in enumerate([*bodies, "not json"])]
    outcomes = create_celery(settings).tasks[PROCESS_BATCH].apply(args=[batch]).get()
    assert outcomes == {"counted": 3, "duplicate": 0, "rejected": 1}
    assert store.global_stats().total_revenue_cents == 100 + 200 + 300
