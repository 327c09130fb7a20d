"""Analytics endpoints: rankings, daily and monthly KPIs, user summaries, product sales."""

from app import analytics
from web.blueprint import Blueprint
from web.context import found, no_orders_of, store
from web.schemas import (DailySchema, DayRangeArgsSchema, ErrorSchema, MonthlySchema,
                         MonthRangeArgsSchema, ProductStatsSchema, TopProductsArgsSchema,
                         TopProductsSchema, TopUsersArgsSchema, TopUsersSchema,
                         UserSummarySchema)

blp = Blueprint("analytics", __name__, description="Rankings, time series, products")


@blp.route("/stats/top-users")
@blp.arguments(TopUsersArgsSchema(), location="query")
@blp.response(200, TopUsersSchema)
def top_users(args):
    """The n users with the highest spend or order count, all-time or over a period.

    Equal figures are ordered by user id (byte order). Cost: all-time, one day or one
    month O(log N + n); from/to merges the range's whole months and other days page by
    page in the API process: no Redis command grows with the data.
    """
    ranked = analytics.top_users(store(), args["n"], args["by"], args["period"])
    return {**args, "users": ranked}


@blp.route("/stats/top-products")
@blp.arguments(TopProductsArgsSchema(), location="query")
@blp.response(200, TopProductsSchema)
def top_products(args):
    """The n products with the highest revenue or units sold, all-time or on one UTC day.

    Equal figures are ordered by product id (byte order). Cost: O(log N + n).
    """
    ranked = analytics.top_products(store(), args["n"], args["by"], args.get("day"))
    return {**args, "products": ranked}


@blp.route("/stats/daily")
@blp.arguments(DayRangeArgsSchema(), location="query")
@blp.response(200, DailySchema)
def daily(args):
    """The platform's KPIs for each UTC day from..to, zeros on days without orders.

    Orders count on the UTC day of their own order_timestamp. Cost: O(days).
    """
    period = args["period"]
    return {"first": period.first, "last": period.last,
            "days": analytics.daily(store(), period)}


@blp.route("/stats/monthly")
@blp.arguments(MonthRangeArgsSchema(), location="query")
@blp.response(200, MonthlySchema)
def monthly(args):
    """The platform's KPIs for each UTC month from..to, zeros in months without orders.

    Cost: O(months).
    """
    months = args["months"]
    return {"first": months.first, "last": months.last,
            "months": analytics.monthly(store(), months)}


@blp.route("/users/<path:user_id>/summary")
@blp.response(200, UserSummarySchema)
@blp.alt_response(404, schema=ErrorSchema, description="No order counted for this user")
def user_summary(user_id):
    """A user's all-time totals, average order value and first and last order times.

    Cost: O(1).
    """
    return found(analytics.user_summary(store(), user_id), no_orders_of(user_id))


@blp.route("/products/<path:product_id>/stats")
@blp.response(200, ProductStatsSchema)
@blp.alt_response(404, schema=ErrorSchema, description="This product was never sold")
def product_stats(product_id):
    """A product's all-time units sold, revenue and number of orders.

    Cost: O(1).
    """
    return found(analytics.product_stats(store(), product_id),
                 f"No sales counted for product {product_id!r}.")
