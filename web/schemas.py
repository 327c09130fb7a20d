"""marshmallow schemas of the API's responses (they also generate the OpenAPI document)."""
from marshmallow import Schema, fields, validate


class ErrorSchema(Schema):
    """Every error response."""

    error = fields.String(required=True, metadata={"description": "What went wrong"})
    status = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    errors = fields.Dict(metadata={"description": "Field -> messages, for invalid arguments"})


class UserStatsSchema(Schema):
    """A user's all-time totals."""

    user_id = fields.String(required=True)
    order_count = fields.Integer(required=True)
    total_spend = fields.Float(required=True, metadata={"description": "Rounded to cents"})


class GlobalStatsSchema(Schema):
    """The platform's all-time totals."""

    total_orders = fields.Integer(required=True)
    total_revenue = fields.Float(required=True, metadata={"description": "Rounded to cents"})


class HealthSchema(Schema):
    """State of the services the pipeline depends on."""

    status = fields.String(required=True, metadata={"description": "ok or unavailable"})
    redis = fields.String(required=True)
    sqs = fields.String(required=True)
    down = fields.List(fields.String(), required=True)


class PageArgsSchema(Schema):
    """Paging of a list."""

    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class RejectionSchema(Schema):
    """A message that was not counted, with its original body and the reasons."""

    message_id = fields.String(required=True)
    order_id = fields.String(required=True)
    kind = fields.String(required=True, metadata={"description": "invalid or conflict"})
    reasons = fields.Dict(required=True, metadata={"description": "Field -> messages"})
    body = fields.String(required=True, metadata={"description": "The body as received"})
    first_seen = fields.String(metadata={"description": "For a conflict: the counted version"})
    at = fields.Float(required=True, metadata={"description": "Unix time it was recorded"})
