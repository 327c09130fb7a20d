"""Batch files endpoints: the KPI tables (the seed's OrderKPIs, CategoryKPIs) and executions."""
from marshmallow import Schema, fields, post_load, validate

from app.files import kpis
from web.blueprint import Blueprint
from web.context import files_store, found
from web.schemas import DayRangeArgsSchema, ErrorSchema

blp = Blueprint("files", __name__, description="KPIs from batch files, and their executions")
MAX_EXECUTIONS = 100


class CategoryRangeArgsSchema(DayRangeArgsSchema):
    """A range of UTC order dates, optionally one category."""

    # No maximum length: a longer value than gunicorn's request line takes gets its 414 anyway.
    category = fields.String(validate=validate.Length(min=1),
                             metadata={"description": "Only this category"})

    @post_load
    def to_period(self, data, **kwargs):
        """from/to as a period, and the category."""
        category = data.pop("category", None)
        return {**super().to_period(data, **kwargs), "category": category}


class ExecutionsArgsSchema(Schema):
    """How many executions to list."""

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=MAX_EXECUTIONS),
                           metadata={"description": "At most this many, newest first"})


class OrderKpiSchema(Schema):
    """One order_date's KPIs (OrderKPIs)."""

    order_date = fields.String(required=True, metadata={"description": "UTC date, YYYY-MM-DD"})
    total_orders = fields.Integer(required=True)
    total_revenue = fields.Float(required=True, metadata={"description": "Rounded to cents"})
    total_items_sold = fields.Integer(required=True)
    unique_customers = fields.Integer(required=True)
    return_rate = fields.Float(required=True, metadata={
        "description": "100 × returned orders / total_orders, 2 decimals, half up"})


class CategoryKpiSchema(Schema):
    """One (category, order_date)'s KPIs (CategoryKPIs)."""

    category = fields.String(required=True)
    order_date = fields.String(required=True, metadata={"description": "UTC date, YYYY-MM-DD"})
    daily_revenue = fields.Float(required=True, metadata={"description": "Rounded to cents"})
    avg_order_value = fields.Float(required=True, metadata={
        "description": "daily_revenue / distinct orders with an item in the category"})
    avg_return_rate = fields.Float(required=True, metadata={
        "description": "100 × returned items / items in the category, 2 decimals, half up"})


class ExecutionSchema(Schema):
    """An execution's result record (results/<execution_id>.json)."""

    execution_id = fields.String(required=True)
    status = fields.String(required=True, metadata={"description": "running, succeeded or failed"})
    started_at = fields.String(required=True)
    started_at_ms = fields.Integer(metadata={"description": "Start time, ms since the epoch"})
    finished_at = fields.String()
    valid_files = fields.List(fields.String())
    invalid_files = fields.List(fields.Dict())
    skipped_files = fields.List(fields.Dict())
    rows_read = fields.Integer()
    rows_kept = fields.Integer()
    rows_dropped = fields.Dict(metadata={"description": "file -> cleaning rule -> rows dropped"})
    dates = fields.List(fields.String())
    files = fields.List(fields.Dict(), required=True)
    timings = fields.Dict()
    failure = fields.Dict(metadata={"description": "step, task and error of a failed execution"})


@blp.route("/kpis/orders")
@blp.arguments(DayRangeArgsSchema(), location="query")
@blp.response(200, OrderKpiSchema(many=True))
def order_kpis(args):
    """Daily order KPIs of the dates in from..to, by date (dates without orders omitted)."""
    period = args["period"]
    rows = files_store().order_kpis(period.first.isoformat(), period.last.isoformat())
    return [kpis.order_kpi_answer(kpis.OrderKpi(**row)) for row in rows]


@blp.route("/kpis/categories")
@blp.arguments(CategoryRangeArgsSchema(), location="query")
@blp.response(200, CategoryKpiSchema(many=True))
def category_kpis(args):
    """Category KPIs of the order dates in from..to, by category then date."""
    period = args["period"]
    rows = files_store().category_kpis(period.first.isoformat(), period.last.isoformat(),
                                       args.get("category"))
    return [kpis.category_kpi_answer(kpis.CategoryKpi(**row)) for row in rows]


@blp.route("/files/executions")
@blp.arguments(ExecutionsArgsSchema(), location="query")
@blp.response(200, ExecutionSchema(many=True))
def executions(args):
    """The latest executions' result records, newest first."""
    return files_store().executions(args["limit"])


@blp.route("/files/executions/<string:execution_id>")
@blp.response(200, ExecutionSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such execution")
def execution(execution_id):
    """One execution's result record: files, rows kept and dropped per rule, dates, timings."""
    return found(files_store().execution(execution_id), f"No execution {execution_id!r}.")
