"""/dashboard in a real headless Chromium against a running API and worker, orders flowing."""
from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import requests

from app import sqs
from app.settings import Settings
from app.store import FilesStore
from conftest import ROOT, needs_chromium, order_body, wait_for

pytestmark = needs_chromium

SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
FLOWER_URL = "http://127.0.0.1:5555/"
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
    api = start_api(replace(settings, metrics_sqs_interval=1, flower_url=FLOWER_URL))

    browser.get(f"{api}/dashboard")
    assert browser.title == "Order pipeline"
    assert browser.find_element(By.ID, "flower-link").get_attribute("href") == FLOWER_URL
    assert browser.find_element(By.ID, "docs-link").get_attribute("href") == f"{api}/docs"

    def tile(name):
        return browser.find_element(By.ID, name).text

    wait_for(lambda: tile("workers-live") == "1", timeout=30, message="one live worker shown")
    # Orders flow while the page is open: valid ones (a third today, a third yesterday),
    # the same ones again, malformed ones.
    today = datetime.now(timezone.utc).date()
    days = [today.isoformat(), (today - timedelta(days=1)).isoformat(), "2024-12-13"]
    valid = [order_body(f"D{i:03d}", f"U{i % 7}", day=days[i % 3],
                        lines=((f"P{i % 5}", 1 + i % 4, 100 * (i + 1)),)) for i in range(60)]
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
        # One script reads every cell: the page replaces a table's rows at each refresh, so
        # rows found by one WebDriver call can be gone (stale) by the next.
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map("
            "row => [...row.querySelectorAll('td')].map(cell => cell.innerText.trim()));",
            f"#{name} tbody tr")

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

    # Today against yesterday, and the rankings: as the API's own endpoints give them.
    def api_get(path, **params):
        return requests.get(f"{api}{path}", params=params, timeout=10).json()

    yesterday_kpis, today_kpis = api_get("/stats/daily",
                                         **{"from": days[1], "to": days[0]})["days"]
    assert today_kpis["total_orders"] == yesterday_kpis["total_orders"] == len(valid) // 3
    top_users = api_get("/stats/top-users", day=days[0], n=5)["users"]
    top_products = api_get("/stats/top-products", day=days[0], n=5)["products"]
    assert len(top_users) == len(top_products) == 5
    # Today's products, worked out from the orders sent today (each counted once).
    sold_today = {}
    for body in map(json.loads, valid):
        if body["order_timestamp"].startswith(days[0]):
            for item in body["items"]:
                revenue, units = sold_today.get(item["product_id"], (0, 0))
                sold_today[item["product_id"]] = (revenue + item["price_per_unit"]
                                                  * item["quantity"], units + item["quantity"])
    assert [(p["product_id"], p["revenue"], p["units_sold"]) for p in top_products] == sorted(
        ((product, round(revenue, 2), units) for product, (revenue, units) in sold_today.items()),
        key=lambda entry: (-entry[1], entry[0]))[:5]
    shown = {"today-orders": f"{today_kpis['total_orders']:,}",
             "today-revenue": f"{today_kpis['total_revenue']:,.2f}",
             "yesterday-orders": f"{yesterday_kpis['total_orders']:,}",
             "yesterday-revenue": f"{yesterday_kpis['total_revenue']:,.2f}"}
    wait_for(lambda: {name: tile(name) for name in shown} == shown, timeout=20,
             message="today's and yesterday's figures")
    assert table("top-users") == [[u["user_id"], f"{u['total_spend']:,.2f}",
                                   str(u["order_count"])] for u in top_users]
    assert browser.find_element(By.ID, "top-products-heading").text == "Top products today"
    assert table("top-products") == [[p["product_id"], f"{p['revenue']:,.2f}",
                                      str(p["units_sold"])] for p in top_products]

    # The whole page in the picture: the window's height is the page's plus its frame's;
    # the window is the session's, so its size comes back after.
    size = browser.get_window_size()
    frame = size["height"] - browser.execute_script("return window.innerHeight")
    browser.set_window_size(size["width"], frame + browser.execute_script(
        "return document.documentElement.scrollHeight"))
    try:
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
    finally:
        browser.set_window_size(size["width"], size["height"])
    if os.environ.get("SAVE_SCREENSHOTS"):  # the docs' picture: SAVE_SCREENSHOTS=1 pytest ...
        shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)


def test_the_dashboard_links_to_flower_only_when_its_address_is_set():
    from web import create_app

    def page(settings):
        return create_app(settings).test_client().get("/dashboard").get_data(as_text=True)

    assert 'id="flower-link"' not in page(Settings())
    assert f'id="flower-link" href="{FLOWER_URL}"' in page(Settings(flower_url=FLOWER_URL))
    assert 'id="docs-link" href="/docs"' in page(Settings())
