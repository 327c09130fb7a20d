"""The Celery app that workers, Flower and the celery CLI load with `-A tasks`."""
import logging

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger
from pythonjsonlogger.json import JsonFormatter

from app.settings import from_env
from tasks.transport import use_for_sqs_urls

use_for_sqs_urls()
app = Celery("orders", include=["tasks.orders", "tasks.files"], control="tasks.control:ControlPlane")
app.config_from_object("celeryconfig")


@after_setup_logger.connect
@after_setup_task_logger.connect
def use_json_logs(logger: logging.Logger, **kwargs):
    """With LOG_FORMAT=json every worker log line is one JSON object (for log shippers)."""
    if from_env().log_format != "json":
        return
    formatter = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s",
                              rename_fields={"levelname": "level", "asctime": "time"})
    for handler in logger.handlers:
        handler.setFormatter(formatter)
