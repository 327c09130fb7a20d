"""A worker's text log: ids from bodies cannot forge a line or send terminal escapes."""
import json

from app import sqs
from conftest import wait_for

CRAFTED_ID = "X1\n[2026-01-01 00:00:00,000: INFO/ForkPoolWorker-1] forged\x1b[2J\x9b31m\u202e"


def test_a_crafted_order_id_is_escaped_in_the_worker_log(settings, store, sqs_client,
                                                         start_worker):
    worker = start_worker()
    # Invalid (no items): rejected, and its raw order_id goes into the log line.
    body = json.dumps({"order_id": CRAFTED_ID, "user_id": "U1"})
    sqs.send_bodies(sqs_client, settings.orders_url, [body])
    wait_for(lambda: store.outcomes()["rejected"] == 1, message="the order to be rejected")
    wait_for(lambda: "forged" in worker.log_path.read_text(), message="the outcome in the log")
    log = worker.log_path.read_text(errors="strict")
    assert "order X1\\n[2026-01-01" in log
    assert not any(line.startswith("[2026-01-01") for line in log.splitlines())
    for raw in ("\x1b[2J", "\x9b", "\u202e"):
        assert raw not in log
