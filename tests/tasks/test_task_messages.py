"""The check of task messages on the orders queues, without a broker (tasks/sqs/task_messages.py)."""
import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings

import strategies
from tasks.sqs.task_messages import Refused, accepted_task_message

VISIBILITY = 300


def decoded(sqs_body: str) -> dict:
    try:
        return json.loads(sqs_body)
    except ValueError:
        return json.loads(base64.b64decode(sqs_body))


def run_args(payload: dict) -> list:
    """[args, kwargs, embed] as the worker decodes them from an accepted payload."""
    return json.loads(base64.b64decode(payload["body"]))


def test_a_producers_orders_process_message_is_run_as_sent():
    order = {"order_id": "T-1", "note": "A\ud800"}
    envelope = strategies.task_envelope("orders.process", [order], {"message_id": "m-1"})
    payload = accepted_task_message(envelope, VISIBILITY)
    assert run_args(payload)[:2] == [[order], {"message_id": "m-1"}]
    assert payload["headers"]["id"] == envelope["headers"]["id"]
    assert payload["headers"]["task"] == "orders.process"


def test_a_retried_batch_keeps_its_entries_retries_and_eta():
    entries = [{"body": "{}", "message_id": f"m-{i}", "sent_at_ms": 1, "refused_task": None}
               for i in range(10)]
    envelope = strategies.task_envelope("orders.process_batch", [entries])
    eta = datetime.now(timezone.utc) + timedelta(seconds=30)
    envelope["headers"].update(retries=2, eta=eta.isoformat())
    payload = accepted_task_message(envelope, VISIBILITY)
    assert run_args(payload)[0] == [entries]
    assert payload["headers"]["retries"] == 2
    assert datetime.fromisoformat(payload["headers"]["eta"]) == eta


def change(part: str, key: str, value):
    def apply(envelope):
        (envelope[part] if part else envelope)[key] = value
    return apply


@pytest.mark.parametrize("name, task, edit, words", [
    ("Celery's own task", "celery.accumulate", None, "celery.accumulate"),
    ("unhashable task", "orders.process", change("headers", "task", []), "[]"),
    ("no id", "orders.process", change("headers", "id", None), "id None"),
    ("undecodable body", "orders.process", change("", "body", "abc"), "base64"),
    ("rot13", "orders.process", change("properties", "body_encoding", "rot13"), "rot13"),
    ("pickle", "orders.process",
     change("", "content-type", "application/x-python-serialize"), "content-type"),
    ("expiry", "orders.process", change("headers", "expires", "2030-01-01T00:00:00"), "expire"),
    ("far eta", "orders.process", change("headers", "eta", "2999-01-01T00:00:00Z"), "visibility"),
    ("year-1 eta", "orders.process", change("headers", "eta", "0001-01-01T00:00:00+01:00"),
     "ISO-8601"),
    ("control id", "orders.process", change("headers", "id", "a\nb"), "id"),
])
def test_task_messages_that_are_not_ours_are_refused_with_a_reason(name, task, edit, words):
    args = [{"order_id": "T-1"}] if task == "orders.process" else [1, 2]
    envelope = strategies.task_envelope(task, args)
    if edit:
        edit(envelope)
    with pytest.raises(Refused) as refused:
        accepted_task_message(envelope, VISIBILITY)
    assert words in str(refused.value), str(refused.value)
    str(refused.value).encode("utf-8")


@hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=strategies.mutated_envelopes())
def test_any_task_message_is_refused_or_rebuilt_as_celery_writes_it(body):
    envelope = decoded(body)
    if not isinstance(envelope, dict):
        return
    try:
        payload = accepted_task_message(envelope, VISIBILITY)
    except Refused as refused:
        str(refused).encode("utf-8")  # the reason is stored with the rejection
        return
    args, kwargs, embed = run_args(payload)
    assert payload["headers"]["task"] in ("orders.process", "orders.process_batch")
    assert payload["headers"]["timelimit"] == [None, None] and not any(embed.values())
    assert payload["headers"]["id"].isprintable()
