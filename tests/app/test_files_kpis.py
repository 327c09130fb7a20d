"""The KPIs' integer rounding: rates and averages half up, as exact decimals would round."""
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given, strategies as st

from app.files.kpis import Snapshot, rate, ratio_cents

CENT = Decimal("0.01")


@given(whole=st.integers(1, 10 ** 9), share=st.floats(0, 1))
def test_a_rate_is_the_exact_percentage_rounded_half_up(whole, share):
    part = int(whole * share)
    expected = (Decimal(100 * part) / Decimal(whole)).quantize(CENT, rounding=ROUND_HALF_UP)
    assert rate(part, whole) == float(expected)


@given(cents=st.integers(0, 2 ** 53), count=st.integers(1, 10 ** 6))
def test_an_average_is_the_exact_amount_rounded_half_up_to_a_cent(cents, count):
    expected = (Decimal(cents) / 100 / count).quantize(CENT, rounding=ROUND_HALF_UP)
    assert ratio_cents(cents, count) == float(expected)


def test_nothing_to_divide_by_is_zero():
    assert rate(3, 0) == 0.0 and ratio_cents(500, 0) == 0.0


def test_a_snapshot_ranks_higher_after_any_commit_to_any_table():
    # None: the table does not exist yet; its first commit is version 0.
    before = Snapshot({"orders": 3, "order_items": None, "products": 0})
    for name, version in before.versions.items():
        later = Snapshot({**before.versions, name: 0 if version is None else version + 1})
        assert later.rank > before.rank, name
