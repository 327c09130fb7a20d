"""app.sample: the generator of realistic order bodies."""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from app.orders import Incoming, evaluate
from app.sample import DEFECTS, PAYMENT_METHODS, generate
from app.settings import Settings

START = datetime(2024, 12, 1, tzinfo=timezone.utc)
MIXED = dict(invalid_share=0.1, duplicate_share=0.1, legacy_share=0.05)


def bodies(count, **options):
    return [s.body for s in generate(count, start=START, **options)]


def cents(amount) -> int:
    """Exact cents of a JSON number, the way the pipeline reads it (via its shortest repr)."""
    value = Decimal(str(amount)) * 100
    assert value == value.to_integral_value(), f"{amount} is not whole cents"
    return int(value)


def valid_orders(count=2000, **options):
    return [json.loads(s.body) for s in generate(count, seed=7, start=START, **options)
            if s.kind == "valid"]


def test_same_seed_and_start_give_the_same_bodies():
    assert bodies(500, seed=1, **MIXED) == bodies(500, seed=1, **MIXED)
    assert bodies(500, seed=1, **MIXED) != bodies(500, seed=2, **MIXED)


def test_unseeded_runs_use_different_order_ids():
    first, second = (json.loads(s.body)["order_id"] for s in (next(generate(1)), next(generate(1))))
    assert first != second


def test_shares_are_roughly_respected():
    kinds = Counter(s.kind for s in generate(20_000, seed=3, invalid_share=0.2,
                                             duplicate_share=0.1, legacy_share=0.05))
    assert sum(kinds.values()) == 20_000
    assert kinds["invalid"] / 20_000 == pytest.approx(0.2, abs=0.02)
    assert kinds["duplicate"] / 20_000 == pytest.approx(0.1, abs=0.02)
    assert kinds["legacy"] / 20_000 == pytest.approx(0.05, abs=0.02)
    assert kinds["valid"] / 20_000 == pytest.approx(0.65, abs=0.02)


def test_no_shares_means_only_valid_orders():
    assert {s.kind for s in generate(300, seed=4)} == {"valid"}


def test_valid_order_value_is_exactly_the_item_sum_in_cents():
    orders = valid_orders()
    for order in orders:
        item_cents = sum(item["quantity"] * cents(item["price_per_unit"])
                         for item in order["items"])
        assert cents(order["order_value"]) == item_cents
        # Written with at most two decimals, e.g. 59.99 and never 59.989999999999995.
        assert re.fullmatch(r"\d+\.\d{1,2}", json.dumps(order["order_value"]))


def test_valid_orders_have_the_documented_shape():
    orders = valid_orders(users=50, products=30)
    for order in orders:
        assert re.fullmatch(r"U\d{5}", order["user_id"]) and 1 <= int(order["user_id"][1:]) <= 50
        assert 1 <= len(order["items"]) <= 5
        products = [item["product_id"] for item in order["items"]]
        assert len(set(products)) == len(products)
        assert all(re.fullmatch(r"P\d{4}", p) and 1 <= int(p[1:]) <= 30 for p in products)
        assert all(item["quantity"] >= 1 for item in order["items"])
        assert order["order_timestamp"].endswith("Z")
        placed = datetime.fromisoformat(order["order_timestamp"])
        assert START <= placed < START + timedelta(days=30)
        assert order["shipping_address"] and order["payment_method"] in PAYMENT_METHODS
    assert len({o["user_id"] for o in orders}) == 50  # every user shows up in 2000 draws


def test_each_product_has_one_price():
    prices = {}
    for order in valid_orders():
        for item in order["items"]:
            assert prices.setdefault(item["product_id"], item["price_per_unit"]) \
                == item["price_per_unit"]
    assert len(set(prices.values())) > 20  # not one price for everything


def test_order_ids_are_unique_and_duplicates_resend_an_earlier_valid_body():
    samples = list(generate(3000, seed=5, start=START, **MIXED))
    seen_valid = set()
    ids = []
    for s in samples:
        if s.kind == "duplicate":
            assert s.body in seen_valid
        elif s.kind == "valid":
            seen_valid.add(s.body)
            ids.append(json.loads(s.body)["order_id"])
    assert len(ids) == len(set(ids))
    assert any(s.kind == "duplicate" for s in samples)


def test_every_payment_method_is_used():
    assert {o["payment_method"] for o in valid_orders()} == set(PAYMENT_METHODS)


def test_invalid_bodies_rotate_through_every_defect():
    invalid = [s for s in generate(400, seed=6, invalid_share=0.5) if s.kind == "invalid"]
    assert Counter(s.defect for s in invalid[:len(DEFECTS) * 3]) == \
        {name: 3 for name in DEFECTS}
    nan = next(s for s in invalid if s.defect == "nan_value")
    assert '"order_value": NaN' in nan.body  # what json.dumps sends


def test_legacy_bodies_have_the_old_minimal_shape():
    legacy = [json.loads(s.body) for s in generate(500, seed=8, legacy_share=0.3)
              if s.kind == "legacy"]
    assert legacy and all(set(body) == {"user_id", "amount"} for body in legacy)


def test_the_pipeline_accepts_what_is_meant_valid_and_rejects_what_is_meant_invalid():
    settings = Settings()
    now = START + timedelta(days=31)
    for number, s in enumerate(generate(1000, seed=9, start=START, **MIXED)):
        verdict = evaluate(Incoming(s.body, f"m{number}"), settings, now=now)
        if s.kind == "invalid":
            assert verdict.rejection is not None, s
            # The one flaw the "correct" policy forgives.
            corrected = evaluate(Incoming(s.body, f"m{number}"),
                                 replace(settings, order_value_mismatch="correct"), now=now)
            assert (corrected.order is not None) == (s.defect == "value_mismatch"), s
        else:
            assert verdict.order is not None, (s, verdict.rejection)


@pytest.mark.parametrize("options", [
    dict(count=-1), dict(users=0), dict(products=0), dict(days=0),
    dict(invalid_share=0.6, duplicate_share=0.5), dict(invalid_share=-0.1),
    dict(start=datetime(2024, 1, 1)),
])
def test_bad_arguments_fail_at_the_call(options):
    with pytest.raises(ValueError):
        generate(**{"count": 10, **options})
