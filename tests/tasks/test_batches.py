"""Raw messages run in batches: one bad message neither fails nor delays its neighbours."""
import json
import os
import re
import subprocess
import sys

import pytest

from app import sqs
from app.settings import to_env
from app.store import user_key
from conftest import ROOT, celery_cli, wait_for


def order(order_id, user_id="U1", cents=250):
    return json.dumps({"order_id": order_id, "user_id": user_id,
                       "order_timestamp": "2024-12-13T10:00:00Z", "order_value": cents / 100,
                       "items": [{"product_id": "P1", "quantity": 1, "price_per_unit": cents / 100}]})


@pytest.mark.slow
def test_a_poison_message_is_dead_lettered_alone_and_counted_once_after_redrive(
        settings, store, sqs_client, start_worker):
    store.redis.set(user_key("POISON"), "corrupted")  # the task fails on it every time
    bodies = [order(f"N{i}") for i in range(9)] + [order("P-1", user_id="POISON", cents=700)]
    assert sqs.send_bodies(sqs_client, settings.orders_url, bodies) == []
    worker = start_worker()

    # The nine neighbours are counted and deleted at once: never redelivered.
    wait_for(lambda: store.outcomes()["counted"] == 9, timeout=30, message="9 neighbours")
    wait_for(lambda: sqs.depth(settings, settings.dlq_name)["visible"] == 1, timeout=90,
             message="the poison message to reach the DLQ")
    assert store.outcomes() == {"counted": 9, "duplicate": 0, "rejected": 0, "conflict": 0,
                                "corrected": 0}
    assert sqs.depth(settings, settings.orders_queue) == {"visible": 0, "in_flight": 0,
                                                          "delayed": 0}
    # The failure names the failed order's message, the id an operator redrives it by.
    failed = re.search(r"BatchPartlyFailed: 1 order message\(s\) failed \(([^)]+)\)",
                       worker.tail(400))
    assert failed, worker.tail(400)
    assert store.task_events()["failed"] == settings.max_receive_count  # one per receive

    store.redis.delete(user_key("POISON"))  # the cause is gone
    celery_cli(settings, "dlq", "redrive", failed.group(1))
    wait_for(lambda: store.outcomes()["counted"] == 10, timeout=60, message="redriven order")
    assert store.user_stats("POISON").total_spend_cents == 700
    assert store.global_stats().total_revenue_cents == 9 * 250 + 700
    assert sqs.depth(settings, settings.dlq_name)["visible"] == 0


@pytest.mark.slow
def test_native_and_retried_messages_still_run_beside_batches(settings, store, sqs_client,
                                                             start_worker):
    start_worker()
    for batch in sqs.chunks([order(f"B{i}") for i in range(25)]):
        sqs.send_bodies(sqs_client, settings.orders_url, batch)
    subprocess.run([sys.executable, "-c",
                    "import sys, json; from tasks import app; "
                    "app.send_task('orders.process', args=[json.loads(sys.argv[1])])",
                    order("NATIVE", user_id="N1")], cwd=ROOT, check=True, timeout=60,
                   env={**os.environ, **to_env(settings)})
    wait_for(lambda: store.outcomes()["counted"] == 26, timeout=60, message="26 orders")
    assert store.user_stats("U1").order_count == 25
    assert store.user_stats("N1").order_count == 1
