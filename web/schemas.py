"""marshmallow schemas of the API's arguments and responses (they also generate the OpenAPI
document). Responses dump the domain's dataclasses; limits and formats come from the domain."""
from datetime import date

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from app import analytics
from app.money import from_cents


class ErrorSchema(Schema):
    """Every error response."""

    error = fields.String(required=True, metadata={"description": "What went wrong"})
    status = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    errors = fields.Dict(metadata={"description": "Field -> messages, for invalid arguments"})


class Cents(fields.Float):
    """An amount held in integer cents, shown as a JSON number rounded to cents (759.9)."""

    def __init__(self, attribute: str, **kwargs):
        metadata = {"description": "Rounded to cents", **kwargs.pop("metadata", {})}
        kwargs.setdefault("required", True)
        super().__init__(attribute=attribute, metadata=metadata, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else from_cents(value)


class UserStatsSchema(Schema):
    """A user's all-time totals."""

    user_id = fields.String(required=True)
    order_count = fields.Integer(required=True)
    total_spend = Cents("total_spend_cents")


class GlobalStatsSchema(Schema):
    """The platform's all-time totals."""

    total_orders = fields.Integer(required=True)
    total_revenue = Cents("total_revenue_cents")


class HealthSchema(Schema):
    """State of the services the pipeline depends on."""

    status = fields.String(required=True, metadata={"description": "ok or unavailable"})
    redis = fields.String(required=True)
    sqs = fields.String(required=True)
    down = fields.List(fields.String(), required=True)


# Analytics: request arguments (query strings) and responses.

class Month(fields.String):
    """A month as YYYY-MM, loaded as the date of its first day."""

    default_error_messages = {"invalid_month": "Not a valid month: expected YYYY-MM."}

    def __init__(self, **kwargs):
        metadata = {"pattern": analytics.MONTH_FORMAT.pattern, "example": "2024-12",
                    **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return analytics.parse_month(text)
        except ValueError:
            raise self.make_error("invalid_month") from None

    def _serialize(self, value, attr, obj, **kwargs):
        if isinstance(value, date):
            value = analytics.month_text(value)
        return super()._serialize(value, attr, obj, **kwargs)


# The API's names of a range's ends.
RANGE_ARGUMENTS = {"first": "from", "last": "to"}


def _checked_range(kind, first: date, last: date):
    """A Period or MonthRange; the domain's refusal names the argument at fault."""
    try:
        return kind(first, last)
    except analytics.RangeError as exc:
        raise ValidationError(str(exc), RANGE_ARGUMENTS[exc.end]) from None


def _day_range(data: dict, required: bool) -> analytics.Period | None:
    """The from/to days of loaded arguments as a Period; errors name the argument."""
    first, last = data.pop("first", None), data.pop("last", None)
    if first is None and last is None and not required:
        return None
    if first is None or last is None:
        missing, given = ("from", "to") if first is None else ("to", "from")
        raise ValidationError(f"Required with {given}.", missing)
    return _checked_range(analytics.Period, first, last)


def _from_day(required: bool = False):
    return fields.Date(data_key="from", attribute="first", required=required,
                       metadata={"description": "First UTC day (YYYY-MM-DD), included"})


def _to_day(required: bool = False):
    return fields.Date(data_key="to", attribute="last", required=required,
                       metadata={"description": "Last UTC day (YYYY-MM-DD), included; "
                                 f"from..to holds at most {analytics.MAX_DAYS} days"})


class TopArgsSchema(Schema):
    """How many places a ranking has."""

    n = fields.Integer(load_default=10, validate=validate.Range(min=1, max=analytics.MAX_TOP),
                       metadata={"description": "How many places"})


class TopUsersArgsSchema(TopArgsSchema):
    """A ranking of users: all-time, or over one day, one month or a range of days."""

    by = fields.String(load_default="spend", validate=validate.OneOf(analytics.USER_MEASURES),
                       metadata={"description": "Rank by spend or by number of orders"})
    day = fields.Date(metadata={"description": "Only this UTC day (YYYY-MM-DD)"})
    month = Month(metadata={"description": "Only this UTC month (YYYY-MM)"})
    first = _from_day()
    last = _to_day()

    @validates_schema
    def one_period(self, data, **kwargs):
        """At most one of day, month and from/to."""
        given = [name for name, present in (("day", "day" in data), ("month", "month" in data),
                 ("from", "first" in data or "last" in data)) if present]
        if len(given) > 1:
            raise ValidationError({name: ["Give only one of day, month or from/to."]
                                   for name in given})

    @post_load
    def to_period(self, data, **kwargs):
        """Replace day, month or from/to by a period (None for all-time)."""
        if "day" in data:
            period = analytics.Period.of_day(data.pop("day"))
        elif "month" in data:
            period = analytics.Period.of_month(data.pop("month"))
        else:
            period = _day_range(data, required=False)
        return {**data, "period": period}


class TopProductsArgsSchema(TopArgsSchema):
    """A ranking of products: all-time, or over one day."""

    by = fields.String(load_default="revenue",
                       validate=validate.OneOf(analytics.PRODUCT_MEASURES),
                       metadata={"description": "Rank by revenue or by units sold"})
    day = fields.Date(metadata={"description": "Only this UTC day (YYYY-MM-DD)"})


class DayRangeArgsSchema(Schema):
    """A range of UTC days, both ends included."""

    first = _from_day(required=True)
    last = _to_day(required=True)

    @post_load
    def to_period(self, data, **kwargs):
        """from/to as a period: from <= to, at most a year apart."""
        return {"period": _day_range(data, required=True)}


class OptionalDayRangeArgsSchema(Schema):
    """A range of UTC days, both ends included, or nothing for all-time figures."""

    first = _from_day()
    last = _to_day()

    @post_load
    def to_period(self, data, **kwargs):
        """from/to as a period (both or neither; from <= to, at most a year apart)."""
        return {"period": _day_range(data, required=False)}


class MonthRangeArgsSchema(Schema):
    """A range of UTC months, both ends included."""

    first = Month(data_key="from", attribute="first", required=True,
                  metadata={"description": "First month (YYYY-MM), included"})
    last = Month(data_key="to", attribute="last", required=True,
                 metadata={"description": "Last month (YYYY-MM), included; from..to holds "
                           f"at most {analytics.MAX_MONTHS} months"})

    @post_load
    def to_months(self, data, **kwargs):
        """from/to as a range of months: from <= to, at most a year of months."""
        return {"months": _checked_range(analytics.MonthRange, data["first"], data["last"])}


class PeriodSchema(Schema):
    """A range of UTC days, both ends included."""

    first = fields.Date(data_key="from", required=True)
    last = fields.Date(data_key="to", required=True)


class TopUserSchema(Schema):
    """One place of a ranking of users."""

    rank = fields.Integer(required=True, metadata={"description": "1 for the first place"})
    user_id = fields.String(required=True)
    total_spend = Cents("spend_cents", metadata={"description": "Over the period"})
    order_count = fields.Integer(required=True, metadata={"description": "Over the period"})
    avg_order_value = Cents("avg_order_cents")


class TopUsersSchema(Schema):
    """A ranking of users; equal figures are ordered by user id."""

    by = fields.String(required=True)
    n = fields.Integer(required=True)
    period = fields.Nested(PeriodSchema, required=True, allow_none=True,
                           metadata={"description": "The days ranked; null for all-time"})
    users = fields.List(fields.Nested(TopUserSchema), required=True)


class TopProductSchema(Schema):
    """One place of a ranking of products."""

    rank = fields.Integer(required=True, metadata={"description": "1 for the first place"})
    product_id = fields.String(required=True)
    revenue = Cents("revenue_cents")
    units_sold = fields.Integer(required=True)


class TopProductsSchema(Schema):
    """A ranking of products; equal figures are ordered by product id."""

    by = fields.String(required=True)
    n = fields.Integer(required=True)
    day = fields.Date(metadata={"description": "The UTC day ranked; absent for all-time"})
    products = fields.List(fields.Nested(TopProductSchema), required=True)


class KpisSchema(Schema):
    """The platform's figures of one day or month."""

    total_orders = fields.Integer(required=True)
    total_revenue = Cents("total_revenue_cents")
    total_items_sold = fields.Integer(required=True, metadata={"description": "Sum of quantities"})
    unique_customers = fields.Integer(required=True,
                                      metadata={"description": "Distinct users, exact"})
    avg_order_value = Cents("avg_order_cents", metadata={
        "description": "Revenue / orders rounded to cents; 0 without orders"})


class DayKpisSchema(KpisSchema):
    """The platform's figures of one UTC day."""

    # The bucket is already the day as YYYY-MM-DD.
    date = fields.String(attribute="bucket", required=True, metadata={"format": "date"})


class MonthKpisSchema(KpisSchema):
    """The platform's figures of one UTC month."""

    month = Month(attribute="bucket", required=True)


class DailySchema(Schema):
    """Each day of a range, days without orders as zeros."""

    first = fields.Date(data_key="from", required=True)
    last = fields.Date(data_key="to", required=True)
    days = fields.List(fields.Nested(DayKpisSchema), required=True)


class MonthlySchema(Schema):
    """Each month of a range, months without orders as zeros."""

    first = Month(data_key="from", required=True)
    last = Month(data_key="to", required=True)
    months = fields.List(fields.Nested(MonthKpisSchema), required=True)


class UserDaySchema(Schema):
    """One user's orders and spend on one UTC day."""

    date = fields.Date(attribute="day", required=True)
    order_count = fields.Integer(required=True)
    total_spend = Cents("spend_cents")


class UserStatsRangeSchema(UserStatsSchema):
    """A user's all-time totals; with from/to, the totals of those days and each day."""

    first = fields.Date(data_key="from", attribute="period.first",
                        metadata={"description": "With from/to only"})
    last = fields.Date(data_key="to", attribute="period.last",
                       metadata={"description": "With from/to only"})
    avg_order_value = Cents("avg_order_cents", required=False,
                            metadata={"description": "With from/to only; rounded to cents"})
    days = fields.List(fields.Nested(UserDaySchema),
                       metadata={"description": "With from/to only: every day, zeros included"})


class UserSummarySchema(UserStatsSchema):
    """A user's all-time totals, average order value and first and last order times."""

    avg_order_value = Cents("avg_order_cents")
    first_order_at = fields.DateTime(required=True, allow_none=True,
                                     metadata={"description": "UTC, from the order's timestamp"})
    last_order_at = fields.DateTime(required=True, allow_none=True,
                                    metadata={"description": "UTC, from the order's timestamp"})


class ProductStatsSchema(Schema):
    """A product's all-time sales."""

    product_id = fields.String(required=True)
    units_sold = fields.Integer(required=True)
    revenue = Cents("revenue_cents")
    orders = fields.Integer(required=True, metadata={"description": "Orders with this product"})
