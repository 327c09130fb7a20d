"""Validation, cleaning and the verdict on one order body."""
import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from app.orders import Incoming, evaluate
from app.settings import Settings
from conftest import order

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)
# The README's example: 2 x 20.00 + 59.99 = 99.99.
EXAMPLE = {"order_id": "ORD1234", "user_id": "U5678",
           "lines": [("P001", 2, 2000), ("P002", 1, 5999)]}


def example(**changes) -> dict:
    """The documented example order with some fields changed."""
    return order(**{**EXAMPLE, **changes})


def verdict(body, settings=None, message_id="m-1"):
    raw = body if isinstance(body, str) else json.dumps(body)
    return evaluate(Incoming(raw, message_id), settings or Settings(), now=NOW)


def test_the_documented_example_is_accepted_in_cents():
    result = verdict(example())
    assert result.rejection is None
    assert result.order.value_cents == 9999
    assert [(li.product_id, li.quantity, li.line_cents) for li in result.order.lines] == [
        ("P001", 2, 4000), ("P002", 1, 5999)]


def test_ids_are_trimmed_and_extra_fields_ignored():
    result = verdict(example(order_id="  ORD9 ", user_id="\tU1 ", coupon="X"))
    assert (result.order.order_id, result.order.user_id) == ("ORD9", "U1")


def test_extra_fields_of_an_item_and_of_the_legacy_shape_are_ignored():
    body = example()
    body["items"][0]["gift_wrap"] = True
    assert verdict(body).rejection is None
    legacy = verdict({"user_id": "123", "amount": 100, "coupon": "X"})
    assert legacy.rejection is None and legacy.order.value_cents == 100 * 100


def test_offsets_and_microseconds_are_stored_in_utc():
    result = verdict(example(order_timestamp="2024-12-13T23:30:00.123456+05:30"))
    assert result.order.placed_at == datetime(2024, 12, 13, 18, 0, 0, 123456, timezone.utc)


@pytest.mark.parametrize("field, value, message", [
    ("order_value", "two hundred", "Must be a number."),
    ("order_value", True, "Must be a number."),
    ("order_value", None, "Field may not be null."),
    ("order_value", -1, "Must be greater than or equal to 0."),
    ("order_timestamp", "yesterday", "Must be an ISO-8601 date-time string."),
    ("order_timestamp", "2024-12-13T10:00:00", "Must include a time zone"),
    ("order_timestamp", 1734084000, "Must be an ISO-8601 date-time string."),
    ("user_id", "   ", "Must not be blank."),
    ("user_id", 5678, "Not a valid string."),
    ("order_id", "ORD\x00 1", "Must not contain control characters."),
    ("items", [], "Shorter than minimum length 1."),
])
def test_invalid_fields_are_rejected_with_field_messages(field, value, message):
    result = verdict(example(**{field: value}))
    assert result.order is None
    assert any(message in text for text in result.rejection.reasons[field])


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_rejected(raw):
    body = json.dumps(example()).replace("99.99", raw)
    result = verdict(body)
    assert "finite" in result.rejection.reasons["order_value"][0]


@pytest.mark.parametrize("quantity, message", [
    (0, "between 1"), (-2, "between 1"), (1.5, "whole number"), ("2", "whole number"),
    (True, "whole number")])
def test_bad_quantities_are_rejected(quantity, message):
    body = example(items=[{"product_id": "P1", "quantity": quantity, "price_per_unit": 1}],
                 order_value=1)
    reasons = verdict(body).rejection.reasons
    assert message in reasons["items"][0]["quantity"][0]


@pytest.mark.parametrize("raw, message", [
    ("", "empty"), ("not json", "not valid JSON"), ("[1, 2]", "not an array"),
    ('"text"', "not a string"), ("null", "not null"), ("[" * 20000 + "]" * 20000, "nested too deeply"),
])
def test_bodies_that_are_not_objects_are_rejected(raw, message):
    result = verdict(raw)
    assert message in result.rejection.reasons["_schema"][0]
    assert result.body == raw


def test_a_body_over_the_size_limit_is_rejected_before_parsing():
    result = verdict("x" * 2000, Settings(max_order_bytes=1000))
    assert "larger than 1000 bytes" in result.rejection.reasons["_schema"][0]


def test_too_many_items_are_rejected():
    items = [{"product_id": "P1", "quantity": 1, "price_per_unit": 1}] * 11
    result = verdict(example(items=items, order_value=11), Settings(max_items=10))
    assert result.rejection.reasons["items"] == ["Must have at most 10 items."]


def test_a_timestamp_far_in_the_future_is_rejected():
    later = (NOW + timedelta(days=2)).isoformat()
    result = verdict(example(order_timestamp=later), Settings(max_future_seconds=86400))
    assert "future" in result.rejection.reasons["order_timestamp"][0]


def test_value_within_a_cent_of_the_item_total_is_accepted_as_sent():
    assert verdict(example(order_value=100.00)).order.value_cents == 10000
    assert verdict(example(order_value=99.98)).order.value_cents == 9998


def test_value_two_cents_off_is_rejected_by_default():
    result = verdict(example(order_value=100.01))
    assert result.rejection.reasons == {
        "order_value": ["100.01 does not match the item total 99.99."]}
    assert result.rejection.order_id == "ORD1234"


def test_correct_policy_counts_the_item_total_and_keeps_what_was_sent():
    result = verdict(example(order_value=250), Settings(order_value_mismatch="correct"))
    assert result.order.value_cents == 9999
    assert result.order.corrected_from_cents == 25000


def test_legacy_shape_uses_the_message_id_and_amount():
    result = verdict({"user_id": "123", "amount": 100}, message_id="sqs-msg-1")
    assert (result.order.order_id, result.order.user_id, result.order.value_cents) == (
        "sqs-msg-1", "123", 10000)
    assert result.order.lines == ()


def test_legacy_fingerprint_ignores_the_fallback_time():
    first = evaluate(Incoming('{"user_id": "1", "amount": 5}', "m"), Settings())
    again = evaluate(Incoming('{"user_id": "1", "amount": 5}', "m"), Settings())
    assert first.order.fingerprint == again.order.fingerprint


def test_fingerprint_changes_with_content():
    assert verdict(example()).order.fingerprint != verdict(example(user_id="U9")).order.fingerprint


def test_a_celery_native_dict_is_accepted_and_recorded_as_json():
    result = evaluate(Incoming(example(), "task-1"), Settings(), now=NOW)
    assert result.order.order_id == "ORD1234"
    assert json.loads(result.body)["order_id"] == "ORD1234"


def test_float_artifacts_round_to_cents():
    body = example(order_value=0.1 + 0.2,
                 items=[{"product_id": "P", "quantity": 3, "price_per_unit": 0.1}])
    assert math.isclose(0.1 + 0.2, 0.30000000000000004)
    assert verdict(body).order.value_cents == 30
