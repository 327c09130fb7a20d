"""Any string, number or timestamp is a valid order or a rejection with a reason, never an error.

The known killers first (each used to raise and send its batch to the DLQ), then properties
of app.orders.evaluate over the shared hypothesis strategies (tests/strategies.py).
"""
import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

import strategies
from app.orders import Evaluated, Incoming, evaluate
from app.settings import Settings
from conftest import order

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)
SURROGATE = "A\ud800"


def stored_strings(evaluated: Evaluated):
    """Every string of a verdict that the Store writes to Redis."""
    yield evaluated.incoming.message_id
    yield evaluated.body
    if evaluated.order:
        order = evaluated.order
        yield from (order.order_id, order.user_id, order.fingerprint, order.payment_method or "")
        yield from (line.product_id for line in order.lines)
    else:
        rejection = evaluated.rejection
        yield from (rejection.message_id, rejection.order_id or "",
                    json.dumps(rejection.reasons, ensure_ascii=False))


def assert_storable(evaluated: Evaluated):
    """Exactly one of order and rejection, and every stored string encodes to UTF-8."""
    assert (evaluated.order is None) != (evaluated.rejection is None), evaluated
    for text in stored_strings(evaluated):
        text.encode("utf-8")  # strict: a lone surrogate raises here, as in redis-py


@pytest.mark.parametrize("path", [("order_id",), ("user_id",), ("payment_method",),
                                  ("shipping_address",), ("items", 0, "product_id")])
def test_a_lone_surrogate_in_any_field_is_rejected_and_storable(path):
    body = order()
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = SURROGATE
    raw = json.dumps(body)  # the JSON escape \ud800, as a sender writes it
    for incoming in (Incoming(raw, "m-raw"), Incoming(body, "m-native")):
        result = evaluate(incoming, Settings(), now=NOW)
        assert result.rejection is not None, (path, incoming)
        assert path[0] in result.rejection.reasons, result.rejection.reasons
        assert_storable(result)
    # The stored raw body is the body as it arrived.
    assert evaluate(Incoming(raw, "m"), Settings(), now=NOW).body == raw


def test_a_lone_surrogate_in_an_ignored_field_still_counts_the_order():
    body = order(note=SURROGATE)
    for incoming in (Incoming(json.dumps(body), "m-raw"), Incoming(body, "m-native")):
        result = evaluate(incoming, Settings(), now=NOW)
        assert result.order is not None
        assert_storable(result)
        assert json.loads(result.body)["note"] == SURROGATE


def test_surrogates_in_the_message_id_and_a_text_body_are_storable():
    result = evaluate(Incoming(f'{{"order_id": "{SURROGATE}"}}', f"m-{SURROGATE}"), Settings(),
                      now=NOW)
    assert result.rejection is not None
    assert_storable(result)


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                   "1900-01-01T00:00:00Z", "1999-12-31T23:59:59Z"])
def test_timestamps_out_of_range_are_rejected_with_a_reason(stamp):
    for body in (order(order_timestamp=stamp),
                 {"user_id": "U1", "amount": 5, "order_timestamp": stamp}):
        result = evaluate(Incoming(json.dumps(body), "m"), Settings(), now=NOW)
        assert result.rejection is not None, stamp
        assert "order_timestamp" in result.rejection.reasons, result.rejection.reasons


def test_the_lower_bound_of_order_timestamp_is_a_setting():
    body = json.dumps(order(order_timestamp="1995-06-01T00:00:00Z"))
    assert evaluate(Incoming(body, "m"), Settings(), now=NOW).rejection is not None
    relaxed = Settings(min_order_timestamp="1990-01-01T00:00:00+00:00")
    assert evaluate(Incoming(body, "m"), relaxed, now=NOW).order is not None
    rejection = evaluate(Incoming(body, "m"), Settings(), now=NOW).rejection
    assert "2000-01-01" in rejection.reasons["order_timestamp"][0]


@pytest.mark.parametrize("bound", ["yesterday", "2000-01-01T00:00:00", ""])
def test_an_unusable_lower_bound_is_refused_at_startup(bound):
    with pytest.raises(ValueError, match="MIN_ORDER_TIMESTAMP"):
        Settings(min_order_timestamp=bound)


def test_a_task_message_refused_by_the_transport_is_rejected_with_that_reason():
    result = evaluate(Incoming("not an order", "m", refused_task="task 'celery.x' is not run"),
                      Settings(), now=NOW)
    assert any("celery.x" in reason for reason in result.rejection.reasons["_schema"])
    # A refused envelope that is a valid order at its top level is still an order.
    assert evaluate(Incoming(json.dumps(order()), "m", refused_task="headers"), Settings(),
                    now=NOW).order is not None


PROPERTY_SETTINGS = hypothesis_settings(max_examples=300, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(body=strategies.message_bodies | strategies.any_text)
def test_any_text_body_is_an_order_or_a_storable_rejection(body):
    assert_storable(evaluate(Incoming(body, "m-1"), Settings(), now=NOW))


@PROPERTY_SETTINGS
@given(body=strategies.mutated_orders() | strategies.json_values,
       message_id=strategies.any_text.filter(bool))
def test_any_decoded_body_is_an_order_or_a_storable_rejection(body, message_id):
    # Celery producers' orders arrive already decoded, with any id as the task id.
    assert_storable(evaluate(Incoming(body, message_id), Settings(), now=NOW))


@PROPERTY_SETTINGS
@given(path=st.sampled_from(strategies.ORDER_PATHS), value=strategies.hostile_values)
def test_one_changed_field_is_named_in_the_reasons_or_the_order_counts(path, value):
    body = order()
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    result = evaluate(Incoming(json.dumps(body), "m-1"), Settings(), now=NOW)
    assert_storable(result)
    if result.rejection:
        assert path[0] in result.rejection.reasons or "order_value" in result.rejection.reasons, \
            result.rejection.reasons
