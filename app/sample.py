"""Realistic order event bodies for demos and load: valid, invalid, duplicated and legacy."""
from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

PAYMENT_METHODS = ("CreditCard", "DebitCard", "PayPal", "CashOnDelivery", "UPI", "NetBanking")
KINDS = ("valid", "invalid", "duplicate", "legacy")
STREETS = ("Main St", "Oak Ave", "Maple Dr", "Elm St", "Cedar Ln", "Park Rd", "Lake View",
           "Hill St", "River Rd", "Station Rd")
CITIES = ("Springfield", "Shelbyville", "Riverside", "Fairview", "Greenville", "Madison",
          "Georgetown", "Franklin", "Clinton", "Salem")
# Duplicates re-send one of the most recent valid bodies, as a retrying producer does;
# a bounded window keeps memory flat however many orders are generated.
DUPLICATE_WINDOW = 1000


@dataclass(frozen=True)
class Sample:
    """One generated message body and what it is meant to be."""

    body: str
    kind: str  # one of KINDS
    # Name of the flaw of an invalid body (see DEFECTS), None otherwise.
    defect: str | None = None


def _nan_value(order: dict) -> str:
    order["order_value"] = float("nan")
    return json.dumps(order)  # writes NaN, as a Python producer does


def _words_value(order: dict) -> str:
    order["order_value"] = "two hundred"
    return json.dumps(order)


def _missing_user(order: dict) -> str:
    del order["user_id"]
    return json.dumps(order)


def _negative_quantity(order: dict) -> str:
    order["items"][0]["quantity"] = -order["items"][0]["quantity"]
    return json.dumps(order)


def _empty_items(order: dict) -> str:
    order["items"] = []
    return json.dumps(order)


def _bad_timestamp(order: dict) -> str:
    moment = datetime.fromisoformat(order["order_timestamp"])
    order["order_timestamp"] = moment.strftime("%d/%m/%Y %I:%M %p")
    return json.dumps(order)


def _value_mismatch(order: dict) -> str:
    # Counted as a rejection under ORDER_VALUE_MISMATCH=reject; "correct" would accept it.
    order["order_value"] = round(order["order_value"] + 5, 2)
    return json.dumps(order)


def _not_json(order: dict) -> str:
    text = json.dumps(order)
    return text[: len(text) // 2]  # a body cut off mid-way


# The invalid bodies rotate through this catalogue, one flaw each.
DEFECTS: dict[str, Callable[[dict], str]] = {
    "nan_value": _nan_value,
    "words_value": _words_value,
    "missing_user": _missing_user,
    "negative_quantity": _negative_quantity,
    "empty_items": _empty_items,
    "bad_timestamp": _bad_timestamp,
    "value_mismatch": _value_mismatch,
    "not_json": _not_json,
}


def _price_cents(rng: random.Random) -> int:
    """A shop-like unit price: mostly cheap, some dear, ending in .99, .49 or .00."""
    dollars = int(rng.lognormvariate(3, 1)) % 2000
    return dollars * 100 + rng.choice((99, 49, 0)) if dollars else 99


def generate(count: int, *, users: int = 1000, products: int = 200, invalid_share: float = 0.0,
             duplicate_share: float = 0.0, legacy_share: float = 0.0, seed: int | None = None,
             start: datetime | None = None, days: int = 30) -> Iterator[Sample]:
    """An iterator over `count` order bodies; the same seed and start give the same bodies.

    Each body is drawn independently: invalid, duplicate and legacy with their shares,
    valid otherwise (a duplicate before any valid order is a valid one). Timestamps fall
    in the `days` days from `start`, by default the `days` days up to now. Bad arguments
    raise ValueError here, not at the first next().
    """
    if count < 0 or users < 1 or products < 1 or days < 1:
        raise ValueError("count must be >= 0 and users, products, days >= 1")
    shares = (invalid_share, duplicate_share, legacy_share)
    if any(share < 0 for share in shares) or sum(shares) > 1:
        raise ValueError("invalid, duplicate and legacy shares must be >= 0 and sum to at most 1")
    if start is None:
        start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=days)
    elif start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    return _generate(count, users, products, shares, random.Random(seed), start, days)


def _generate(count: int, users: int, products: int, shares: tuple[float, float, float],
              rng: random.Random, start: datetime, days: int) -> Iterator[Sample]:
    """The generator behind generate(), arguments already checked."""
    # A uniform draw below these bounds picks invalid, then duplicate, then legacy.
    invalid_below = shares[0]
    duplicate_below = invalid_below + shares[1]
    legacy_below = duplicate_below + shares[2]
    # A run token keeps ids of separate unseeded runs apart; the counter keeps them unique.
    run = f"{rng.getrandbits(32):08X}"
    user_width, product_width = max(5, len(str(users))), max(4, len(str(products)))
    prices = [_price_cents(rng) for _ in range(products)]
    defects = list(DEFECTS.items())
    recent_valid: deque[str] = deque(maxlen=DUPLICATE_WINDOW)

    def user_id() -> str:
        return f"U{rng.randint(1, users):0{user_width}d}"

    def order(number: int) -> dict:
        picked = rng.sample(range(products), k=min(products, rng.randint(1, 5)))
        items = [{"product_id": f"P{p + 1:0{product_width}d}",
                  "quantity": rng.choices((1, 2, 3, 4, 5), weights=(60, 20, 10, 6, 4))[0],
                  "price_per_unit": prices[p] / 100} for p in picked]
        total_cents = sum(item["quantity"] * prices[p] for item, p in zip(items, picked))
        moment = start + timedelta(seconds=rng.randrange(days * 86400))
        return {
            "order_id": f"ORD-{run}-{number:06d}",
            "user_id": user_id(),
            "order_timestamp": moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "order_value": total_cents / 100,
            "items": items,
            "shipping_address": f"{rng.randint(1, 999)} {rng.choice(STREETS)}, "
                                f"{rng.choice(CITIES)}",
            "payment_method": rng.choice(PAYMENT_METHODS),
        }

    invalid_made = 0
    for number in range(1, count + 1):
        draw = rng.random()
        if draw < invalid_below:
            name, spoil = defects[invalid_made % len(defects)]
            invalid_made += 1
            yield Sample(spoil(order(number)), "invalid", name)
        elif draw < duplicate_below and recent_valid:
            yield Sample(rng.choice(recent_valid), "duplicate")
        elif duplicate_below <= draw < legacy_below:
            cents = rng.randint(100, 50000)
            yield Sample(json.dumps({"user_id": user_id(), "amount": cents / 100}), "legacy")
        else:
            body = json.dumps(order(number))
            recent_valid.append(body)
            yield Sample(body, "valid")
