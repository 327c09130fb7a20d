"""Health of the services behind the API."""
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from web.schemas import HealthSchema

blp = Blueprint("health", __name__, description="Service health")


def _check(probe) -> str:
    try:
        probe()
    except Exception as exc:  # any failure means "down"; the reason helps the operator
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="A dependency is down")
    def get(self):
        """State of Redis and SQS: 200 when both answer, 503 naming what is down.

        SQS counts as down when its last background read failed or is too old.
        """
        store = current_app.extensions["store"]
        # SQS from the figures a background thread reads: a slow SQS holds no worker here.
        sqs = current_app.extensions["sqs_figures"].snapshot()
        checks = {"redis": _check(store.ping),
                  "sqs": "ok" if sqs.current else f"unavailable: {sqs.error}"}
        down = sorted(name for name, state in checks.items() if state != "ok")
        body = {"status": "unavailable" if down else "ok", "down": down, **checks}
        return body, 503 if down else 200
