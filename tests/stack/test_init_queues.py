"""`python -m stack.init_queues` against a real SQS server (the session's LocalStack)."""
from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from app import sqs
from app.settings import Settings, from_env, variables
from stack import init_queues

# Own queue name: the server is shared by the session, and main() rewrites the
# attributes of whatever queue it is pointed at.
QUEUE = "t-init-orders"


@pytest.fixture
def env(monkeypatch):
    """A clean environment: only the variables a test sets reach from_env()."""
    for name, _ in variables():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def redrive_policy(settings: Settings) -> dict:
    client = sqs.client(settings)
    attrs = client.get_queue_attributes(
        QueueUrl=sqs.queue_url(settings, settings.orders_queue, client),
        AttributeNames=["RedrivePolicy", "VisibilityTimeout"])["Attributes"]
    return {**json.loads(attrs["RedrivePolicy"]), "VisibilityTimeout": attrs["VisibilityTimeout"]}


def test_main_creates_both_queues_and_the_redrive_policy(sqs_server, env, capsys):
    settings = Settings(sqs_endpoint_url=sqs_server.endpoint_url, orders_queue=QUEUE,
                        max_receive_count=3)
    env.setenv("SQS_ENDPOINT_URL", sqs_server.endpoint_url)
    env.setenv("ORDERS_QUEUE", QUEUE)
    env.setenv("MAX_RECEIVE_COUNT", "3")
    assert from_env() == settings

    # Twice: compose may rerun init on every `up`; the second run must change nothing.
    for _ in range(2):
        assert init_queues.main(attempts=1) == 0
        out = capsys.readouterr().out
        assert QUEUE in out and f"{QUEUE}-dlq" in out

    policy = redrive_policy(settings)
    assert int(policy["maxReceiveCount"]) == 3
    assert policy["deadLetterTargetArn"].endswith(f":{QUEUE}-dlq")
    assert policy["VisibilityTimeout"] == str(settings.visibility_timeout)


def test_extra_orders_queues_get_the_same_redrive_policy(sqs_server, env, capsys):
    env.setenv("SQS_ENDPOINT_URL", sqs_server.endpoint_url)
    env.setenv("ORDERS_QUEUE", QUEUE)
    env.setenv("EXTRA_ORDERS_QUEUES", f"{QUEUE}-extra")
    assert init_queues.main(attempts=1) == 0
    assert "extra orders queue: " in capsys.readouterr().out
    extra = from_env()
    assert redrive_policy(extra) == redrive_policy(
        Settings(sqs_endpoint_url=sqs_server.endpoint_url, orders_queue=f"{QUEUE}-extra"))
    assert redrive_policy(extra)["deadLetterTargetArn"].endswith(f":{QUEUE}-dlq")


def test_rerun_applies_a_changed_max_receive_count(sqs_server, env, capsys):
    env.setenv("SQS_ENDPOINT_URL", sqs_server.endpoint_url)
    env.setenv("ORDERS_QUEUE", QUEUE)
    for count in (4, 7):
        env.setenv("MAX_RECEIVE_COUNT", str(count))
        init_queues.main(attempts=1)
        assert int(redrive_policy(from_env())["maxReceiveCount"]) == count


def test_main_retries_then_gives_up_while_the_endpoint_is_down(env, capsys):
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    env.setenv("SQS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit, match=r'^SQS at http://127.0.0.1:9: Could not connect'):
        init_queues.main(attempts=2, delay=0)
    assert "try 1/2" in capsys.readouterr().err


def test_main_does_not_retry_a_client_error(env, monkeypatch):
    calls = []

    def refuse(settings, sqs=None):
        calls.append(settings)
        raise ClientError({"Error": {"Code": "InvalidAttributeValue", "Message": "no"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "SetQueueAttributes")

    monkeypatch.setattr(sqs, "ensure_queues", refuse)
    with pytest.raises(SystemExit, match=r"^SQS at \S+: .*\(InvalidAttributeValue\)"):
        init_queues.main(attempts=5, delay=0)
    assert len(calls) == 1


def retention(settings: Settings, name: str) -> int:
    client = sqs.client(settings)
    attrs = client.get_queue_attributes(QueueUrl=sqs.queue_url(settings, name, client),
                                        AttributeNames=["MessageRetentionPeriod"])["Attributes"]
    return int(attrs["MessageRetentionPeriod"])


def test_dead_letters_keep_the_maximum_and_orders_the_configured_retention(sqs_server, env,
                                                                           capsys):
    env.setenv("SQS_ENDPOINT_URL", sqs_server.endpoint_url)
    env.setenv("ORDERS_QUEUE", QUEUE)
    env.setenv("EXTRA_ORDERS_QUEUES", f"{QUEUE}-extra")
    # A rerun updates queues that already exist, as after an upgrade.
    for days in (2, 6):
        env.setenv("ORDERS_RETENTION_SECONDS", str(days * 86400))
        assert init_queues.main(attempts=1) == 0
        settings = from_env()
        for name in settings.consumed_queue_urls:
            assert retention(settings, name) == days * 86400
        # SQS's maximum: a dead letter keeps the age it had in the orders queue.
        assert retention(settings, settings.dlq_name) == 14 * 86400


def test_default_orders_retention_is_four_days():
    assert Settings().orders_retention_seconds == 4 * 86400


@pytest.mark.parametrize("seconds", [59, 14 * 86400 + 1])
def test_orders_retention_outside_sqs_limits_is_refused(seconds):
    with pytest.raises(ValueError, match="ORDERS_RETENTION_SECONDS"):
        Settings(orders_retention_seconds=seconds)
