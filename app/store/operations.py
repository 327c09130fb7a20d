"""What the apply scripts are sent: an order's claim and parts, and rejection records."""
from __future__ import annotations

import hashlib
import json

from app.orders import Order
from app.store.keys import (applied_mark, corrections_key, day_customers_key, day_key,
                            global_key, month_key, order_key, outcomes_key, product_key,
                            rejected_key, rejected_order_key, shard_applied_key, shard_of,
                            top_products_key, top_users_key, user_applied_key, user_days_key,
                            user_key)

# The largest total kept (cents, units or orders, per user, product, day, month or shard):
# sorted-set scores and Lua numbers are doubles, exact up to 2^53. An order that would
# take any stored figure past it is rejected whole, with the figure named in its reasons.
MAX_TOTAL = 2**53 - 1
# What a rejection record keeps of a body larger than MAX_ORDER_BYTES.
KEPT_BODY_BYTES = 4096
# The reasons of a conflict: another order was counted under this id.
CONFLICT_REASONS = {"order_id": ["Already counted with different content."]}


def order_ops(order: Order, shards: int) -> dict:
    """The claim and the parts (user, shard, one per product shard) of one order.

    The part ops name the keys includes/aggregates.lua gives a type and figures to.
    """
    order_id, user_id = order.order_id, order.user_id
    day = order.placed_at.date().isoformat()
    month, shard = day[:7], shard_of(user_id, shards)
    cents = str(order.value_cents)
    claim = {"kind": "claim", "order_id": order_id, "fp": order.fingerprint,
             "keys": {"order": order_key(order_id)}}
    mark = applied_mark(order_id, order.fingerprint)
    user = {"kind": "user", "order_id": order_id, "mark": mark, "cents": cents, "day": day,
            "ts": int(order.placed_at.timestamp() * 1000),
            "keys": {"user": user_key(user_id), "days": user_days_key(user_id),
                     "applied": user_applied_key(user_id)}}
    totals = {"kind": "shard", "order_id": order_id, "mark": mark, "user_id": user_id,
              "cents": cents, "units": str(sum(line.quantity for line in order.lines)),
              "correction": _correction(order),
              "keys": {"global": global_key(shard), "day": day_key(day, shard),
                       "customers": day_customers_key(day, shard),
                       "month": month_key(month, shard),
                       "spend": top_users_key("spend", shard=shard),
                       "orders": top_users_key("orders", shard=shard),
                       "day_spend": top_users_key("spend", day=day, shard=shard),
                       "day_orders": top_users_key("orders", day=day, shard=shard),
                       "month_spend": top_users_key("spend", month=month, shard=shard),
                       "month_orders": top_users_key("orders", month=month, shard=shard),
                       "outcomes": outcomes_key(shard),
                       "corrections": corrections_key(shard),
                       "applied": shard_applied_key(shard, "users")}}
    by_shard: dict[int, list[dict]] = {}
    for product_id, units, line_cents in _products(order):
        j = shard_of(product_id, shards)
        by_shard.setdefault(j, []).append({"id": product_id, "units": str(units),
                                           "cents": str(line_cents),
                                           "keys": {"product": product_key(product_id, j)}})
    products = [{"kind": "products", "order_id": order_id, "mark": mark, "products": entries,
                 "keys": {"applied": shard_applied_key(j, "products"),
                          "revenue": top_products_key("revenue", j),
                          "units": top_products_key("units", j),
                          "day_revenue": top_products_key("revenue", j, day=day),
                          "day_units": top_products_key("units", j, day=day)}}
                for j, entries in sorted(by_shard.items())]
    return {"claim": claim, "parts": [user, totals, *products]}


def rejection_record(message_id: str, kind: str, body: str, order_id: str | None,
                     reasons: dict, max_body_bytes: int, first_seen: str = "") -> dict:
    """The record of a rejected message, as includes/book.lua writes it.

    kind: invalid, or conflict (another order counted under the id, first_seen its
    fingerprint). A body larger than max_body_bytes is kept as its head (kept_body).
    """
    keys = {"rec": rejected_key(message_id)}
    if order_id:
        keys["ref"] = rejected_order_key(order_id)
    return {"message_id": message_id, "kind": kind, "order_id": order_id or "",
            "first_seen": first_seen, "reasons": json.dumps(reasons, ensure_ascii=False),
            "fields": sorted(reasons), "keys": keys, **kept_body(body, max_body_bytes)}


def kept_body(body: str, max_bytes: int) -> dict:
    """What a rejection record keeps of a body: whole, or the head, size and SHA-256."""
    data = body.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return {"body": body}
    # Cut on a character boundary: a split UTF-8 sequence at the end is dropped.
    return {"body": data[:KEPT_BODY_BYTES].decode("utf-8", "ignore"),
            "body_bytes": len(data), "body_sha256": hashlib.sha256(data).hexdigest()}


class ScriptCall:
    """One script call: its KEYS, and ops whose key names point into them."""

    def __init__(self):
        self.keys: list[str] = []
        self._index: dict[str, int] = {}

    def bind(self, value):
        """value with each 'keys' mapping (name -> key) turned into name -> KEYS index."""
        if isinstance(value, list):
            return [self.bind(item) for item in value]
        if not isinstance(value, dict):
            return value
        # Scalars are copied as they are, not visited: most of a payload is scalars.
        return {name: ({n: self._at(k) for n, k in item.items()} if name == "keys"
                       else self.bind(item) if isinstance(item, (dict, list)) else item)
                for name, item in value.items()}

    def _at(self, key: str) -> int:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)  # Lua counts from 1
        return index


def _products(order: Order) -> list[tuple[str, int, int]]:
    """(product id, units, cents) per product: lines of the same product merged."""
    merged: dict[str, tuple[int, int]] = {}
    for line in order.lines:
        units, cents = merged.get(line.product_id, (0, 0))
        merged[line.product_id] = (units + line.quantity, cents + line.line_cents)
    return [(product_id, units, cents) for product_id, (units, cents) in merged.items()]


def _correction(order: Order) -> str:
    """What the mismatch policy changed, as JSON, or '' when nothing."""
    if order.corrected_from_cents is None:
        return ""
    return json.dumps({"sent_cents": order.corrected_from_cents,
                       "counted_cents": order.value_cents})
