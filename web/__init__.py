"""The read-only statistics API: create_app() is what gunicorn serves."""
from __future__ import annotations

import logging

import redis
from flask import Flask
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from app import settings as app_settings
from app.store import Store
from web.schemas import ErrorSchema

logger = logging.getLogger(__name__)


class JsonApi(Api):
    """flask-smorest's Api with every error as {"error", "status"[, "errors"]} JSON."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException):
        """Answer any HTTP error as JSON, never an HTML page."""
        data = getattr(error, "data", None) or {}
        payload = {"error": data.get("message") or error.description, "status": error.code}
        errors = data.get("errors") or data.get("messages")
        if errors:
            # webargs nests argument errors by location ("query"); the names are enough.
            payload["errors"] = {name: messages for location in errors.values()
                                 for name, messages in location.items()}
            payload["error"] = "Invalid arguments: " + ", ".join(sorted(payload["errors"]))
        # The exception's own headers (Allow on a 405) stay; its HTML Content-Type does not.
        headers = {name: value for name, value in error.get_headers()
                   if name.lower() != "content-type"}
        return payload, error.code, {**headers, **(data.get("headers") or {})}


def create_app(settings: app_settings.Settings | None = None) -> Flask:
    """Build the Flask app for the given settings (default: from the environment)."""
    settings = settings or app_settings.from_env()
    flask_app = Flask(__name__)
    flask_app.config.update(
        API_TITLE="Order pipeline statistics",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        # The API only reads: nothing legitimate sends a body.
        MAX_CONTENT_LENGTH=16 * 1024,
    )
    flask_app.json.sort_keys = False  # keep the documented field order
    flask_app.extensions["settings"] = settings
    flask_app.extensions["store"] = Store.from_url(settings.api_store_url)

    api = JsonApi(flask_app)
    from web import analytics, health, metrics, stats  # blueprints import the app's helpers
    api.register_blueprint(stats.blp)
    api.register_blueprint(analytics.blp)
    api.register_blueprint(health.blp)
    # SQS is read by a background thread (web.metrics.SqsFigures), never by a request.
    metrics.init_app(flask_app, settings, flask_app.extensions["store"])

    @flask_app.errorhandler(redis.RedisError)
    def redis_unavailable(error):
        """Redis down or timing out: 503, the client may retry."""
        logger.warning("Redis error: %s", error)
        return {"error": "Statistics are unavailable: Redis does not answer.", "status": 503}, 503

    @flask_app.errorhandler(Exception)
    def unexpected(error):
        """Any bug: logged with its traceback, answered as a plain 500 JSON.

        HTTP errors never get here: flask-smorest's handler for them is more specific.
        """
        logger.exception("Unhandled error")
        return {"error": "Internal server error.", "status": 500}, 500

    return flask_app
