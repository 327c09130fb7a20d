"""Daily order KPIs and category KPIs, recomputed from the staged tables for given dates."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl

from app.files.cleaning import UNKNOWN
from app.files.contract import ORDER_ITEMS, ORDERS, PRODUCTS
from app.files.staging import Staging
from app.money import from_cents

RETURNED = "returned"


@dataclass(frozen=True)
class OrderKpi:
    """One order_date's figures, exact: counts and cents."""

    order_date: str
    total_orders: int
    total_revenue_cents: int
    total_items_sold: int
    unique_customers: int
    returned_orders: int


@dataclass(frozen=True)
class CategoryKpi:
    """One (category, order_date)'s figures, exact: counts and cents."""

    category: str
    order_date: str
    daily_revenue_cents: int
    orders: int
    items: int
    returned_items: int


@dataclass(frozen=True)
class Snapshot:
    """The table versions one KPI computation read; their sum orders computations in time."""

    versions: dict[str, int | None]

    @property
    def rank(self) -> int:
        """Grows with every commit to any table, so a later read never ranks lower."""
        return sum(v + 1 for v in self.versions.values() if v is not None)


def rate(part: int, whole: int) -> float:
    """100 × part / whole rounded to 2 decimals, half up, in integers (0 for no whole)."""
    if whole <= 0:
        return 0.0
    basis_points = (20000 * part + whole) // (2 * whole)
    return basis_points / 100


def ratio_cents(cents: int, count: int) -> float:
    """cents / count rounded to a cent, half up, as a money number (0 for no count)."""
    if count <= 0:
        return 0.0
    return from_cents((2 * cents + count) // (2 * count))


def order_kpi_answer(kpi: OrderKpi) -> dict:
    """The API's shape of an order KPI (the seed's OrderKPIs item)."""
    return {"order_date": kpi.order_date, "total_orders": kpi.total_orders,
            "total_revenue": from_cents(kpi.total_revenue_cents),
            "total_items_sold": kpi.total_items_sold, "unique_customers": kpi.unique_customers,
            "return_rate": rate(kpi.returned_orders, kpi.total_orders)}


def category_kpi_answer(kpi: CategoryKpi) -> dict:
    """The API's shape of a category KPI (the seed's CategoryKPIs item)."""
    return {"category": kpi.category, "order_date": kpi.order_date,
            "daily_revenue": from_cents(kpi.daily_revenue_cents),
            "avg_order_value": ratio_cents(kpi.daily_revenue_cents, kpi.orders),
            "avg_return_rate": rate(kpi.returned_items, kpi.items)}


def changed_dates(staging: Staging, snapshot: Snapshot,
                  watermarks: dict[str, int]) -> list[str] | None:
    """Every order date changed by the commits after the watermarks up to the snapshot, read
    from the tables' change data feed (both images of an update: an order or an item that
    moved, a product that changed category); None when a commit did not record its changes.

    Changed items and products count on the dates of staged orders only: when the changed
    orders cover every staged date already (a first load), their changes are not read."""
    ranges = {}
    for file_type in (ORDERS, ORDER_ITEMS, PRODUCTS):
        end = snapshot.versions[file_type.name]
        start = watermarks.get(file_type.name, -1) + 1
        if end is not None and start <= end:
            ranges[file_type.name] = (start, end)
    dates = set()
    if ORDERS.name in ranges:
        orders = staging.changes(ORDERS, *ranges[ORDERS.name], ["created_at"])
        if orders is None:
            return None
        dates |= {d.isoformat() for d in orders.get_column("created_at")
                  .dt.date().drop_nulls().unique()}
    if ORDER_ITEMS.name not in ranges and PRODUCTS.name not in ranges:
        return sorted(dates)
    if dates.issuperset(staged_dates(staging, snapshot)):
        return sorted(dates)
    changed = {}
    for file_type, column in ((ORDER_ITEMS, "order_id"), (PRODUCTS, "id")):
        if file_type.name in ranges:
            frame = staging.changes(file_type, *ranges[file_type.name], [column])
            if frame is None:
                return None
            changed[file_type.name] = frame.get_column(column)
    order_ids = changed.get(ORDER_ITEMS.name, pl.Series("order_id", [], dtype=pl.String))
    if PRODUCTS.name in changed:
        product_ids = changed[PRODUCTS.name].unique().implode()
        items = staging.scan(ORDER_ITEMS, snapshot.versions[ORDER_ITEMS.name])
        order_ids = pl.concat([order_ids, items.filter(pl.col("product_id").is_in(product_ids))
                               .select("order_id").collect().get_column("order_id")])
    if not order_ids.is_empty():
        orders = staging.scan(ORDERS, snapshot.versions[ORDERS.name])
        found = (orders.filter(pl.col("order_id").is_in(order_ids.unique().implode()))
                 .select(pl.col("created_at").dt.date().unique()).collect().to_series())
        dates |= {d.isoformat() for d in found}
    return sorted(dates)


def staged_dates(staging: Staging, snapshot: Snapshot) -> list[str]:
    """Every order date of the orders table at the snapshot."""
    dates = (staging.scan(ORDERS, snapshot.versions[ORDERS.name])
             .select(pl.col("created_at").dt.date().unique()).collect().to_series())
    return sorted(d.isoformat() for d in dates.drop_nulls())


def compute(staging: Staging, snapshot: Snapshot, dates: list[str]
            ) -> tuple[list[OrderKpi], list[CategoryKpi]]:
    """Order and category KPIs of the dates, from the tables at the snapshot."""
    return compute_frames(staging.scan(ORDERS, snapshot.versions[ORDERS.name]),
                          staging.scan(ORDER_ITEMS, snapshot.versions[ORDER_ITEMS.name]),
                          staging.scan(PRODUCTS, snapshot.versions[PRODUCTS.name]), dates)


def compute_frames(orders: pl.LazyFrame, items: pl.LazyFrame, products: pl.LazyFrame,
                   dates: list[str] | None = None) -> tuple[list[OrderKpi], list[CategoryKpi]]:
    """Order and category KPIs from cleaned orders, items and products (None: every date)."""
    orders = orders.with_columns(order_date=pl.col("created_at").dt.date())
    if dates is not None:
        wanted = pl.lit([date.fromisoformat(d) for d in dates], dtype=pl.List(pl.Date))
        orders = orders.filter(pl.col("order_date").is_in(wanted.explode().implode()))
    # An item belongs to its order's date; items of orders not staged count nowhere.
    items = (items.select("order_id", "product_id", "status", "sale_price_cents")
             .join(orders.select("order_id", "order_date"), on="order_id", how="inner"))
    products = products.select(pl.col("id").alias("product_id"), "category")
    by_order_date = (orders.group_by("order_date").agg(
        total_orders=pl.col("order_id").n_unique(),
        unique_customers=pl.col("user_id").drop_nulls().n_unique(),
        returned_orders=(pl.col("status") == RETURNED).sum())
        .join(items.group_by("order_date").agg(
            total_revenue_cents=pl.col("sale_price_cents").sum(),
            total_items_sold=pl.len()), on="order_date", how="left")
        .sort("order_date"))
    # An item whose product is not staged counts under "Unknown".
    by_category = (items.join(products, on="product_id", how="left")
                   .with_columns(pl.col("category").fill_null(UNKNOWN))
                   .group_by("category", "order_date").agg(
                       daily_revenue_cents=pl.col("sale_price_cents").sum(),
                       orders=pl.col("order_id").n_unique(), items=pl.len(),
                       returned_items=(pl.col("status") == RETURNED).sum())
                   .sort("category", "order_date"))
    order_frame, category_frame = pl.collect_all([by_order_date, by_category])
    order_kpis = [OrderKpi(r["order_date"].isoformat(), r["total_orders"],
                           r["total_revenue_cents"] or 0, r["total_items_sold"] or 0,
                           r["unique_customers"], r["returned_orders"])
                  for r in order_frame.iter_rows(named=True)]
    category_kpis = [CategoryKpi(r["category"], r["order_date"].isoformat(),
                                 r["daily_revenue_cents"], r["orders"], r["items"],
                                 r["returned_items"])
                     for r in category_frame.iter_rows(named=True)]
    return order_kpis, category_kpis
