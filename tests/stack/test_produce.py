"""`orders-produce` against a real SQS server (the session's LocalStack)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from app import sqs
from app.sample import generate
from app.settings import Settings, variables
from stack import produce
from stack.services import free_port

PRODUCE = Path(sys.executable).parent / "orders-produce"
MIXED = ["--invalid-share", "0.1", "--duplicate-share", "0.1", "--legacy-share", "0.05"]


@pytest.fixture
def queue(sqs_server, monkeypatch):
    """A fresh queue name, with only SQS_ENDPOINT_URL and ORDERS_QUEUE in the environment."""
    for name, _ in variables():
        monkeypatch.delenv(name, raising=False)
    name = f"t-produce-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SQS_ENDPOINT_URL", sqs_server.endpoint_url)
    monkeypatch.setenv("ORDERS_QUEUE", name)
    return Settings(sqs_endpoint_url=sqs_server.endpoint_url, orders_queue=name)


def run(*args, input=None):
    return CliRunner().invoke(produce.main, [str(a) for a in args], input=input)


def drain(settings: Settings, expected: int) -> list[str]:
    """Receive and delete messages until `expected` arrived and one more poll finds none."""
    client = sqs.client(settings)
    url = sqs.queue_url(settings, settings.orders_queue, client)
    bodies = []
    while True:
        messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=1 if len(bodies) >= expected else 5
                                          ).get("Messages", [])
        if not messages:
            return bodies
        bodies += [m["Body"] for m in messages]
        client.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])


def without_timestamps(body: str) -> str:
    # Generated times depend on the clock (the last --days days): compare everything else.
    return re.sub(r'"order_timestamp": "[^"]*"', '"order_timestamp": ""', body)


def test_generated_orders_all_arrive_exactly_as_generated(queue):
    result = run("--count", 500, "--seed", 11, *MIXED, "--create-queue", "--quiet",
                 "--threads", 3)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sent 500, failed 0 to ")
    expected = list(generate(500, seed=11, invalid_share=0.1, duplicate_share=0.1,
                             legacy_share=0.05))
    kinds = Counter(s.kind for s in expected)
    assert f"{kinds['duplicate']} duplicate, {kinds['invalid']} invalid" in result.stdout
    received = drain(queue, 500)
    assert Counter(map(without_timestamps, received)) == \
        Counter(without_timestamps(s.body) for s in expected)
    # Duplicates really are the same body twice, so the pipeline can tell them apart.
    assert len(set(received)) == 500 - kinds["duplicate"]


def test_create_queue_sets_up_the_dead_letter_queue(queue):
    assert run("--count", 1, "--create-queue").exit_code == 0
    client = sqs.client(queue)
    policy = client.get_queue_attributes(
        QueueUrl=sqs.queue_url(queue, queue.orders_queue, client),
        AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
    assert json.loads(policy)["deadLetterTargetArn"].endswith(f":{queue.dlq_name}")


def test_file_lines_are_sent_as_is(queue, tmp_path):
    sqs.ensure_queues(queue)
    lines = ['{"order_id": "ORD1", "order_value": NaN}',
             "not json at all",
             '{"user_id": "123", "amount": 100}',
             '{"user_id": "Zoë", "order_value": 9.5}',
             '{"order_id": "ORD1", "order_value": NaN}']  # a duplicate line stays a duplicate
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(lines[:2]) + "\n\n   \n" + "\r\n".join(lines[2:]) + "\n",
                    encoding="utf-8")

    result = run("--file", path)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sent 5, failed 0 ")
    assert Counter(drain(queue, 5)) == Counter(lines)


def test_stdin_lines_are_sent(queue):
    sqs.ensure_queues(queue)
    result = run("--file", "-", "--queue", queue.orders_queue, input='{"a": 1}\n{"b": 2}')
    assert result.exit_code == 0, result.output
    assert sorted(drain(queue, 2)) == ['{"a": 1}', '{"b": 2}']


def test_queue_option_overrides_orders_queue(queue):
    other = f"{queue.orders_queue}-other"
    assert run("--count", 20, "--queue", other, "--create-queue").exit_code == 0
    assert len(drain(Settings(sqs_endpoint_url=queue.sqs_endpoint_url, orders_queue=other),
                     20)) == 20
    assert sqs.depth(queue, other)["visible"] == 0


def test_refused_entries_are_reported_and_the_rest_is_sent(queue, tmp_path):
    sqs.ensure_queues(queue)
    path = tmp_path / "orders.jsonl"
    # SQS refuses bodies with control characters such as U+0001.
    path.write_text('{"ok": 1}\n{"bad": "\x01"}\n{"ok": 2}\n', encoding="utf-8")

    result = run("--file", path)

    assert result.exit_code == 1
    assert "sent 2, failed 1 " in result.stdout
    assert "error in 1 batch" in result.stderr
    assert sorted(drain(queue, 2)) == ['{"ok": 1}', '{"ok": 2}']


def test_a_missing_queue_fails_with_a_hint(queue):
    result = run("--count", 5)
    assert result.exit_code == 1
    assert "not found" in result.stderr and "--create-queue" in result.stderr


def test_bad_options_are_usage_errors(queue, tmp_path):
    assert run("--count", 3, "--file", "-", input="x").exit_code == 2
    assert run("--invalid-share", 0.7, "--duplicate-share", 0.7).exit_code == 2


def test_an_unreachable_endpoint_fails_every_message_and_stops_early(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SQS_ENDPOINT_URL", url)
    result = run("--count", 300, "--threads", 1, "--queue", f"{url}/000000000000/orders-queue")
    assert result.exit_code == 1
    assert "sent 0, failed 300 " in result.stdout
    assert "Could not connect" in result.stderr
    # Only the batches already under way were tried; the rest were not.
    skipped = int(re.search(r"(\d+) messages not tried", result.stderr).group(1))
    assert 300 - 4 * 10 <= skipped < 300


def test_console_script_without_a_tty_prints_only_the_summary(queue):
    result = subprocess.run([str(PRODUCE), "--count", "100", "--create-queue"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when not on a terminal
    assert re.fullmatch(r"sent 100, failed 0 to \S+ in [\d.]+s \(\d+ msg/s\); sent 100 valid\n",
                        result.stdout)
    assert len(drain(queue, 100)) == 100
