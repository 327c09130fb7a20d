"""LOG_FORMAT=json turns worker log lines into JSON objects carrying the order fields;
text logs escape what messages carry."""
import io
import json
import logging

from celery import current_app

from app.settings import Settings
from tasks.celery import EscapedMessages, create_celery, format_logs, use_log_format


def logger_on(stream, name):
    logger = logging.getLogger(name)
    logger.handlers = [logging.StreamHandler(stream)]
    return logger


def test_json_format_emits_one_object_per_line_with_extra_fields():
    stream = io.StringIO()
    logger = logger_on(stream, "test-json-logs")
    format_logs(logger, Settings(log_format="json"))
    logger.warning("order %s: %s", "O1", "counted", extra={"order_id": "O1", "task_id": "t-1"})
    line = json.loads(stream.getvalue())
    assert line["message"] == "order O1: counted"
    assert (line["order_id"], line["task_id"], line["level"]) == ("O1", "t-1", "WARNING")


def test_text_format_keeps_the_formatter_and_escapes_messages():
    stream = io.StringIO()
    logger = logger_on(stream, "test-text-logs")
    format_logs(logger, Settings(log_format="text"))
    format_logs(logger, Settings(log_format="text"))  # Celery may set a logger up twice
    assert logger.handlers[0].formatter is None
    assert [type(f) for f in logger.handlers[0].filters] == [EscapedMessages]
    logger.warning("order %s", "X\nforged")
    assert stream.getvalue() == "order X\\nforged\n"


def test_celerys_logger_setup_follows_the_current_apps_settings():
    previous = current_app._get_current_object()
    try:
        for log_format, formatted in (("json", True), ("text", False)):
            create_celery(Settings(log_format=log_format)).set_current()
            logger = logger_on(io.StringIO(), f"test-signal-{log_format}")
            use_log_format(logger)  # what Celery's after_setup_logger signal calls
            assert (logger.handlers[0].formatter is not None) is formatted
    finally:
        previous.set_current()
