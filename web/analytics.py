"""Analytics endpoints: rankings, daily and monthly KPIs, user summaries, product sales."""
from datetime import date

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from app import analytics
from app.money import from_cents
from web.schemas import (DailySchema, DayRangeArgsSchema, ErrorSchema, MonthlySchema,
                         MonthRangeArgsSchema, ProductStatsSchema, TopProductsArgsSchema,
                         TopProductsSchema, TopUsersArgsSchema, TopUsersSchema,
                         UserSummarySchema)

blp = Blueprint("analytics", __name__, description="Rankings, time series, products")


def store():
    """The app's Redis gateway."""
    return current_app.extensions["store"]


def kpis(row: analytics.Kpis) -> dict:
    """A day's or month's figures as the API shows them."""
    return {"total_orders": row.total_orders,
            "total_revenue": from_cents(row.total_revenue_cents),
            "total_items_sold": row.total_items_sold,
            "unique_customers": row.unique_customers,
            "avg_order_value": from_cents(row.avg_order_cents)}


def user_period(user_id: str, period: analytics.Period) -> dict:
    """A user's totals over a period and each of its days (GET /users/<id>/stats?from&to)."""
    stats = analytics.user_period(store(), user_id, period)
    if stats is None:
        abort(404, message=f"No orders counted for user {user_id!r}.")
    return {"user_id": user_id, "order_count": stats.order_count,
            "total_spend": from_cents(stats.spend_cents), "first": period.first,
            "last": period.last, "avg_order_value": from_cents(stats.avg_order_cents),
            "days": [{"date": d.day, "order_count": d.order_count,
                      "total_spend": from_cents(d.spend_cents)} for d in stats.days]}


@blp.route("/stats/top-users")
class TopUsers(MethodView):
    @blp.arguments(TopUsersArgsSchema, location="query")
    @blp.response(200, TopUsersSchema)
    def get(self, args):
        """The n users with the highest spend or order count, all-time or over a period.

        Equal figures are ordered by user id (byte order). Cost: all-time, one day or one
        month O(log N + n); from/to adds up the range's whole months and other days,
        O(N + M log M) for N entries in them and M distinct users.
        """
        ranked = analytics.top_users(store(), args["n"], args["by"], args["period"])
        return {"by": args["by"], "n": args["n"], "period": args["period"], "users": [
            {"rank": u.rank, "user_id": u.user_id, "total_spend": from_cents(u.spend_cents),
             "order_count": u.order_count, "avg_order_value": from_cents(u.avg_order_cents)}
            for u in ranked]}


@blp.route("/stats/top-products")
class TopProducts(MethodView):
    @blp.arguments(TopProductsArgsSchema, location="query")
    @blp.response(200, TopProductsSchema)
    def get(self, args):
        """The n products with the highest all-time revenue or units sold.

        Equal figures are ordered by product id (byte order). Cost: O(log N + n).
        """
        ranked = analytics.top_products(store(), args["n"], args["by"])
        return {"by": args["by"], "n": args["n"], "products": [
            {"rank": p.rank, "product_id": p.product_id,
             "revenue": from_cents(p.revenue_cents), "units_sold": p.units_sold}
            for p in ranked]}


@blp.route("/stats/daily")
class Daily(MethodView):
    @blp.arguments(DayRangeArgsSchema, location="query")
    @blp.response(200, DailySchema)
    def get(self, args):
        """The platform's KPIs for each UTC day from..to, zeros on days without orders.

        Orders count on the UTC day of their own order_timestamp. Cost: O(days).
        """
        period = args["period"]
        return {"first": period.first, "last": period.last,
                "days": [{"date": date.fromisoformat(row.bucket), **kpis(row)}
                         for row in analytics.daily(store(), period)]}


@blp.route("/stats/monthly")
class Monthly(MethodView):
    @blp.arguments(MonthRangeArgsSchema, location="query")
    @blp.response(200, MonthlySchema)
    def get(self, args):
        """The platform's KPIs for each UTC month from..to, zeros in months without orders.

        Cost: O(months).
        """
        rows = analytics.monthly(store(), args["first"], args["last"])
        return {"first": args["first"], "last": args["last"],
                "months": [{"month": row.bucket, **kpis(row)} for row in rows]}


@blp.route("/users/<path:user_id>/summary")
class UserSummary(MethodView):
    @blp.response(200, UserSummarySchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No order counted for this user")
    def get(self, user_id):
        """A user's all-time totals, average order value and first and last order times.

        Cost: O(1).
        """
        summary = analytics.user_summary(store(), user_id)
        if summary is None:
            abort(404, message=f"No orders counted for user {user_id!r}.")
        return {"user_id": summary.user_id, "order_count": summary.order_count,
                "total_spend": from_cents(summary.spend_cents),
                "avg_order_value": from_cents(summary.avg_order_cents),
                "first_order_at": summary.first_order_at, "last_order_at": summary.last_order_at}


@blp.route("/products/<path:product_id>/stats")
class ProductStats(MethodView):
    @blp.response(200, ProductStatsSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="This product was never sold")
    def get(self, product_id):
        """A product's all-time units sold, revenue and number of orders.

        Cost: O(1).
        """
        stats = analytics.product_stats(store(), product_id)
        if stats is None:
            abort(404, message=f"No sales counted for product {product_id!r}.")
        return {"product_id": stats.product_id, "units_sold": stats.units_sold,
                "revenue": from_cents(stats.revenue_cents), "orders": stats.orders}
