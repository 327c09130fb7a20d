"""The Celery app factory: one app per process, built from the pipeline's Settings."""
from __future__ import annotations

import logging

from celery import Celery, current_app
from celery.signals import after_setup_logger, after_setup_task_logger
from pythonjsonlogger.json import JsonFormatter

import celeryconfig
from app.settings import Settings
from tasks.transport import use_for_sqs_urls


class PipelineCelery(Celery):
    """A Celery app carrying the pipeline's Settings, which tasks, consumer and CLI read."""

    def __init__(self, settings: Settings, *args, **kwargs):
        self.settings = settings
        super().__init__(*args, **kwargs)


def create_celery(settings: Settings) -> PipelineCelery:
    """The Celery app of workers, Flower and the celery CLI, for these settings."""
    use_for_sqs_urls()
    app = PipelineCelery(settings, "orders", include=["tasks.orders"],
                         control="tasks.control:ControlPlane")
    app.config_from_object(celeryconfig.celery_settings(settings))
    return app


def json_logs(logger: logging.Logger, settings: Settings):
    """With LOG_FORMAT=json every worker log line is one JSON object (for log shippers)."""
    if settings.log_format != "json":
        return
    formatter = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s",
                              rename_fields={"levelname": "level", "asctime": "time"})
    for handler in logger.handlers:
        handler.setFormatter(formatter)


@after_setup_logger.connect
@after_setup_task_logger.connect
def use_json_logs(logger: logging.Logger, **kwargs):
    """Celery has set up a logger: format it as the current app's settings say."""
    settings = getattr(current_app, "settings", None)
    if settings is not None:
        json_logs(logger, settings)
