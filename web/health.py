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
        """State of Redis and SQS: 200 when both answer, 503 naming what is down."""
        settings = current_app.extensions["settings"]
        store = current_app.extensions["store"]
        client = current_app.extensions["sqs"]
        checks = {
            "redis": _check(store.ping),
            "sqs": _check(lambda: client.get_queue_attributes(
                QueueUrl=settings.orders_url, AttributeNames=["QueueArn"])),
        }
        down = sorted(name for name, state in checks.items() if state != "ok")
        body = {"status": "unavailable" if down else "ok", "down": down, **checks}
        return body, 503 if down else 200
