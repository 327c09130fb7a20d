"""Raw messages run in batches beside Celery-native task messages (a poison message in a
batch: tests/test_failure_scenarios.py)."""
import os
import subprocess
import sys

import pytest

from app import sqs
from app.settings import to_env
from conftest import ROOT, USER, order_body, wait_for
from tasks.collector import entries_repr


@pytest.mark.slow
def test_native_and_retried_messages_still_run_beside_batches(settings, store, sqs_client,
                                                             start_worker):
    start_worker()
    for batch in sqs.chunks([order_body(f"B{i}") for i in range(25)]):
        sqs.send_bodies(sqs_client, settings.orders_url, batch)
    subprocess.run([sys.executable, "-c",
                    "import sys, json; from tasks import app; "
                    "app.send_task('orders.process', args=[json.loads(sys.argv[1])])",
                    order_body("NATIVE", user_id="N1")], cwd=ROOT, check=True, timeout=60,
                   env={**os.environ, **to_env(settings)})
    wait_for(lambda: store.outcomes()["counted"] == 26, timeout=60, message="26 orders")
    assert store.user_stats(USER).order_count == 25
    assert store.user_stats("N1").order_count == 1


def test_a_batch_shows_its_arguments_as_repr_cut_to_the_limit():
    """What Flower shows of a batch: repr((entries,)), at most the limit, even for huge bodies."""
    small = [{"body": order_body("O1"), "message_id": "m-1", "sent_at_ms": 1}]
    assert entries_repr(small, 1024) == repr((small,))
    huge = [{"body": "x" * 200_000, "message_id": f"m-{i}", "sent_at_ms": None}
            for i in range(10)]
    shown = entries_repr(huge, 1024)
    assert len(shown) == 1024 and shown.endswith("...")
    assert shown[:-3] == repr((huge,))[:1021]
