"""Sample rows of the three file types and their KPIs in plain Python, apart from app/files."""
from __future__ import annotations

import random
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

from app.files.contract import ORDER_ITEMS, ORDERS, PRODUCTS

CATEGORIES = ["Jeans", "Tops", "Shoes", "Outerwear"]


def csv_of(file_type, rows: list[dict]) -> bytes:
    """CSV bytes with the type's header."""
    lines = [",".join(file_type.columns)]
    lines += [",".join(str(row.get(c, "")) for c in file_type.columns) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def make_rows(rng: random.Random, orders: int, products: int = 12, prefix: str = "O"):
    """Clean products, orders and items over a few January days."""
    product_rows = [{"id": f"P{i}", "sku": f"S{i}", "cost": "1.00",
                     "category": rng.choice(CATEGORIES), "name": f"N{i}", "brand": "B",
                     "retail_price": "5.00", "department": rng.choice(["Men", "Women"])}
                    for i in range(products)]
    order_rows, item_rows = [], []
    for n in range(orders):
        order_id = f"{prefix}{n}"
        user = f"U{rng.randint(1, max(2, orders // 3))}"
        created = f"2024-01-{rng.randint(1, 5):02d}T{rng.randint(0, 23):02d}:15:00Z"
        count = rng.randint(1, 3)
        order_rows.append({"order_id": order_id, "user_id": user, "status": "complete",
                           "created_at": created, "num_of_item": count})
        for k in range(count):
            # A few items point at a product nobody staged: category "Unknown".
            product = f"P{rng.randint(0, products)}"
            item_rows.append({"id": f"{order_id}-{k}", "order_id": order_id, "user_id": user,
                              "product_id": product, "status": "complete", "created_at": created,
                              "sale_price": f"{rng.randint(1, 20000) / 100:.2f}"})
    return product_rows, order_rows, item_rows


def _half_up(value: Decimal, places: str) -> float:
    return float(value.quantize(Decimal(places), rounding=ROUND_HALF_UP))


def expected_kpis(products: dict, orders: dict, items: dict):
    """(order KPIs, category KPIs) as the API answers them, from rows by key."""
    category_of = {p["id"]: p["category"] for p in products.values()}
    date_of = {o["order_id"]: o["created_at"][:10] for o in orders.values()}
    per_day = defaultdict(lambda: {"orders": set(), "users": set(), "returned": 0,
                                   "revenue": Decimal(0), "items": 0})
    for order in orders.values():
        day = per_day[date_of[order["order_id"]]]
        day["orders"].add(order["order_id"])
        day["users"].add(order["user_id"])
        day["returned"] += order["status"] == "returned"
    per_category = defaultdict(lambda: {"revenue": Decimal(0), "orders": set(), "items": 0,
                                        "returned": 0})
    for item in items.values():
        if item["order_id"] not in date_of:
            continue
        day = date_of[item["order_id"]]
        price = Decimal(item["sale_price"])
        per_day[day]["revenue"] += price
        per_day[day]["items"] += 1
        cat = per_category[(category_of.get(item["product_id"], "Unknown"), day)]
        cat["revenue"] += price
        cat["orders"].add(item["order_id"])
        cat["items"] += 1
        cat["returned"] += item["status"] == "returned"
    order_kpis = [{"order_date": d, "total_orders": len(v["orders"]),
                   "total_revenue": float(v["revenue"]), "total_items_sold": v["items"],
                   "unique_customers": len(v["users"]),
                   "return_rate": _half_up(Decimal(100 * v["returned"]) / len(v["orders"]), "0.01")}
                  for d, v in sorted(per_day.items())]
    category_kpis = [{"category": c, "order_date": d, "daily_revenue": float(v["revenue"]),
                      "avg_order_value": _half_up(v["revenue"] / len(v["orders"]), "0.01"),
                      "avg_return_rate": _half_up(Decimal(100 * v["returned"]) / v["items"],
                                                  "0.01")}
                     for (c, d), v in sorted(per_category.items())]
    return order_kpis, category_kpis


def by_key(file_type, rows: list[dict]) -> dict:
    """Rows by the type's key, the last one winning (as an upsert does)."""
    return {row[file_type.key]: row for row in rows}


__all__ = ["csv_of", "make_rows", "expected_kpis", "by_key", "ORDERS", "ORDER_ITEMS", "PRODUCTS"]


def eager_cleaning(data: bytes, file_type):
    """The files' reading before streaming (whole bytes, text, a buffer, one frame), as the
    reference of the streaming path: (frame, rows read, drops per rule) or InvalidFile."""
    import io

    import polars as pl

    from app.files.cleaning import DUPLICATE_KEY, InvalidFile, _trimmed, rules_for, typed
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidFile([f"not UTF-8: byte {exc.start} ({exc.reason})"]) from None
    if not text.strip():
        raise InvalidFile(["empty file: a header row is required"])
    try:
        frame = pl.read_csv(io.StringIO(text), infer_schema=False, has_header=True)
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise InvalidFile([f"not a CSV file: {str(exc).splitlines()[0]}"]) from None
    frame = frame.rename({name: name.strip() for name in frame.columns})
    missing = [c for c in file_type.columns if c not in frame.columns]
    if missing:
        raise InvalidFile([f"missing required column(s): {', '.join(missing)}"])
    frame = frame.select(file_type.columns)
    rules = rules_for(file_type)
    reason = pl.coalesce([pl.when(rule.drops).then(pl.lit(rule.name)) for rule in rules]
                         ).alias("_dropped_by")
    judged = (frame.lazy().with_columns(_trimmed(c) for c in frame.columns)
              .pipe(typed, file_type).with_columns(reason).collect())
    dropped = {rule.name: 0 for rule in rules}
    for name, count in judged.group_by("_dropped_by").len().iter_rows():
        if name is not None:
            dropped[name] = count
    kept = judged.filter(pl.col("_dropped_by").is_null()).drop("_dropped_by")
    unique = kept.unique(subset=[file_type.key], keep="last", maintain_order=True)
    dropped[DUPLICATE_KEY] = kept.height - unique.height
    if "year" in file_type.partition_by:
        unique = unique.with_columns(year=pl.col("created_at").dt.year().cast(pl.Int32),
                                     month=pl.col("created_at").dt.month().cast(pl.Int32))
    return unique, frame.height, dropped
