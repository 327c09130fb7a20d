"""The pipeline's Grafana dashboard as code; `make dashboard` runs it to write the JSON.

Writes grafana/dashboards/orders-pipeline.json beside this file, which docker compose's
Grafana provisions and tests/monitoring compares with a fresh build. The queries read the
API's /metrics and the recording rules of rules.yml; the data source is a variable, so the
same file loads into any Grafana with a Prometheus data source.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (Dashboard, GridPos, RowPanel, Stat, Target, Template,
                             Templating, Time, TimeSeries)

OUTPUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "orders-pipeline.json"
UID = "orders-pipeline"
SOURCE = "${datasource}"
# Panels per row of the 24-column grid, and their height.
WIDTH, HEIGHT = 8, 8


def series(title: str, *queries: tuple[str, str], unit: str = "short",
           description: str = "") -> TimeSeries:
    """A time series panel of (expression, legend) pairs."""
    return TimeSeries(title=title, description=description, dataSource=SOURCE, unit=unit,
                      targets=[Target(expr=expr, legendFormat=legend, refId=chr(65 + i),
                                      datasource=SOURCE)
                               for i, (expr, legend) in enumerate(queries)])


def stat(title: str, expr: str, legend: str, unit: str = "short", description: str = "",
         colors: tuple = (("green", None),)) -> Stat:
    """A single-figure panel per series; colors: (color, from this value) steps."""
    steps = [{"color": color, "value": start} for color, start in colors]
    return Stat(title=title, description=description, dataSource=SOURCE, format=unit,
                reduceCalc="lastNotNull", graphMode="none",
                thresholds=steps, colorMode="background",
                targets=[Target(expr=expr, legendFormat=legend, refId="A", datasource=SOURCE)])


SECTIONS = {
    "Orders": [
        series("Messages per second by outcome",
               ("max by (outcome) (deriv(orders_messages[5m]))", "{{outcome}}"), unit="ops"),
        series("Rejected share, and its day's average",
               ("orders:rejected_ratio:10m", "last 10 minutes"),
               ("avg_over_time(orders:rejected_ratio:10m[1d])", "day's average"),
               unit="percentunit",
               description="OrdersRejectionRatioHigh fires 10 points above the average."),
        series("Messages per second, this hour and a week earlier",
               ("orders:messages:rate1h", "last hour"),
               ("orders:messages:rate1h_offset1w", "same hour last week"), unit="ops",
               description="OrdersRateBelowLastWeek fires under half of last week's."),
        series("Rejections per second by field",
               ("max by (field) (rate(orders_rejected_by_field_total[5m]))", "{{field}}"),
               unit="ops"),
        series("Task events per second",
               ("max by (event) (rate(orders_task_events_total[5m]))", "{{event}}"), unit="ops"),
        stat("Dependencies up", "min by (dependency) (orders_dependency_up)", "{{dependency}}",
             colors=(("red", None), ("green", 1)),
             description="1 when every API process reaches it."),
    ],
    "Queues": [
        series("Visible messages by queue",
               ('queue:orders_queue_messages:max{state="visible"}', "{{queue}} ({{role}})")),
        stat("Dead-letter queues",
             'sum by (queue) (queue:orders_queue_messages:max{role=~".*_dlq"})', "{{queue}}",
             colors=(("green", None), ("red", 1)),
             description="Every state: visible, in flight, delayed."),
        series("Lag and time since the last batch",
               ("max(orders_processing_lag_seconds)", "lag of the last batch"),
               ("time() - max(orders_last_applied_timestamp_seconds)", "since the last batch"),
               unit="s"),
    ],
    "API": [
        series("Requests per second by status",
               ('sum by (status) (rate(api_requests_total{route!="/metrics"}[5m]))',
                "{{status}}"), unit="reqps"),
        series("5xx share", ("job:api_requests_5xx:ratio_rate5m", "{{job}}"),
               unit="percentunit"),
        series("p95 latency by route",
               ('histogram_quantile(0.95, sum by (le, route) '
                '(rate(api_request_duration_seconds_bucket{route!="/metrics"}[5m])))',
                "{{route}}"), unit="s"),
    ],
    "Batch files": [
        stat("Executions by status (latest 20)", "max by (status) (orders_files_executions)",
             "{{status}}"),
        series("Rows of the newest finished execution",
               ("max by (stage) (orders_files_last_execution_rows)", "{{stage}}"),
               ("max by (rule) (orders_files_last_execution_dropped_rows)", "dropped: {{rule}}")),
        stat("Since the newest succeeded execution started",
             'time() - max(orders_files_execution_started_timestamp_seconds'
             '{status="succeeded"})', "succeeded", unit="s"),
    ],
}


def layout(sections: dict[str, list]) -> list:
    """A row panel per section, its panels three abreast below it."""
    panels, y = [], 0
    for title, members in sections.items():
        panels.append(RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        for i, panel in enumerate(members):
            panel.gridPos = GridPos(h=HEIGHT, w=WIDTH, x=(i % 3) * WIDTH,
                                    y=y + (i // 3) * HEIGHT)
        panels += members
        y += -(-len(members) // 3) * HEIGHT
    return panels


def dashboard() -> Dashboard:
    """The whole dashboard."""
    return Dashboard(
        title="Order pipeline", uid=UID, tags=["order-pipeline"], timezone="utc",
        description="Orders, queues, the API and the batch files, from the API's /metrics "
                    "and deploy/monitoring/rules.yml",
        time=Time("now-6h", "now"), refresh="30s",
        templating=Templating([Template(name="datasource", label="Data source",
                                        type="datasource", query="prometheus",
                                        default="Prometheus")]),
        panels=layout(SECTIONS),
    ).auto_panel_ids()


def render() -> str:
    """The dashboard's JSON, as committed."""
    return json.dumps(dashboard().to_json_data(), cls=DashboardEncoder, indent=2,
                      sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}", file=sys.stderr)
