"""A real Prometheus with the shipped rules, scraping a real API, fires the DLQ alerts."""
from __future__ import annotations

import json
from dataclasses import replace
from urllib.parse import urlsplit

from app import sqs
from prometheus_server import Prometheus, alerting_rules, generator, rules_with_for, targets
from stack.services import wait_for


def test_prometheus_fires_the_dlq_alerts_once_the_dlqs_hold_messages(
        settings, sqs_client, start_api, tmp_path):
    api = start_api(replace(settings, metrics_sqs_interval=1))
    # The shipped rules, with every `for` at one evaluation instead of minutes.
    rules = rules_with_for("1s")
    assert {rule["alert"] for rule in alerting_rules()} >= {
        "OrdersDeadLetterQueueNotEmpty", "FilesDeadLetterQueueNotEmpty"}
    with Prometheus(tmp_path, [urlsplit(api).netloc], rules) as prometheus:
        # The rules ran on scraped figures: both DLQs known, by role, and empty.
        def dlq_depths():
            found = {(r["metric"]["role"], r["metric"]["queue"]): r["value"][1] for r in
                     prometheus.query('sum by (role, queue) '
                                      '(queue:orders_queue_messages:max{role=~".*_dlq"})')}
            return found if len(found) == 2 else None

        assert wait_for(dlq_depths, timeout=30, message="the DLQs' depths in Prometheus") == {
            ("orders_dlq", settings.dlq_name): "0", ("files_dlq", settings.files_dlq): "0"}
        assert prometheus.alerts("OrdersDeadLetterQueueNotEmpty") == []
        assert prometheus.alerts("FilesDeadLetterQueueNotEmpty") == []

        sqs.send_bodies(sqs_client, sqs.queue_url(settings, settings.dlq_name, sqs_client),
                        ["dead-1", "dead-2"])

        def firing(name):
            alerts = [a for a in prometheus.alerts(name) if a["state"] == "firing"]
            return alerts or None

        [alert] = wait_for(lambda: firing("OrdersDeadLetterQueueNotEmpty"), timeout=30,
                           message="OrdersDeadLetterQueueNotEmpty to fire")
        assert alert["labels"] == {"alertname": "OrdersDeadLetterQueueNotEmpty",
                                   "queue": settings.dlq_name, "severity": "warning"}
        assert float(alert["value"]) == 2
        assert alert["annotations"]["summary"] == (
            f"2 message(s) in the orders dead-letter queue {settings.dlq_name}")
        # The orders DLQ's messages are not the files DLQ's alert.
        assert prometheus.alerts("FilesDeadLetterQueueNotEmpty") == []

        sqs.send_bodies(sqs_client, sqs.queue_url(settings, settings.files_dlq, sqs_client),
                        ["dead-event"])
        [alert] = wait_for(lambda: firing("FilesDeadLetterQueueNotEmpty"), timeout=30,
                           message="FilesDeadLetterQueueNotEmpty to fire")
        assert alert["labels"]["queue"] == settings.files_dlq
        assert float(alert["value"]) == 1

        # Every query of the dashboard runs on the same Prometheus (query() checks success);
        # the queue depths' panel shows the API's queues.
        dashboard = json.loads(generator().OUTPUT.read_text())
        answers = {t["expr"]: prometheus.query(t["expr"]) for t in targets(dashboard)}
        depths = answers['queue:orders_queue_messages:max{state="visible"}']
        assert {r["metric"]["queue"] for r in depths} == {
            settings.orders_queue, settings.dlq_name, settings.files_queue, settings.files_dlq}
