"""Settings derived from the environment: queue URLs and the checks that refuse bad ones."""
from dataclasses import dataclass

import pytest

from app.settings import Settings, from_env


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
