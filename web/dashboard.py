"""The live dashboard: an HTML page drawing the figures of GET /dashboard/figures."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from flask import Blueprint as FlaskBlueprint
from flask import current_app, render_template
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from app import analytics
from web.metrics import queue_roles, store_state
from web.schemas import DayKpisSchema, TopProductSchema, TopUserSchema

# The page and its static files (uPlot vendored under static/vendor): no CDN, works offline.
page = FlaskBlueprint("dashboard_page", __name__, template_folder="templates",
                      static_folder="static", static_url_path="/dashboard/static")
blp = Blueprint("dashboard", __name__, description="The live dashboard's figures")
# The page lists this many of the latest files executions.
EXECUTIONS_SHOWN = 10
# Places of the rankings the page shows (today's users and products).
TOP_SHOWN = 5


class QueueDepthSchema(Schema):
    """One queue's approximate depth and what it is for."""

    queue = fields.String(required=True)
    role = fields.String(required=True, metadata={"description": "orders, orders_dlq, files "
                                                                 "or files_dlq"})
    visible = fields.Integer(required=True)
    in_flight = fields.Integer(required=True)
    delayed = fields.Integer(required=True)


class WorkerSchema(Schema):
    """A worker heard on the control plane."""

    worker = fields.String(required=True, metadata={"description": "Celery node name"})
    up = fields.Boolean(required=True, metadata={"description": "its heartbeats arrive"})
    heartbeat_age_seconds = fields.Float(required=True)


class StoreStateSchema(Schema):
    """Whether Redis takes writes, and how much memory it has left."""

    writable = fields.Boolean(required=True)
    headroom_ratio = fields.Float(required=True, allow_none=True, metadata={
        "description": "share of maxmemory left (null: no maxmemory, or Redis unreadable)"})


class ExecutionSummarySchema(Schema):
    """One files execution, as the page lists it."""

    execution_id = fields.String(required=True)
    status = fields.String(required=True)
    started_at = fields.String(required=True, allow_none=True)
    rows_read = fields.Integer(load_default=0, dump_default=0)
    rows_kept = fields.Integer(load_default=0, dump_default=0)


class DashboardSchema(Schema):
    """The figures the live dashboard draws."""

    time = fields.Float(required=True, metadata={"description": "Unix time of the reading"})
    outcomes = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True,
                           metadata={"description": "messages by outcome since the start"})
    task_events = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True,
                              metadata={"description": "task runs retried, failed"})
    rejected_by_field = fields.Dict(keys=fields.String(), values=fields.Integer(),
                                    required=True, metadata={
                                        "description": "rejections naming each field "
                                                       "(_schema: the whole body)"})
    queues = fields.List(fields.Nested(QueueDepthSchema), required=True, allow_none=True,
                         metadata={"description": "null while SQS's figures are not current"})
    workers_live = fields.Integer(required=True, allow_none=True, metadata={
        "description": "null while the control plane is not heard"})
    workers = fields.List(fields.Nested(WorkerSchema), required=True)
    store = fields.Nested(StoreStateSchema, required=True)
    files_executions = fields.List(fields.Nested(ExecutionSummarySchema), required=True,
                                   metadata={"description": "newest first"})
    today = fields.Nested(DayKpisSchema, required=True, metadata={
        "description": "today's KPIs (UTC day), as GET /stats/daily gives them"})
    yesterday = fields.Nested(DayKpisSchema, required=True, metadata={
        "description": "yesterday's KPIs (UTC day), as GET /stats/daily gives them"})
    top_users_today = fields.List(fields.Nested(TopUserSchema), required=True, metadata={
        "description": f"today's first {TOP_SHOWN} users by spend, as GET /stats/top-users"
                       "?day= gives them"})
    top_products_today = fields.List(fields.Nested(TopProductSchema), required=True, metadata={
        "description": f"today's first {TOP_SHOWN} products by revenue, as GET "
                       "/stats/top-products?day= gives them"})


@page.get("/dashboard")
def dashboard():
    """The live dashboard (HTML), refreshed every few seconds from /dashboard/figures."""
    return render_template("dashboard.html",
                           flower_url=current_app.extensions["settings"].flower_url)


@blp.route("/dashboard/figures")
@blp.response(200, DashboardSchema)
@blp.alt_response(503, description="Redis does not answer")
def figures():
    """The pipeline's figures now: messages by outcome, task events, rejections by field,
    queue depths (while current), the live workers, the store's writability and memory
    headroom, the latest files executions, today's and yesterday's KPIs, today's top users
    and products. Totals since the start: the page draws rates from two readings."""
    extensions = current_app.extensions
    store, settings = extensions["store"], extensions["settings"]
    sqs = extensions["sqs_figures"].snapshot()
    roles = queue_roles(settings)
    queues = ([{"queue": queue, "role": roles.get(queue, "orders"), **states}
               for queue, states in sqs.depths.items()] if sqs.current else None)
    workers = extensions["worker_heartbeats"].snapshot()
    now = time.monotonic()
    state = store_state(extensions["store_health"])
    today = datetime.now(timezone.utc).date()
    yesterday_kpis, today_kpis = analytics.daily(
        store, analytics.Period(today - timedelta(days=1), today))
    return {
        "time": time.time(),
        "outcomes": store.outcomes(),
        "task_events": store.task_events(),
        "rejected_by_field": store.rejected_by_field(),
        "queues": queues,
        "workers_live": workers.live(now),
        "workers": [{"worker": name, "up": seen.live(now),
                     "heartbeat_age_seconds": now - seen.received}
                    for name, seen in sorted(workers.workers.items())],
        "store": {"writable": bool(state and state.writable),
                  "headroom_ratio": state.headroom_ratio if state else None},
        "files_executions": extensions["files_store"].executions(EXECUTIONS_SHOWN),
        "today": today_kpis,
        "yesterday": yesterday_kpis,
        "top_users_today": analytics.top_users(store, TOP_SHOWN, "spend",
                                               analytics.Period.of_day(today)),
        "top_products_today": analytics.top_products(store, TOP_SHOWN, "revenue", today),
    }
