"""Money as integer cents: rounding once, half up, and exact decimal strings."""
from decimal import Decimal

import pytest

from app.money import format_cents, from_cents, to_cents


# Half up, not Python's half to even: 0.125 is 13 cents, not 12.
@pytest.mark.parametrize("amount, cents", [
    ("0.125", 13), ("0.005", 1), ("0.0049", 0), ("659.9097", 65991), ("0", 0)])
def test_amounts_round_half_up_to_whole_cents(amount, cents):
    assert to_cents(Decimal(amount)) == cents


@pytest.mark.parametrize("cents", [0, 5, 75990, 2 ** 53 - 1])
def test_cents_format_exactly_and_read_back(cents):
    text = format_cents(cents)
    assert Decimal(text) * 100 == cents and len(text.rsplit(".", 1)[1]) == 2
    assert to_cents(Decimal(text)) == cents
    assert from_cents(cents) == float(Decimal(text))
