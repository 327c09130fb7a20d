"""Settings derived from the environment: queue URLs and the checks that refuse bad ones."""
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.settings import Settings, from_env
from stack.services import PROJECT_ROOT as ROOT


def test_extra_queues_live_beside_the_orders_queue_on_aws_too():
    settings = from_env({
        "SQS_ENDPOINT_URL": "",
        "ORDERS_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/orders-queue",
        "EXTRA_ORDERS_QUEUES": " OrderQueue, ,orders-queue,OrderQueue,legacy-orders",
    })
    assert settings.consumed_queue_urls == {
        "orders-queue": "https://sqs.eu-west-1.amazonaws.com/123456789012/orders-queue",
        "OrderQueue": "https://sqs.eu-west-1.amazonaws.com/123456789012/OrderQueue",
        "legacy-orders": "https://sqs.eu-west-1.amazonaws.com/123456789012/legacy-orders",
    }


def test_no_extra_queues_by_default():
    assert Settings().consumed_queue_urls == {
        "orders-queue": "http://127.0.0.1:4566/000000000000/orders-queue"}


@pytest.mark.parametrize("extra, dlq", [("orders-queue-dlq", ""), ("", "orders-queue")])
def test_the_dead_letter_queue_cannot_be_an_orders_queue(extra, dlq):
    with pytest.raises(ValueError, match="dead-letter queue"):
        Settings(extra_orders_queues=extra, orders_dlq=dlq)


@dataclass(frozen=True)
class Toggles:
    enabled: bool = False
    retries: int = 3


@pytest.mark.parametrize("raw, expected", [("true", True), ("Yes", True), ("1", True),
                                           ("on", True), ("false", False), ("0", False),
                                           ("NO", False), (" off ", False)])
def test_booleans_are_read_from_words(raw, expected):
    assert from_env({"ENABLED": raw}, cls=Toggles).enabled is expected


@pytest.mark.parametrize("variable, raw", [("ENABLED", "maybe"), ("RETRIES", "three")])
def test_a_value_of_the_wrong_type_is_refused_by_name(variable, raw):
    with pytest.raises(ValueError, match=f"{variable} must be"):
        from_env({variable: raw}, cls=Toggles)


@pytest.mark.parametrize("variable, url", [
    ("REDIS_URL", "localhost:6379"), ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_URL", "redis://127.0.0.1:6379/zero"), ("API_REDIS_URL", "127.0.0.1"),
    ("CONTROL_URL", "redis://127.0.0.1:6379/-1"), ("SQS_ENDPOINT_URL", "127.0.0.1:4566"),
    ("FILES_ENDPOINT_URL", "s3://bucket"), ("ORDERS_QUEUE_URL", "orders-queue"),
    ("FILES_QUEUE_URL", "ftp://host/q"), ("FLOWER_URL", "127.0.0.1:5555"),
])
def test_a_url_of_the_wrong_kind_is_refused_by_name_without_its_password(variable, url):
    url = url.replace("127.0.0.1", "user:s3cret@127.0.0.1")
    with pytest.raises(ValueError, match=f"^{variable} must be ") as refused:
        from_env({variable: url})
    assert "s3cret" not in str(refused.value)


BIN = Path(sys.executable).parent
# Every kind of process, started as its documentation says, with one bad variable.
ENTRY_POINTS = {
    "worker": [BIN / "celery", "-A", "tasks", "worker", "-Q", "orders-queue"],
    "celery-cli": [BIN / "celery", "-A", "tasks", "dlq", "list"],
    "api": [BIN / "gunicorn", "-c", "web/gunicorn.conf.py", "web:create_app()"],
    "flask": [BIN / "flask", "--app", "web:create_app()", "routes"],
    "stack": [BIN / "orders-stack", "run"],
    "producer": [BIN / "orders-produce", "--count", "1"],
    "files-cli": [BIN / "orders-files", "upload", "README.md"],
    "init-queues": [sys.executable, "-m", "stack.init_queues"],
    "init-files": [sys.executable, "-m", "stack.init_files"],
    "migrate-store": [sys.executable, "-m", "stack.migrate_store", "--dry-run"],
    "celeryconfig": [sys.executable, "-m", "celeryconfig"],
}


@pytest.mark.parametrize("variable, raw, reason", [
    ("MAX_RECEIVE_COUNT", "five", "MAX_RECEIVE_COUNT must be int, not 'five'"),
    ("FILES_BATCH_WINDOW", "0", "FILES_BATCH_WINDOW must be above 0"),
    ("REDIS_URL", "localhost:6379", "REDIS_URL must be "),
])
@pytest.mark.parametrize("process", ENTRY_POINTS)
def test_a_bad_variable_stops_every_process_with_its_reason_on_one_line(process, variable,
                                                                         raw, reason):
    env = {**os.environ, variable: raw}
    ran = subprocess.run(ENTRY_POINTS[process], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 1
    assert ran.stdout == ""
    assert len(ran.stderr.splitlines()) == 1
    assert ran.stderr.startswith(f"configuration error: {reason}")
