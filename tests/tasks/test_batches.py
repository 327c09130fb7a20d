"""Raw messages run in batches beside Celery-native task messages (a poison message in a
batch: tests/test_failure_scenarios.py)."""
import os
import subprocess
import sys

import pytest

from app import sqs
from app.settings import to_env
from conftest import ROOT, USER, order_body, wait_for


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
