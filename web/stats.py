"""Statistics endpoints."""
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from app.money import from_cents
from web.analytics import user_period
from web.schemas import (ErrorSchema, GlobalStatsSchema, OptionalDayRangeArgsSchema,
                         UserStatsRangeSchema)

blp = Blueprint("stats", __name__, description="Order statistics")


def store():
    """The app's Redis gateway."""
    return current_app.extensions["store"]


@blp.route("/users/<path:user_id>/stats")
class UserStats(MethodView):
    @blp.arguments(OptionalDayRangeArgsSchema, location="query")
    @blp.response(200, UserStatsRangeSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No order counted for this user")
    def get(self, args, user_id):
        """All-time order count and spend of one user; with from/to, of those days."""
        if args["period"]:
            return user_period(user_id, args["period"])
        stats = store().user_stats(user_id)
        if stats is None:
            abort(404, message=f"No orders counted for user {user_id!r}.")
        return {"user_id": stats.user_id, "order_count": stats.order_count,
                "total_spend": from_cents(stats.total_spend_cents)}


@blp.route("/stats/global")
class GlobalStats(MethodView):
    @blp.response(200, GlobalStatsSchema)
    def get(self):
        """All-time order count and revenue of the platform (zeros when empty)."""
        stats = store().global_stats()
        return {"total_orders": stats.total_orders,
                "total_revenue": from_cents(stats.total_revenue_cents)}


# Paths an existing client uses: the same views under their old names.
blp.route("/user/<path:user_id>/stats", endpoint="UserStatsAlias")(UserStats)
blp.route("/global/stats", endpoint="GlobalStatsAlias")(GlobalStats)
