"""The Celery app factory: one app per process, built from the pipeline's Settings."""
from __future__ import annotations

import logging

import redis
from botocore.exceptions import BotoCoreError, ClientError
from celery import Celery, current_app
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init
from pythonjsonlogger.json import JsonFormatter

import celeryconfig
from app import sqs
from app.display import printable
from app.redis_client import check_control_plane, check_eviction_policy
from app.settings import Settings
from tasks.sqs.receive import use_for_sqs_urls


class PipelineCelery(Celery):
    """A Celery app carrying the pipeline's Settings, which tasks, consumer and CLI read."""

    def __init__(self, settings: Settings, *args, **kwargs):
        self.settings = settings
        super().__init__(*args, **kwargs)


def create_celery(settings: Settings) -> PipelineCelery:
    """The Celery app of workers, Flower and the celery CLI, for these settings."""
    use_for_sqs_urls()
    app = PipelineCelery(settings, "orders", include=["tasks.orders", "tasks.file_tasks"],
                         control="tasks.control:ControlPlane")
    app.config_from_object(celeryconfig.celery_settings(settings))
    return app


class EscapedMessages(logging.Filter):
    """Escapes each record's message: ids and bodies come from any SQS sender."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the message by its escaped text (its traceback, if any, stays as it is)."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging's own error report shows it
            return True
        record.msg, record.args = printable(message), None
        return True


def format_logs(logger: logging.Logger, settings: Settings):
    """JSON lines with LOG_FORMAT=json (for log shippers); otherwise text in which no
    message can forge a line or send terminal escapes (JSON escapes by itself)."""
    if settings.log_format == "json":
        formatter = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(processName)s "
                                  "%(message)s",
                                  rename_fields={"levelname": "level", "asctime": "time"})
        for handler in logger.handlers:
            handler.setFormatter(formatter)
        return
    for handler in logger.handlers:
        if not any(isinstance(f, EscapedMessages) for f in handler.filters):
            handler.addFilter(EscapedMessages())


@after_setup_logger.connect
@after_setup_task_logger.connect
def use_log_format(logger: logging.Logger, **kwargs):
    """Celery has set up a logger: format it as the current app's settings say."""
    settings = getattr(current_app, "settings", None)
    if settings is not None:
        format_logs(logger, settings)


@worker_init.connect
def refuse_what_cannot_work(sender=None, **kwargs):
    """A worker needs its queues, a standalone control plane and a store that never evicts:
    else it exits with one line saying which and how to fix it."""
    app = sender.app if sender else current_app
    settings = getattr(app, "settings", None)
    if settings is None:
        return
    try:
        # The queues this worker consumes: all of task_queues, or those named with -Q.
        check_queues(settings, list(app.amqp.queues.consume_from))
        check_control_plane(settings)
        check_eviction_policy(settings)
    except ValueError as exc:
        # SystemExit prints the message alone: a traceback would bury it.
        raise SystemExit(f"worker not started: {exc}") from None
    except redis.RedisError as exc:
        # Redis not up yet: the worker starts all the same, its tasks retry until it is.
        logging.getLogger(__name__).warning("could not check the control plane and the "
                                            "store: %s", exc)


def check_queues(settings: Settings, names: list[str]):
    """Raise MissingQueue for a queue SQS does not have; only warn if SQS cannot tell."""
    try:
        sqs.check_queues_exist(settings, names)
    except (BotoCoreError, ClientError) as exc:
        # SQS not reachable yet, or no permission to look: kombu's own calls will say more.
        logging.getLogger(__name__).warning("could not check that the queues %s exist: %s",
                                            ", ".join(names), exc)
