"""The read-only statistics API: create_app() is what gunicorn serves."""
from __future__ import annotations

import logging
from importlib.resources import files as package_files

import redis
from flask import Flask, request, send_from_directory
from flask_smorest import Api, abort
from werkzeug.exceptions import HTTPException

from app import settings as app_settings
from app.store import FilesStore, Store
from app.store.lua import ReadFunctionsMissing
from web.schemas import ErrorSchema

logger = logging.getLogger(__name__)
SWAGGER_UI_ASSETS = "/docs/assets"
SWAGGER_UI_DIST = str(package_files("flask_swagger_ui") / "dist")


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
    settings = settings or app_settings.from_env_or_exit()
    flask_app = Flask(__name__)
    flask_app.config.update(
        API_TITLE="Order pipeline statistics",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Served from the flask-swagger-ui wheel, not a CDN: /docs works offline.
        OPENAPI_SWAGGER_UI_URL=f"{SWAGGER_UI_ASSETS}/",
        # The API only reads: nothing legitimate sends a body.
        MAX_CONTENT_LENGTH=16 * 1024,
    )
    flask_app.json.sort_keys = False  # keep the documented field order
    flask_app.extensions["settings"] = settings
    # One Redis connection for each request a worker may have in flight: redis-py's default
    # pool refuses a 101st, which a gevent worker answered as 503.
    flask_app.extensions["store"] = Store.from_url(
        settings.api_store_url, max_connections=settings.api_worker_connections)
    flask_app.extensions["files_store"] = FilesStore(flask_app.extensions["store"].redis)

    api = JsonApi(flask_app)
    # The blueprints import the app's helpers.
    from web import analytics, dashboard, files, health, metrics, stats
    api.register_blueprint(stats.blp)
    api.register_blueprint(analytics.blp)
    api.register_blueprint(files.blp)
    api.register_blueprint(health.blp)
    api.register_blueprint(dashboard.blp)
    flask_app.register_blueprint(dashboard.page)
    # SQS is read by a background thread (web.metrics.SqsFigures), never by a request.
    metrics.init_app(flask_app, settings, flask_app.extensions["store"])

    @flask_app.before_request
    def refuse_repeated_arguments():
        """?limit=1&limit=2 is ambiguous (webargs would take one): a 422 naming it."""
        if not request.query_string:
            return
        repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
        if repeated:
            abort(422, errors={"query": {name: ["Give this argument once."]
                                         for name in repeated}})

    @flask_app.get(f"{SWAGGER_UI_ASSETS}/<path:filename>")
    def swagger_ui_asset(filename):
        """Swagger UI's scripts and styles, from the package that ships them."""
        return send_from_directory(SWAGGER_UI_DIST, filename, max_age=86400)

    @flask_app.errorhandler(redis.RedisError)
    def redis_unavailable(error):
        """Redis down or timing out: 503, the client may retry."""
        logger.warning("Redis error: %s", error)
        return {"error": "Statistics are unavailable: Redis does not answer.", "status": 503}, 503

    @flask_app.errorhandler(ReadFunctionsMissing)
    def read_functions_missing(error):
        """A store no worker has prepared: 503 saying so (the API's user may not install)."""
        logger.warning("Redis: %s", error)
        return {"error": f"Statistics are unavailable: {error}.", "status": 503}, 503

    @flask_app.errorhandler(Exception)
    def unexpected(error):
        """Any bug: logged with its traceback, answered as a plain 500 JSON.

        HTTP errors never get here: flask-smorest's handler for them is more specific.
        """
        logger.exception("Unhandled error")
        return {"error": "Internal server error.", "status": 500}, 500

    return flask_app
