"""/dashboard in a real headless Chromium against a running API and worker, orders flowing."""
from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import replace

import requests

from app import sqs
from app.store import FilesStore
from conftest import ROOT, needs_chromium, order_body, wait_for

pytestmark = needs_chromium

SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
# RGB of the "counted" series' stroke (web/static/dashboard.js RATES).
COUNTED_STROKE = (0x2e, 0x7d, 0x32)

PAINTED = """
const [canvas, r, g, b] = arguments;
const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let count = 0;
for (let i = 0; i < pixels.length; i += 4) {
  if (Math.abs(pixels[i] - r) < 30 && Math.abs(pixels[i + 1] - g) < 30
      && Math.abs(pixels[i + 2] - b) < 30 && pixels[i + 3] > 0) count++;
}
return count;
"""


def execution(execution_id: str, status: str, started_ms: int, read: int, kept: int) -> dict:
    """An execution record as app/files/execution.py writes it (the fields shown)."""
    return {"execution_id": execution_id, "status": status,
            "started_at": f"2026-12-06T10:0{started_ms}:00Z", "started_at_ms": started_ms,
            "files": [], "rows_read": read, "rows_kept": kept, "rows_dropped": {}}


def test_the_dashboard_draws_the_pipelines_figures(settings, store, sqs_client, start_worker,
                                                   start_api, browser, tmp_path):
    from selenium.webdriver.common.by import By

    files = FilesStore.from_url(settings.redis_url)
    records = [execution("e1", "succeeded", 1, 12, 10), execution("e2", "failed", 2, 7, 0)]
    for record in records:
        files.save_execution(record)
    sqs.send_bodies(sqs_client, sqs.queue_url(settings, settings.dlq_name, sqs_client),
                    ["dead-1", "dead-2", "dead-3"])
    start_worker()
    api = start_api(replace(settings, metrics_sqs_interval=1))

    browser.get(f"{api}/dashboard")
    assert browser.title == "Order pipeline"

    def tile(name):
        return browser.find_element(By.ID, name).text

    wait_for(lambda: tile("workers-live") == "1", timeout=30, message="one live worker shown")
    # Orders flow while the page is open: valid ones, the same ones again, malformed ones.
    valid = [order_body(f"D{i:03d}", f"U{i % 4}", day="2024-12-13") for i in range(60)]
    bodies = valid + valid[:7] + ["not json"] * 5
    for start in range(0, len(bodies), 10):
        sqs.send_bodies(sqs_client, settings.orders_url, bodies[start:start + 10])
    expected = {"counted": 60, "duplicate": 7, "rejected": 5}
    wait_for(lambda: all(store.outcomes()[k] == v for k, v in expected.items()), timeout=120,
             message="the worker to settle every order")

    # The tiles show what the store holds, and the API's figures.
    outcomes = store.outcomes()
    for name in expected:
        wait_for(lambda: tile(name) == f"{outcomes[name]:,}", timeout=20,
                 message=f"the {name} tile")
    wait_for(lambda: tile("orders-dlq") == "3", timeout=20, message="the DLQ's depth")
    # An API process hears the workers from its first /metrics or figures on: wait for one
    # that has listened.
    figures = wait_for(lambda: (f := requests.get(f"{api}/dashboard/figures", timeout=10).json())
                       ["workers_live"] is not None and f, timeout=20,
                       message="figures from an API process that heard the workers")
    assert figures["outcomes"] == outcomes
    assert [w["worker"] for w in figures["workers"]] == [f"w1@{socket.gethostname()}"]
    assert figures["workers_live"] == 1
    assert tile("failed") == str(store.task_events().get("failed", 0))
    assert tile("files-dlq") == "0"
    assert tile("headroom") == "no limit"  # the tests' redis-server has no maxmemory
    def table(name):
        return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
                for row in browser.find_elements(By.CSS_SELECTOR, f"#{name} tbody tr")]

    assert table("executions") == [[r["execution_id"], r["status"], r["started_at"],
                                    str(r["rows_read"]), str(r["rows_kept"])]
                                   for r in reversed(records)]
    by_field = store.rejected_by_field()
    assert sum(by_field.values()) >= expected["rejected"]
    assert sorted(table("rejections")) == sorted([field, str(count)]
                                                 for field, count in by_field.items())

    # The charts drew: the rates saw the orders go by, in the counted series' colour.
    charts = json.loads(browser.execute_script(
        "const c = window.pipelineDashboard;"
        "return JSON.stringify({rates: c.rates.data, depths: c.depths.data});"))
    assert len(charts["rates"][0]) >= 2 and max(charts["rates"][1]) > 0
    assert charts["depths"][2][-1] == 3  # the orders DLQ's series
    canvas = browser.find_element(By.CSS_SELECTOR, "#rates-chart canvas")
    assert browser.execute_script(PAINTED, canvas, *COUNTED_STROKE) > 50

    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    if os.environ.get("SAVE_SCREENSHOTS"):  # the docs' picture: SAVE_SCREENSHOTS=1 pytest ...
        shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)
