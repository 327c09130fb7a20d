"""`celery -A tasks dlq ...` and `celery -A tasks rejected ...` against real SQS and Redis."""
import base64
import json

from app.deadletters import ORIGINAL_ID_ATTRIBUTE
from app.orders import Incoming, evaluate
import pytest

from app.settings import Settings
from conftest import celery_cli, free_port, order_body



def receive_all(sqs_client, url):
    messages = []
    while batch := sqs_client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
            MessageAttributeNames=["All"]).get("Messages", []):
        messages += batch
    return messages


def task_envelope(task_id, retries):
    """A Celery task message as kombu puts it on SQS (base64 of the JSON envelope)."""
    envelope = {"body": "W1tdLCB7fSwge31d", "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {"task": "orders.process", "id": task_id, "retries": retries},
                "properties": {"delivery_tag": "x"}}
    return base64.b64encode(json.dumps(envelope).encode()).decode()


def test_dlq_list_show_redrive_and_purge(settings, sqs_client):
    dlq_url = sqs_client.get_queue_url(QueueName=settings.dlq_name)["QueueUrl"]
    raw_ids = [sqs_client.send_message(QueueUrl=dlq_url, MessageBody=f'{{"n": {i}}}')["MessageId"]
               for i in range(3)]
    sqs_client.send_message(QueueUrl=dlq_url, MessageBody=task_envelope("task-42", retries=5))

    listed = json.loads(celery_cli(settings, "dlq", "list", "--json").stdout)
    assert sorted(m["task_id"] for m in listed) == sorted(raw_ids + ["task-42"])
    assert "task-42" in celery_cli(settings, "dlq", "list").stdout  # the table form
    shown = json.loads(celery_cli(settings, "dlq", "show", "task-42", "--json").stdout)
    assert shown["retries"] == 5

    redriven = json.loads(celery_cli(settings, "dlq", "redrive", raw_ids[0], "task-42", "--json").stdout)
    assert len(redriven["redriven"]) == 2 and redriven["not_found"] == []
    back = receive_all(sqs_client, settings.orders_url)
    by_original = {m["MessageAttributes"][ORIGINAL_ID_ATTRIBUTE]["StringValue"]: m for m in back}
    assert set(by_original) == {raw_ids[0], shown["message_id"]}
    assert by_original[raw_ids[0]]["Body"] == '{"n": 0}'
    envelope = json.loads(base64.b64decode(by_original[shown["message_id"]]["Body"]))
    assert envelope["headers"]["retries"] == 0 and envelope["headers"]["id"] == "task-42"

    missing = celery_cli(settings, "dlq", "redrive", "no-such-id", check=False)
    assert missing.returncode == 1 and "no-such-id" in missing.stderr
    assert len(json.loads(celery_cli(settings, "dlq", "list", "--json").stdout)) == 2
    assert "Deleted 2 message(s)." in celery_cli(settings, "dlq", "purge", "--yes").stdout
    assert json.loads(celery_cli(settings, "dlq", "list", "--json").stdout) == []


def test_rejected_list_show_and_requeue(settings, store, sqs_client):
    bad = order_body("ORD-BAD", value_cents=502)  # the item total is 5.00
    store.apply([evaluate(Incoming(bad, "msg-1"), Settings()),
                 evaluate(Incoming("not json", "msg-2"), Settings())])

    listed = json.loads(celery_cli(settings, "rejected", "list", "--json").stdout)
    assert {r["message_id"] for r in listed} == {"msg-1", "msg-2"}
    shown = json.loads(celery_cli(settings, "rejected", "show", "ORD-BAD", "--json").stdout)
    assert shown["body"] == bad
    assert shown["reasons"] == {"order_value": ["5.02 does not match the item total 5.00."]}

    assert "Requeued msg-1" in celery_cli(settings, "rejected", "requeue", "ORD-BAD").stdout
    assert store.rejection("msg-1") is None and store.outcomes()["rejected"] == 1
    [message] = receive_all(sqs_client, settings.orders_url)
    assert message["Body"] == bad
    assert message["MessageAttributes"][ORIGINAL_ID_ATTRIBUTE]["StringValue"] == "msg-1"
    unknown = celery_cli(settings, "rejected", "requeue", "nope", check=False)
    assert unknown.returncode == 1 and "nope" in unknown.stderr


# A crafted id: a forged log-looking line, a screen clear, a C1 CSI and a bidi override.
CRAFTED_ID = "X1\n[2026-01-01 00:00:00,000: WARNING] forged\x1b[2J\x9b31m\u202eevil"


def test_crafted_ids_are_escaped_in_rejected_list_and_show(settings, store):
    body = json.dumps({"order_id": CRAFTED_ID, "user_id": "U1"})
    message_id = "m-\x1b]0;title\x07"
    store.apply([evaluate(Incoming(body, message_id, None), Settings())])

    for args in (("rejected", "list"), ("rejected", "show", CRAFTED_ID)):
        out = celery_cli(settings, *args).stdout
        assert "forged" in out  # shown, escaped
        assert not any(line.startswith("[2026") for line in out.splitlines()), out
        assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out and "\x07" not in out
        assert "\\x1b[2J" in out and "X1\\n[2026" in out


@pytest.mark.parametrize("command, service", [
    (["dlq", "list"], "AWS"), (["dlq", "show", "x"], "AWS"), (["dlq", "redrive", "--all"], "AWS"),
    (["rejected", "list"], "Redis"), (["rejected", "show", "x"], "Redis"),
    (["rejected", "requeue", "x"], "Redis"), (["files", "list"], "Redis"),
    (["files", "show", "x"], "Redis"), (["files", "sweep"], "Redis"),
])
def test_a_service_that_does_not_answer_is_named_on_one_line(command, service):
    port = free_port()  # nothing listens there
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0",
                        sqs_endpoint_url=f"http://127.0.0.1:{port}")
    ran = celery_cli(settings, *command, check=False)
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr
    assert ran.stderr.splitlines()[-1].startswith(f"Error: {service}: ")
    assert f"127.0.0.1:{port}" in ran.stderr
