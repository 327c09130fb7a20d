"""The one builder of order bodies: the tests' orders (conftest re-exports it) and the
orders of the bench's store measurements (bench/store_apply.py, bench/script_instructions.py)."""
from __future__ import annotations

import json
import random
from decimal import Decimal

# The user of an order unless a test names one.
USER = "U1"
# (product_id, quantity, unit price in cents): one line of 5.00.
ONE_LINE = (("P1", 1, 500),)


def order(order_id: str = "O1", user_id: str = USER, *, lines=ONE_LINE, day: str = "2024-12-13",
          value_cents: int | None = None, **changes) -> dict:
    """A valid order body: order_value is the lines' total unless value_cents is given.

    Lines are (product_id, quantity, unit price in cents); changes replace or add fields.
    """
    total = sum(quantity * cents for _, quantity, cents in lines)
    body = {"order_id": order_id, "user_id": user_id, "order_timestamp": f"{day}T10:00:00Z",
            "order_value": (total if value_cents is None else value_cents) / 100,
            "items": [{"product_id": product, "quantity": quantity, "price_per_unit": cents / 100}
                      for product, quantity, cents in lines],
            "shipping_address": "1 Main St", "payment_method": "UPI"}
    body.update(changes)
    return body


def order_body(*args, **kwargs) -> str:
    """The order as the JSON text a producer sends (the arguments of order)."""
    return json.dumps(order(*args, **kwargs))


def make_orders(prefix: str, count: int, users: int, rng: random.Random):
    """Valid orders as (body dict, exact Decimal value); order_value equals the item sum."""
    orders = []
    for i in range(count):
        lines = [(f"P{rng.randint(1, 30):03d}", rng.randint(1, 4), rng.randint(1, 50000))
                 for _ in range(rng.randint(1, 4))]
        body = order(f"{prefix}{i:05d}", f"U{rng.randint(1, users):03d}", lines=lines,
                     day=f"2024-12-{rng.randint(1, 28):02d}")
        orders.append((body, Decimal(sum(q * cents for _, q, cents in lines)) / 100))
    return orders
