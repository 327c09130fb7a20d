"""The API's /metrics families that the rules and the dashboard read: queues by role, files."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime, timezone

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app import sqs
from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import FilesStore
from conftest import order_body
from prometheus_server import RULES, generator, promtool, targets
from stack.services import wait_for


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def execution(execution_id: str, status: str, started_ms: int, dropped: dict | None = None,
              rows_read: int = 0, rows_kept: int = 0) -> dict:
    """An execution record as app/files/execution.py writes it (the fields read here)."""
    return {"execution_id": execution_id, "status": status, "started_at": "2026-12-06T10:00:00Z",
            "started_at_ms": started_ms, "files": [], "rows_read": rows_read,
            "rows_kept": rows_kept, "rows_dropped": dropped or {}}


def test_metrics_show_queue_roles_files_queues_and_executions(settings, sqs_client, start_api):
    files = FilesStore.from_url(settings.redis_url)
    newest_finished = execution("e2", "failed", 2_000_000, rows_read=10, rows_kept=6, dropped={
        "orders_a.csv": {"num_of_item_not_positive": 2, "duplicate_key": 1},
        "orders_b.csv": {"duplicate_key": 1}})
    records = [execution("e1", "succeeded", 1_000_000, rows_read=5, rows_kept=5,
                         dropped={"orders_0.csv": {"duplicate_key": 0}}),
               newest_finished, execution("e3", "running", 3_000_000)]
    for record in records:
        files.save_execution(record)
    sqs.send_bodies(sqs_client, settings.files_url, ["event-1", "event-2"])
    files_dlq = sqs.queue_url(settings, settings.files_dlq, sqs_client)
    sqs.send_bodies(sqs_client, files_dlq, ["dead-event"])
    api = start_api(replace(settings, metrics_sqs_interval=1))

    def depth(queue):
        return ("orders_queue_messages", (("queue", queue), ("state", "visible")))

    def scrape():
        return requests.get(f"{api}/metrics", timeout=10).text

    text = wait_for(lambda: (t := scrape()) and samples(t).get(depth(settings.files_dlq)) == 1
                    and t, timeout=20, message="the files DLQ's depth in /metrics")
    found = samples(text)
    assert found[depth(settings.files_queue)] == 2
    assert found[depth(settings.dlq_name)] == 0
    roles = {labels: value for (name, labels), value in found.items()
             if name == "orders_queue_info"}
    assert roles == {(("queue", settings.orders_queue), ("role", "orders")): 1,
                     (("queue", settings.dlq_name), ("role", "orders_dlq")): 1,
                     (("queue", settings.files_queue), ("role", "files")): 1,
                     (("queue", settings.files_dlq), ("role", "files_dlq")): 1}
    for status in ("succeeded", "failed", "running"):
        assert found[("orders_files_executions", (("status", status),))] == sum(
            r["status"] == status for r in records)
        [newest] = [r for r in records if r["status"] == status]
        assert found[("orders_files_execution_started_timestamp_seconds",
                      (("status", status),))] == newest["started_at_ms"] / 1000
    assert found[("orders_files_last_execution_rows", (("stage", "read"),))] == 10
    assert found[("orders_files_last_execution_rows", (("stage", "staged"),))] == 6
    by_rule: dict[str, int] = {}
    for rules in newest_finished["rows_dropped"].values():
        for rule, count in rules.items():
            by_rule[rule] = by_rule.get(rule, 0) + count
    assert {labels[0][1]: value for (name, labels), value in found.items()
            if name == "orders_files_last_execution_dropped_rows"} == by_rule
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_metrics_without_files_executions_show_zero_counts(settings, api_server):
    found = samples(requests.get(f"{api_server}/metrics", timeout=10).text)
    for status in ("succeeded", "failed", "running"):
        assert found[("orders_files_executions", (("status", status),))] == 0
    assert not [name for name, _ in found if name.startswith("orders_files_last_execution")
                or name == "orders_files_execution_started_timestamp_seconds"]


def test_every_metric_the_rules_and_the_dashboard_read_is_exposed(settings, store, start_api):
    # Something of every kind: orders counted and rejected (with the lag), a task event,
    # a files execution, requests to the API.
    now = datetime(2026, 12, 6, tzinfo=timezone.utc)
    store.apply([evaluate(Incoming(body, f"m{i}", now), Settings(), now=now)
                 for i, body in enumerate([order_body("O1", day="2026-12-05"), "junk"])])
    store.count_task_event("failed")
    FilesStore.from_url(settings.redis_url).save_execution(
        execution("e1", "succeeded", 1_000_000, {"orders_a.csv": {"duplicate_key": 1}}))
    api = start_api(replace(settings, metrics_sqs_interval=1))
    requests.get(f"{api}/stats/global", timeout=10)
    # A maxmemory, for the headroom (the session's Redis has none; restored after).
    limit = store.redis.config_get("maxmemory")["maxmemory"]
    store.redis.config_set("maxmemory", 1 << 30)
    try:
        # The queue depths once read, the live workers once heard for two heartbeat intervals.
        exposed = wait_for(lambda: (found := {name for name, _ in samples(requests.get(
            f"{api}/metrics", timeout=10).text)}) and {
                "orders_queue_messages", "orders_workers_live"} <= found and found,
            timeout=20, message="the queue depths and the live workers in /metrics")
    finally:
        store.redis.config_set("maxmemory", limit)
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    expressions = [rule.get("expr", "") for group in yaml.safe_load(RULES.read_text())["groups"]
                   for rule in group["rules"]]
    expressions += [t["expr"] for t in targets(json.loads(generator().OUTPUT.read_text()))]
    # Metric names outside the label values (which are quoted).
    read = {name for expr in expressions for name in re.findall(
        r"\b((?:orders|api)_\w+|\w+:\w+:\w+)\b", re.sub(r'"[^"]*"', "", expr))}
    assert len(read) >= 15
    assert {name for name in read if ":" not in name} - exposed == set()
    assert {name for name in read if ":" in name} - recorded == set()
