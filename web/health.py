"""Health of the services behind the API."""
from flask import current_app
from flask_smorest import Blueprint

from web.schemas import HealthSchema

blp = Blueprint("health", __name__, description="Service health")


def _store_check() -> str:
    """"ok" when the store answers INFO in time and takes writes, else the reason."""
    try:
        state = current_app.extensions["store_health"].state()
    except Exception as exc:  # any failure means "down"; the reason helps the operator
        return f"unavailable: {type(exc).__name__}"
    return "ok" if state.writable else "not writable: " + "; ".join(state.problems)


@blp.route("/health")
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema, description="A dependency is down")
def health():
    """State of Redis and SQS: 200 when Redis takes writes and SQS answers, 503 naming
    what is wrong (Redis down or slow, a replica, memory full, persistence failing, an
    eviction policy other than noeviction; SQS down).

    SQS counts as down when its last background read failed or is too old.
    """
    # SQS from the figures a background thread reads: a slow SQS holds no request here.
    sqs = current_app.extensions["sqs_figures"].snapshot()
    checks = {"redis": _store_check(),
              "sqs": "ok" if sqs.current else f"unavailable: {sqs.error}"}
    down = sorted(name for name, state in checks.items() if state != "ok")
    body = {"status": "unavailable" if down else "ok", "down": down, **checks}
    return body, 503 if down else 200
