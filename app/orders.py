"""From a raw message body to a validated order or a rejection with reasons."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import cached_property, lru_cache

from marshmallow import ValidationError

from app.money import format_cents, to_cents
from app.schemas import MAX_AMOUNT, LegacyOrderSchema, OrderSchema
from app.settings import Settings

# marshmallow's key for errors that belong to no single field.
BODY_ERRORS = "_schema"
# Shop totals are rounded per line and summed: allow one cent either way.
TOLERANCE_CENTS = 1
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# The largest order counted (the largest order_value the schema takes): an item total
# above it (ORDER_VALUE_MISMATCH=correct) is rejected here, before Redis.
MAX_ORDER_CENTS = to_cents(MAX_AMOUNT)


@dataclass(frozen=True)
class Incoming:
    """A message as it arrived: its body and where it came from."""

    body: str | dict
    message_id: str
    sent_at: datetime | None = None
    # Why the transport did not run the body as a task message (it looked like one).
    refused_task: str | None = None


@dataclass(frozen=True)
class Line:
    """A validated order line, money in cents."""

    product_id: str
    quantity: int
    line_cents: int


@dataclass(frozen=True)
class Order:
    """A validated order ready to be counted."""

    order_id: str
    user_id: str
    placed_at: datetime
    value_cents: int
    lines: tuple[Line, ...] = ()
    payment_method: str | None = None
    # The order_value sent, in cents, when the policy replaced it by the item total.
    corrected_from_cents: int | None = None
    # Whether placed_at came from the body; a fallback time is no part of the order's identity.
    timestamp_given: bool = True

    @cached_property
    def fingerprint(self) -> str:
        """The content that makes two deliveries the same order (compact JSON)."""
        # Cached: the claim and every part's applied mark use it.
        placed = self.placed_at.isoformat() if self.timestamp_given else None
        return json.dumps([self.user_id, placed, self.value_cents,
                           [[li.product_id, li.quantity, li.line_cents] for li in self.lines]],
                          separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Rejection:
    """Why a message cannot be counted: marshmallow-shaped reasons (its body: Evaluated.body)."""

    message_id: str
    reasons: dict
    order_id: str | None = None
    kind: str = "invalid"


@dataclass(frozen=True)
class Evaluated:
    """The verdict on one incoming message: an order or a rejection."""

    incoming: Incoming
    order: Order | None = None
    rejection: Rejection | None = None
    # The body as text that encodes to UTF-8: what a rejection or a conflict records.
    body: str = field(default="", repr=False)


def evaluate(incoming: Incoming, settings: Settings, now: datetime | None = None) -> Evaluated:
    """Validate one message body under the settings' limits and mismatch policy."""
    now = now or datetime.now(timezone.utc)
    if LONE_SURROGATE.search(incoming.message_id):
        incoming = replace(incoming, message_id=storable(incoming.message_id))
    raw = _as_text(incoming.body)

    def reject(reasons, order_id=None):
        if incoming.refused_task:
            reasons = {**reasons, BODY_ERRORS: [*reasons.get(BODY_ERRORS, ()),
                                                f"Not run as a task: {incoming.refused_task}"]}
        rejection = Rejection(incoming.message_id, _storable_reasons(reasons),
                              storable(order_id) if order_id is not None else None)
        return Evaluated(incoming, rejection=rejection, body=raw)

    if len(raw.encode("utf-8", "surrogatepass")) > settings.max_order_bytes:
        return reject({BODY_ERRORS: [f"Body is larger than {settings.max_order_bytes} bytes."]})
    data, problem = _parse(incoming.body, raw)
    if problem:
        return reject({BODY_ERRORS: [problem]})
    order_id = data.get("order_id") if isinstance(data.get("order_id"), str) else None
    try:
        order = _load(data, incoming, settings, now)
    except ValidationError as exc:
        return reject(exc.messages, order_id)
    if order.placed_at > now + timedelta(seconds=settings.max_future_seconds):
        return reject({"order_timestamp": [
            f"Must not be more than {settings.max_future_seconds} seconds in the future."]},
            order_id)
    if order.timestamp_given and order.placed_at < settings.earliest_order_at:
        return reject({"order_timestamp": [
            f"Must not be earlier than {settings.min_order_timestamp}."]}, order_id)
    order, mismatch = _reconcile(order, settings)
    if mismatch:
        return reject({"order_value": [mismatch]}, order_id)
    too_large = _above_largest_order(order)
    if too_large:
        return reject({"order_value": [too_large]}, order_id)
    return Evaluated(incoming, order=order, body=raw)


def storable(text: str) -> str:
    """The text with each lone surrogate written as its JSON escape, so it encodes to UTF-8.

    JSON's "\\ud800" decodes to a lone surrogate, which no store can encode; inside a JSON
    string its escape means the same, so a body keeps its meaning and stays requeueable.
    """
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _storable_reasons(reasons):
    if isinstance(reasons, dict):
        return {k if not isinstance(k, str) else storable(k): _storable_reasons(v)
                for k, v in reasons.items()}
    if isinstance(reasons, (list, tuple)):
        return [_storable_reasons(r) for r in reasons]
    return storable(reasons) if isinstance(reasons, str) else reasons


def _above_largest_order(order: Order) -> str | None:
    """Why the order is larger than the largest order counted, or None."""
    if order.value_cents <= MAX_ORDER_CENTS:
        return None
    return (f"The order's value {format_cents(order.value_cents)} is more than "
            f"{format_cents(MAX_ORDER_CENTS)}, the largest order counted.")


def _as_text(body) -> str:
    """The body as text that encodes to UTF-8: what is stored with a rejection or conflict."""
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    if isinstance(body, str):
        return storable(body)
    # Celery-native producers send the order already decoded.
    try:
        return storable(json.dumps(body, ensure_ascii=False))
    except (TypeError, ValueError, RecursionError):
        return storable(repr(body))


def _parse(body, raw: str):
    """Decode JSON into a dict; return (data, None) or (None, reason)."""
    if isinstance(body, dict):
        return body, None
    if not raw.strip():
        return None, "Body is empty."
    try:
        data = json.loads(raw)
    except RecursionError:
        return None, "Body is not valid JSON: nested too deeply."
    except ValueError as exc:
        return None, f"Body is not valid JSON: {exc}."
    if not isinstance(data, dict):
        return None, f"Body must be a JSON object, not {_json_type(data)}."
    return data, None


def _json_type(value) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _load(data: dict, incoming: Incoming, settings: Settings, now: datetime) -> Order:
    if "items" not in data and "order_value" not in data and "amount" in data:
        legacy = _legacy_schema().load(data)
        placed_at = legacy["order_timestamp"] or incoming.sent_at or now
        return Order(order_id=legacy["order_id"] or incoming.message_id,
                     user_id=legacy["user_id"], placed_at=placed_at,
                     value_cents=to_cents(legacy["amount"]),
                     timestamp_given=legacy["order_timestamp"] is not None)
    loaded = _order_schema(settings.max_items).load(data)
    lines = tuple(Line(item["product_id"], item["quantity"],
                       to_cents(item["quantity"] * item["price_per_unit"]))
                  for item in loaded["items"])
    return Order(order_id=loaded["order_id"], user_id=loaded["user_id"],
                 placed_at=loaded["order_timestamp"],
                 value_cents=to_cents(loaded["order_value"]), lines=lines,
                 payment_method=loaded["payment_method"])


@lru_cache(maxsize=8)
def _order_schema(max_items: int) -> OrderSchema:
    # Building a schema costs more than loading an order; loading does not mutate it.
    return OrderSchema(max_items=max_items)


@lru_cache(maxsize=1)
def _legacy_schema() -> LegacyOrderSchema:
    return LegacyOrderSchema()


def _reconcile(order: Order, settings: Settings):
    """Check order_value against the item total; return (order, mismatch reason or None)."""
    if not order.lines:
        return order, None
    items_cents = sum(line.line_cents for line in order.lines)
    if abs(order.value_cents - items_cents) <= TOLERANCE_CENTS:
        return order, None
    if settings.order_value_mismatch == "correct":
        return replace(order, value_cents=items_cents,
                       corrected_from_cents=order.value_cents), None
    return order, (f"{format_cents(order.value_cents)} does not match the item total "
                   f"{format_cents(items_cents)}.")
