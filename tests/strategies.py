"""Hypothesis strategies for hostile messages, shared by the unit and the end-to-end tests.

Valid orders are built first and then changed one thing at a time (a field replaced or
removed), so a failure shrinks to a one-field example. Task messages are built by kombu and
Celery exactly as a Celery producer puts them on SQS, then one header, property, the body,
its encoding or its content type is changed.
"""
from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone

from celery import Celery
from hypothesis import strategies as st
from kombu import Connection
from kombu.serialization import dumps
from kombu.transport import SQS

from bench import order_builders as builders
from app.deadletters import ORIGINAL_ID_ATTRIBUTE

# --- values ---------------------------------------------------------------------------------

# Lone surrogates are what JSON's "\ud800" escape decodes to: not text, and not encodable.
lone_surrogates = st.characters(categories=["Cs"])
surrogate_text = st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), lone_surrogates,
                           st.text(max_size=3))
# Every code point, control and format characters included.
any_text = st.text(st.characters(exclude_categories=()), max_size=24) | surrogate_text
# Python's json refuses to write ints of more than 4,300 digits, so they stay below that.
numbers = (st.integers(min_value=-10 ** 40, max_value=10 ** 40) | st.floats()
           | st.sampled_from([2 ** 53 + 1, 2 ** 63, -2 ** 63, 10 ** 18, 1e308, 5e-324, -0.0]))
EXTREME_TIMESTAMPS = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                      "1900-01-01T00:00:00Z", "1999-12-31T23:59:59.999999Z",
                      "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2024-02-30T00:00:00Z"]
offsets = st.integers(-1439, 1439).map(lambda minutes: timezone(timedelta(minutes=minutes)))
timestamps = (st.datetimes(timezones=offsets).map(datetime.isoformat)
              | st.datetimes().map(datetime.isoformat) | st.sampled_from(EXTREME_TIMESTAMPS))
scalars = st.none() | st.booleans() | numbers | any_text | timestamps
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(any_text, inner, max_size=3), max_leaves=8)
hostile_values = scalars | json_values

# --- orders ---------------------------------------------------------------------------------

ids = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)


@st.composite
def valid_orders(draw, order_id: str | None = None) -> dict:
    """An order the pipeline counts: order_value is the exact item total."""
    lines = draw(st.lists(st.tuples(ids, st.integers(1, 5), st.integers(0, 100_000)),
                          min_size=1, max_size=4))
    placed = draw(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2024, 12, 31)))
    return builders.order(order_id or f"O-{uuid.uuid4().hex[:12]}", draw(ids), lines=lines,
                          order_timestamp=placed.replace(tzinfo=timezone.utc).isoformat())


# Where one change is made: top-level fields, the first item and its fields.
ORDER_PATHS = [("order_id",), ("user_id",), ("order_timestamp",), ("order_value",), ("items",),
               ("shipping_address",), ("payment_method",), ("items", 0),
               ("items", 0, "product_id"), ("items", 0, "quantity"),
               ("items", 0, "price_per_unit"), ("amount",), ("unknown",)]


@st.composite
def mutated_orders(draw) -> dict:
    """A valid order with one field replaced by any value, or removed."""
    order = draw(valid_orders())
    *parents, last = draw(st.sampled_from(ORDER_PATHS))
    target = order
    for key in parents:
        target = target[key]
    if draw(st.booleans()) and last in target:
        del target[last]
    else:
        target[last] = draw(hostile_values)
    return order


# --- Celery task messages, as a producer puts them on SQS -----------------------------------

_producer = Celery("producer")
# kombu's own SQS transport, as a producer runs it; naming it by class leaves the "sqs"
# alias (and kombu's cache of it) to the worker's transport.
_connection = Connection("sqs://test:test@127.0.0.1:1", transport=SQS.Transport,
                         transport_options={
                             "region": "us-east-1", "is_secure": False,
                             "predefined_queues": {"orders": {
                                 "url": "http://127.0.0.1:1/000000000000/orders",
                                 "access_key_id": "test", "secret_access_key": "test"}}})


def task_envelope(task: str, args=(), kwargs=None, task_id: str | None = None) -> dict:
    """The kombu message of app.send_task(task, args, kwargs): kombu's and Celery's own steps."""
    channel = _connection.default_channel  # builds messages offline: no request is made
    task_id = task_id or str(uuid.uuid4())
    headers, properties, payload, _ = _producer.amqp.as_task_v2(task_id, task, args=args,
                                                                kwargs=kwargs or {})
    content_type, encoding, data = dumps(payload, serializer="json")
    message = channel.prepare_message(data, None, content_type, encoding, headers,
                                      {**properties, "delivery_mode": 2})
    channel._inplace_augment_message(message, "", "orders")
    return message


def sqs_body(envelope: dict, wrapped: bool = True) -> str:
    """An envelope as an SQS body: base64 of its JSON as kombu sends it, or the JSON itself."""
    text = json.dumps(envelope)
    return base64.b64encode(text.encode()).decode() if wrapped else text


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()


def _unique(value):
    # Ids that reach the pipeline must not repeat across messages: a second rejection under
    # the same id is the same message again and is not counted twice.
    return f"{value}~{uuid.uuid4().hex[:8]}" if isinstance(value, str) else value


ORDER_TASKS = ["orders.process", "orders.process_batch"]
OTHER_TASKS = ["celery.accumulate", "celery.backend_cleanup", "celery.chord_unlock",
               "celery.group", "orders.unknown"]
# Two in three task messages are the orders tasks, which are run when they check out.
envelope_tasks = st.sampled_from(ORDER_TASKS) | st.sampled_from(ORDER_TASKS) \
    | st.sampled_from(OTHER_TASKS)
header_values = (hostile_values | st.sampled_from(
    [[], {}, "orders.process", "orders.process_batch", "2030-01-01T00:00:00+00:00",
     [0.001, 0.001], [None, None], -1, 10 ** 9]))
property_values = hostile_values | st.sampled_from(["base64", "utf-8", "rot13", "zlib", "", {}])
content_types = st.sampled_from(["application/json", "application/x-python-serialize",
                                 "application/x-yaml", "application/x-msgpack", "text/plain",
                                 None, ""]) | any_text
content_encodings = st.sampled_from(["utf-8", "binary", "latin-1", None, ""]) | any_text
bodies = st.one_of(
    st.just("abc"), any_text,
    json_values.map(lambda v: _b64(json.dumps(v))),
    st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode()),
    st.tuples(json_values, json_values, json_values).map(lambda t: _b64(json.dumps(t))),
)


@st.composite
def envelope_args(draw, task: str):
    """(args, kwargs) of a task message: orders for the orders tasks, anything for others."""
    if task == "orders.process":
        order = draw(valid_orders() | mutated_orders())
        if draw(st.booleans()):
            return [order], {"message_id": _unique("celery"), "sent_at_ms": None}
        return [order], {}
    if task == "orders.process_batch":
        # One entry per message, so each message still makes one outcome.
        body = draw(valid_orders() | mutated_orders())
        return [[{"body": json.dumps(body), "message_id": _unique("retried"),
                  "sent_at_ms": draw(st.none() | st.integers(0, 2 ** 41))}]], {}
    return draw(st.lists(json_values, max_size=3)), {}


@st.composite
def mutated_envelopes(draw) -> str:
    """A Celery task message as an SQS body, with one thing changed (or none)."""
    task = draw(envelope_tasks)
    args, kwargs = draw(envelope_args(task))
    envelope = task_envelope(task, args, kwargs, task_id=_unique("task"))
    part = draw(st.sampled_from(["nothing", "header", "property", "body", "content-type",
                                 "content-encoding", "envelope"]))
    if part == "header":
        key = draw(st.sampled_from([*envelope["headers"], "extra"]))
        if draw(st.booleans()):
            envelope["headers"].pop(key, None)
        else:
            value = draw(header_values)
            envelope["headers"][key] = _unique(value) if key == "id" else value
    elif part == "property":
        key = draw(st.sampled_from([*envelope["properties"], "extra"]))
        envelope["properties"][key] = draw(property_values)
    elif part == "body":
        envelope["body"] = draw(bodies)
    elif part == "content-type":
        envelope["content-type"] = draw(content_types)
    elif part == "content-encoding":
        envelope["content-encoding"] = draw(content_encodings)
    elif part == "envelope":
        key = draw(st.sampled_from(["headers", "properties", "body"]))
        envelope[key] = draw(hostile_values)
    return sqs_body(envelope, wrapped=draw(st.booleans()))


# The reported killer, verbatim.
POISON_ENVELOPE = json.dumps({"body": "abc", "headers": {}, "content-type": "application/json",
                              "properties": {"body_encoding": "base64"}})

# --- SQS messages ---------------------------------------------------------------------------


def sqs_allowed(text: str) -> bool:
    """Whether SQS accepts the text as a body or attribute value (XML 1.0 characters)."""
    return bool(text) and all(ch in "\t\n\r" or 0x20 <= ord(ch) <= 0xD7FF
                              or 0xE000 <= ord(ch) <= 0xFFFD or ord(ch) >= 0x10000
                              for ch in text)


raw_texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=64)
json_bodies = st.one_of(
    json_values.map(json.dumps),
    st.sampled_from([{}, [], None, 1, "x"]).map(json.dumps),
    valid_orders().map(lambda o: json.dumps(o, ensure_ascii=False)),
    mutated_orders().map(json.dumps),
    # The legacy shape {"user_id", "amount"}, with one of its fields replaced.
    st.builds(lambda u, a: json.dumps({"user_id": u, "amount": a}), ids | hostile_values,
              numbers | hostile_values),
)
message_bodies = st.one_of(
    json_bodies, mutated_envelopes(), mutated_envelopes(), raw_texts | st.just(POISON_ENVELOPE),
).filter(sqs_allowed)

attribute_texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1,
                          max_size=40).filter(sqs_allowed)
attribute_values = st.one_of(
    attribute_texts.map(lambda t: {"DataType": "String", "StringValue": t}),
    st.integers().map(lambda n: {"DataType": "Number", "StringValue": str(n)}),
    st.binary(min_size=1, max_size=16).map(lambda b: {"DataType": "Binary", "BinaryValue": b}),
)


@st.composite
def message_attributes(draw) -> dict:
    """SQS message attributes, the pipeline's original-id attribute among them."""
    attributes = draw(st.dictionaries(st.sampled_from(["trace-id", "Type", "a.b_c"]),
                                      attribute_values, max_size=2))
    if draw(st.booleans()):
        value = draw(attribute_values)
        if value["DataType"] == "Number":
            value = {**value, "StringValue": value["StringValue"] + str(uuid.uuid4().int)}
        elif "StringValue" in value:
            value = {**value, "StringValue": _unique(value["StringValue"])}
        attributes[ORIGINAL_ID_ATTRIBUTE] = value
    return attributes


hostile_messages = st.tuples(message_bodies, message_attributes())
