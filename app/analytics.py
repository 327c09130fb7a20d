"""Analytics queries over the aggregates: rankings, daily and monthly KPIs, users, products.

Every query reads keys the order's atomic update already maintains (app.store), never
scans: a ranking of one bucket costs O(log N + n), a series O(days or months asked).
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

from app.store import Store, UserTotals, top_products_key, top_users_key

MAX_DAYS = 366   # the longest range of days a query may ask for (a leap year)
MAX_MONTHS = 12  # the longest range of months
MAX_TOP = 100    # the longest ranking
USER_MEASURES = ("spend", "orders")
PRODUCT_MEASURES = ("revenue", "units")
MONTH_FORMAT = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def average_cents(total_cents: int, count: int) -> int:
    """total / count rounded half up to a whole cent; 0 when count is 0."""
    if not count:
        return 0
    return int((Decimal(total_cents) / count).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def parse_month(text: str) -> date:
    """'YYYY-MM' as the first day of that month; ValueError when malformed."""
    match = MONTH_FORMAT.match(text)
    if not match or match.group(1) == "0000":
        raise ValueError(f"{text!r} is not a month as YYYY-MM")
    return date(int(match.group(1)), int(match.group(2)), 1)


def month_text(day: date) -> str:
    """The YYYY-MM of a day."""
    return day.isoformat()[:7]


def month_end(day: date) -> date:
    """The last day of the day's month."""
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def next_month(day: date) -> date:
    """The first day of the month after the day's (OverflowError after 9999-12)."""
    return month_end(day) + timedelta(days=1)


def months_between(first: date, last: date) -> int:
    """How many months first..last spans, both counted."""
    return (last.year - first.year) * 12 + last.month - first.month + 1


class RangeError(ValueError):
    """A range of days or months a query refuses; `end` is the end at fault, first or last."""

    def __init__(self, end: str, message: str):
        super().__init__(message)
        self.end = end


def check_range(first: date, last: date, count: int, most: int, unit: str):
    """Refuse a range that starts after it ends or holds more than `most` units."""
    if first > last:
        raise RangeError("first", "Must not be after the end of the range.")
    if count > most:
        raise RangeError("last", f"Must be at most {most - 1} {unit} after the start "
                                 f"(a range holds at most {most} {unit}).")


@dataclass(frozen=True)
class Period:
    """Whole UTC days first..last, both included, at most MAX_DAYS of them."""

    first: date
    last: date

    def __post_init__(self):
        check_range(self.first, self.last, self.days, MAX_DAYS, "days")

    @classmethod
    def of_day(cls, day: date) -> "Period":
        """One day."""
        return cls(day, day)

    @classmethod
    def of_month(cls, first: date) -> "Period":
        """The whole month of a day."""
        return cls(first.replace(day=1), month_end(first))

    @property
    def days(self) -> int:
        """How many days the period holds."""
        return (self.last - self.first).days + 1

    def each_day(self) -> list[date]:
        """The period's days in order."""
        return [self.first + timedelta(days=i) for i in range(self.days)]

    def buckets(self) -> list[tuple[str, str]]:
        """The fewest (day, month) buckets that cover the period exactly.

        A month wholly inside counts as one bucket, the rest day by day: a range of a year
        is at most 11 whole months and 61 days.
        """
        buckets = []
        start = self.first
        while start <= self.last:
            end = month_end(start)
            if start.day == 1 and end <= self.last:
                buckets.append(("", month_text(start)))
            else:
                stop = min(end, self.last)
                buckets.extend((d.isoformat(), "") for d in Period(start, stop).each_day())
            if end >= self.last:
                break
            start = end + timedelta(days=1)
        return buckets


@dataclass(frozen=True)
class MonthRange:
    """Whole UTC months first..last (the first day of each), at most MAX_MONTHS of them."""

    first: date
    last: date

    def __post_init__(self):
        # Any day stands for its month.
        object.__setattr__(self, "first", self.first.replace(day=1))
        object.__setattr__(self, "last", self.last.replace(day=1))
        check_range(self.first, self.last, self.months, MAX_MONTHS, "months")

    @property
    def months(self) -> int:
        """How many months the range holds."""
        return months_between(self.first, self.last)

    def each_month(self) -> list[date]:
        """The first day of each month in order."""
        months, start = [], self.first.replace(day=1)
        for _ in range(self.months):
            months.append(start)
            if len(months) < self.months:
                start = next_month(start)
        return months


@dataclass(frozen=True)
class TopUser:
    """A user's place in a ranking, with both measures over the ranked period."""

    rank: int
    user_id: str
    spend_cents: int
    order_count: int

    @property
    def avg_order_cents(self) -> int:
        """Average order value in cents over the ranked period."""
        return average_cents(self.spend_cents, self.order_count)


@dataclass(frozen=True)
class TopProduct:
    """A product's place in a ranking (all-time or of one day), with both measures."""

    rank: int
    product_id: str
    revenue_cents: int
    units_sold: int


@dataclass(frozen=True)
class Kpis:
    """The platform's figures of one day or one month (bucket is YYYY-MM-DD or YYYY-MM)."""

    bucket: str
    total_orders: int
    total_revenue_cents: int
    total_items_sold: int
    unique_customers: int

    @property
    def avg_order_cents(self) -> int:
        """Revenue / orders in cents, 0 without orders."""
        return average_cents(self.total_revenue_cents, self.total_orders)


@dataclass(frozen=True)
class UserDay:
    """One user's orders and spend on one day."""

    day: date
    order_count: int
    spend_cents: int


@dataclass(frozen=True)
class UserPeriod:
    """One user's days over a period, zeros included, and their sums."""

    user_id: str
    period: Period
    days: tuple[UserDay, ...]

    @property
    def order_count(self) -> int:
        """Orders over the period."""
        return sum(d.order_count for d in self.days)

    @property
    def total_spend_cents(self) -> int:
        """Spend over the period, in cents."""
        return sum(d.spend_cents for d in self.days)

    @property
    def avg_order_cents(self) -> int:
        """Average order value over the period, in cents."""
        return average_cents(self.total_spend_cents, self.order_count)


@dataclass(frozen=True)
class UserSummary(UserTotals):
    """One user's all-time figures with the times of the first and last orders."""

    first_order_at: datetime | None
    last_order_at: datetime | None

    @property
    def avg_order_cents(self) -> int:
        """All-time average order value, in cents."""
        return average_cents(self.total_spend_cents, self.order_count)


@dataclass(frozen=True)
class ProductStats:
    """One product's all-time sales."""

    product_id: str
    units_sold: int
    revenue_cents: int
    orders: int


def _check_n(n: int):
    if not 1 <= n <= MAX_TOP:
        raise ValueError(f"n must be between 1 and {MAX_TOP}, not {n}")


def top_users(store: Store, n: int = 10, by: str = "spend",
              period: Period | None = None) -> list[TopUser]:
    """The n users with the highest spend or order count, all-time or over a period.

    Ties go to the smaller user id (byte order). Each shard ranks its own users (a user
    lives in one shard) and the shards' tops are merged. All-time, one day or one whole
    month: O(log N + n) per shard. Any other period merges its buckets page by page
    (app.ranking), the days of a month read through the month's ranking: every Redis
    command bounded.
    """
    _check_n(n)
    if by not in USER_MEASURES:
        raise ValueError(f"no ranking of users by {by!r}")
    other = "orders" if by == "spend" else "spend"
    buckets = period.buckets() if period else [("", "")]
    ranked = store.top(
        lambda s: [top_users_key(by, day=d, month=m, shard=s) for d, m in buckets],
        lambda s: [top_users_key(other, day=d, month=m, shard=s) for d, m in buckets], n,
        # A day's month holds each of its users with at least the day's figure.
        lambda s: [top_users_key(by, month=d[:7], shard=s) if d else None for d, _ in buckets])
    return [TopUser(rank, user_id, *((score, count) if by == "spend" else (count, score)))
            for rank, (user_id, score, count) in enumerate(ranked, start=1)]


def top_products(store: Store, n: int = 10, by: str = "revenue",
                 day: date | None = None) -> list[TopProduct]:
    """The n products with the highest revenue or units, all-time or on one UTC day.

    Ties go to the smaller product id. Each shard ranks its own products and the shards'
    tops are merged: O(log N + n) per shard.
    """
    _check_n(n)
    if by not in PRODUCT_MEASURES:
        raise ValueError(f"no ranking of products by {by!r}")
    other = "units" if by == "revenue" else "revenue"
    on = day.isoformat() if day else ""
    ranked = store.top(lambda s: [top_products_key(by, s, day=on)],
                       lambda s: [top_products_key(other, s, day=on)], n)
    return [TopProduct(rank, product_id,
                       *((score, units) if by == "revenue" else (units, score)))
            for rank, (product_id, score, units) in enumerate(ranked, start=1)]


def daily(store: Store, period: Period) -> list[Kpis]:
    """The platform's KPIs for each day of the period, zeros on days without orders."""
    days = [d.isoformat() for d in period.each_day()]
    return [Kpis(day, *figures) for day, figures in zip(days, store.kpis(days))]


def monthly(store: Store, months: MonthRange) -> list[Kpis]:
    """The platform's KPIs for each month of the range, zeros included."""
    names = [month_text(m) for m in months.each_month()]
    return [Kpis(name, *figures) for name, figures in zip(names, store.kpis(names, True))]


def user_period(store: Store, user_id: str, period: Period) -> UserPeriod | None:
    """A user's orders and spend day by day over a period, or None for an unknown user."""
    days = period.each_day()
    figures = store.user_days(user_id, [d.isoformat() for d in days])
    if figures is None:
        return None
    return UserPeriod(user_id, period, tuple(
        UserDay(day, orders, cents) for day, (orders, cents) in zip(days, figures)))


def user_summary(store: Store, user_id: str) -> UserSummary | None:
    """A user's all-time totals, average and first and last order times: O(1)."""
    record = store.user(user_id)
    if record is None:
        return None
    return UserSummary(user_id, record.order_count, record.total_spend_cents,
                       _from_ms(record.first_order_ms), _from_ms(record.last_order_ms))


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _from_ms(ms: int | None) -> datetime | None:
    # Exact to the millisecond, which a float of seconds is not.
    return EPOCH + timedelta(milliseconds=ms) if ms is not None else None


def product_stats(store: Store, product_id: str) -> ProductStats | None:
    """A product's all-time units, revenue and orders, or None if never sold: O(1)."""
    figures = store.product(product_id)
    return ProductStats(product_id, *figures) if figures else None
