"""Money as integer cents: exact sums, no accumulated floats."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def to_cents(amount: Decimal) -> int:
    """Round an amount to whole cents (half up) and return them as an int."""
    return int((amount / CENT).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_cents(cents: int) -> float:
    """Cents as a JSON number: the nearest float to the exact amount, e.g. 759.9."""
    return cents / 100


def format_cents(cents: int) -> str:
    """Cents as an exact decimal string, e.g. '759.90'."""
    return str(Decimal(cents) * CENT)
