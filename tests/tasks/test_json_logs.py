"""LOG_FORMAT=json turns worker log lines into JSON objects carrying the order fields."""
import io
import json
import logging

from tasks.celery import use_json_logs


def test_json_format_emits_one_object_per_line_with_extra_fields(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "json")
    stream = io.StringIO()
    logger = logging.getLogger("test-json-logs")
    logger.handlers = [logging.StreamHandler(stream)]
    use_json_logs(logger)
    logger.warning("order %s: %s", "O1", "counted", extra={"order_id": "O1", "task_id": "t-1"})
    line = json.loads(stream.getvalue())
    assert line["message"] == "order O1: counted"
    assert (line["order_id"], line["task_id"], line["level"]) == ("O1", "t-1", "WARNING")


def test_text_format_leaves_handlers_alone(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "text")
    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("test-text-logs")
    logger.handlers = [handler]
    use_json_logs(logger)
    assert handler.formatter is None
