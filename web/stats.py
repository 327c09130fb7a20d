"""Statistics endpoints."""

from app import analytics
from web.blueprint import Blueprint
from web.context import found, no_orders_of, store
from web.schemas import (ErrorSchema, GlobalStatsSchema, OptionalDayRangeArgsSchema,
                         UserStatsRangeSchema)

blp = Blueprint("stats", __name__, description="Order statistics")


@blp.route("/users/<path:user_id>/stats")
@blp.arguments(OptionalDayRangeArgsSchema(), location="query")
@blp.response(200, UserStatsRangeSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No order counted for this user")
def user_stats(args, user_id):
    """All-time order count and spend of one user; with from/to, of those days."""
    if args["period"]:
        stats = analytics.user_period(store(), user_id, args["period"])
    else:
        stats = store().user_stats(user_id)
    return found(stats, no_orders_of(user_id))


@blp.route("/stats/global")
@blp.response(200, GlobalStatsSchema)
def global_stats():
    """All-time order count and revenue of the platform (zeros when empty)."""
    return store().global_stats()


# Paths an existing client uses: the same views under their old names.
blp.route("/user/<path:user_id>/stats", endpoint="UserStatsAlias")(user_stats)
blp.route("/global/stats", endpoint="GlobalStatsAlias")(global_stats)
