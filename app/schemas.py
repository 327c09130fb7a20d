"""marshmallow schemas: the single definition of an order event."""
from __future__ import annotations

import math
import unicodedata
from datetime import timezone
from decimal import Decimal

from marshmallow import EXCLUDE, Schema, fields, validate

MAX_ID_LENGTH = 128
MAX_AMOUNT = Decimal("1000000000")  # a billion per order or per unit: beyond is a bug upstream
MAX_QUANTITY = 1_000_000
NOT_TEXT = "Must be text: a lone surrogate (such as \\ud800) is not a character."


def has_lone_surrogate(text: str) -> bool:
    """Whether the text holds a lone surrogate, which JSON's \\ud800 escape can spell."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


class Text(fields.String):
    """A string of characters: a lone surrogate can be neither stored nor shown."""

    default_error_messages = {"not_text": NOT_TEXT}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if has_lone_surrogate(text):
            raise self.make_error("not_text")
        return text


class Identifier(Text):
    """A trimmed, non-blank id without control characters."""

    default_error_messages = {
        "blank": "Must not be blank.",
        "control": "Must not contain control characters.",
        "too_long": f"Must be at most {MAX_ID_LENGTH} characters.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if not text:
            raise self.make_error("blank")
        if len(text) > MAX_ID_LENGTH:
            raise self.make_error("too_long")
        # Category C* covers control, format and unassigned code points: ids with them
        # print as something they are not.
        if any(unicodedata.category(ch).startswith("C") for ch in text):
            raise self.make_error("control")
        return text


class Amount(fields.Field):
    """A finite JSON number >= 0 (not a string, not a boolean), as a Decimal."""

    default_error_messages = {
        "invalid": "Must be a number.",
        "not_finite": "Must be a finite number (not NaN or Infinity).",
        "negative": "Must be greater than or equal to 0.",
        "too_large": f"Must be at most {MAX_AMOUNT}.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.make_error("not_finite")
        # str() of a float is its shortest repr: 99.99 stays 99.99, not 99.9899999...
        amount = Decimal(str(value))
        if amount < 0:
            raise self.make_error("negative")
        if amount > MAX_AMOUNT:
            raise self.make_error("too_large")
        return amount


class Quantity(fields.Integer):
    """A whole JSON number from 1 to MAX_QUANTITY (not 2.5, not "2", not true)."""

    default_error_messages = {"invalid": "Must be a whole number."}

    def __init__(self, **kwargs):
        # strict: else marshmallow's Integer would load 2.5 as 2 and "2" as 2.
        super().__init__(strict=True, validate=validate.Range(
            1, MAX_QUANTITY, error="Must be between {min} and {max}."), **kwargs)


class Timestamp(fields.AwareDateTime):
    """marshmallow's ISO-8601 AwareDateTime, padding trimmed, converted to UTC."""

    default_error_messages = {
        "invalid": "Must be an ISO-8601 date-time string.",
        "invalid_awareness": "Must include a time zone (Z or an offset such as +02:00).",
        "range": "Must be a date-time that exists in UTC (years 1 to 9999).",
    }

    def __init__(self, **kwargs):
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        # Padding is trimmed as in ids: " 2024-12-13T10:00:00Z" is the same moment.
        value = value.strip() if isinstance(value, str) else value
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
            raise self.make_error("range") from None


class PlatformSchema(Schema):
    """What the shop platform sends: fields it adds later are ignored, not refused."""

    class Meta:
        unknown = EXCLUDE


class ItemSchema(PlatformSchema):
    """One line of an order."""

    product_id = Identifier(required=True)
    quantity = Quantity(required=True)
    price_per_unit = Amount(required=True)


class ItemList(fields.List):
    """A non-empty list of items, its length checked before any item is read.

    fields.List would validate every element first: 10,000 bad items would make 30,000
    reasons where one says what is wrong.
    """

    default_error_messages = {"too_many": "Must have at most {max} items."}

    def __init__(self, *, max_items: int = 1000, **kwargs):
        super().__init__(fields.Nested(ItemSchema), validate=validate.Length(min=1), **kwargs)
        self.max_items = max_items

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list) and len(value) > self.max_items:
            raise self.make_error("too_many", max=self.max_items)
        return super()._deserialize(value, attr, data, **kwargs)


class OrderSchema(PlatformSchema):
    """An order event as the shop platform sends it."""

    order_id = Identifier(required=True)
    user_id = Identifier(required=True)
    order_timestamp = Timestamp(required=True)
    order_value = Amount(required=True)
    items = ItemList(required=True)
    shipping_address = Text(load_default=None, allow_none=True)
    payment_method = Text(load_default=None, allow_none=True)

    def __init__(self, *, max_items: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.fields["items"].max_items = max_items


class LegacyOrderSchema(PlatformSchema):
    """The older minimal shape {"user_id": "123", "amount": 100}."""

    order_id = Identifier(load_default=None)
    user_id = Identifier(required=True)
    amount = Amount(required=True)
    order_timestamp = Timestamp(load_default=None)
