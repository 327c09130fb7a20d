"""Realistic sample files in the three shapes, dirty rows of every kind and later returns."""
from __future__ import annotations

import csv
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from app.files.contract import ORDER_ITEMS, ORDERS, PRODUCTS

CATEGORIES = ["Jeans", "Tops & Tees", "Sweaters", "Outerwear & Coats", "Shorts", "Swim",
              "Sleep & Lounge", "Accessories", "Active", "Socks", "Dresses", "Suits"]
BRANDS = ["Levi's", "Calvin Klein", "Carhartt", "Columbia", "Nike", "Hanes", "Quiksilver"]
DEPARTMENTS = ["Men", "Women"]
STATUSES = ["Complete", "Shipped", "Processing", "Cancelled", "Returned"]
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _iso(moment: datetime, rng: random.Random) -> str:
    """ISO 8601 in the shapes exports use: Z, an offset, or none (UTC)."""
    shape = rng.random()
    if shape < 0.6:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if shape < 0.8:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    local = moment.astimezone(timezone(timedelta(hours=-5)))
    return local.isoformat()


def _write(path: Path, columns, rows) -> int:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def write_sample(out: Path | str, orders: int = 1000, products: int = 200, users: int = 0,
                 days: int = 30, dirty_share: float = 0.02, return_share: float = 0.1,
                 seed: int = 42) -> dict[str, int]:
    """Write products.csv, orders_part1.csv, order_items_part1.csv and the later
    orders_returns.csv and order_items_returns.csv into out; rows written per file."""
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    users = users or max(1, orders // 4)

    def dirty() -> bool:
        return rng.random() < dirty_share

    product_rows = []
    for n in range(1, products + 1):
        cost = rng.randint(100, 5000)
        row = {"id": str(n), "sku": f"SKU{n:06d}", "cost": f"{cost / 100:.2f}",
               "category": rng.choice(CATEGORIES), "name": f"Product {n}",
               "brand": f"  {rng.choice(BRANDS)} ", "department": rng.choice(DEPARTMENTS),
               "retail_price": f"{cost * rng.uniform(1.2, 3) / 100:.4f}"}
        if dirty():
            row[rng.choice(["cost", "retail_price"])] = rng.choice(["0", "-3.50", "n/a"])
        if dirty():
            row[rng.choice(["category", "department"])] = rng.choice(["", "  "])
        product_rows.append(row)
    # A product sold but never exported: its items count under "Unknown".
    unknown_product = str(products + 1)

    order_rows, item_rows, item_id = [], [], 0
    for n in range(1, orders + 1):
        created = START + timedelta(seconds=rng.randint(0, days * 86400 - 1))
        count = rng.randint(1, 4)
        user = str(rng.randint(1, users))
        status = rng.choice(STATUSES[:4])
        order = {"order_id": str(n), "user_id": user, "status": f" {status.upper()} "
                 if dirty() else status, "created_at": _iso(created, rng), "returned_at": "",
                 "shipped_at": _iso(created + timedelta(days=1), rng), "delivered_at": "",
                 "num_of_item": str(count)}
        if dirty():
            order[rng.choice(["created_at", "num_of_item"])] = rng.choice(["", "0", "soon"])
        order_rows.append(order)
        for _ in range(count):
            item_id += 1
            product = unknown_product if rng.random() < 0.01 else str(rng.randint(1, products))
            price = rng.randint(150, 30000)
            item = {"id": str(item_id), "order_id": str(n), "user_id": user,
                    "product_id": product, "status": status, "created_at": order["created_at"],
                    "shipped_at": order["shipped_at"], "delivered_at": "", "returned_at": "",
                    # Exports carry float noise: 19.9899997711182.
                    "sale_price": f"{price / 100 - 1e-9:.13f}"}
            if dirty():
                item[rng.choice(["product_id", "sale_price"])] = rng.choice(["", "0", "free"])
            item_rows.append(item)
    # Exports repeat some rows: the last one wins.
    order_rows += [dict(r) for r in rng.sample(order_rows, int(len(order_rows) * dirty_share))]

    returned = rng.sample(range(orders), int(orders * return_share))
    returns = []
    for index in returned:
        row = order_rows[index]
        returns.append({**row, "status": "Returned",
                        "returned_at": (START + timedelta(days=days + 1)).isoformat()})
    returned_ids = {r["order_id"] for r in returns}
    item_returns = [{**i, "status": "Returned", "returned_at": returns[0]["returned_at"]}
                    for i in item_rows if i["order_id"] in returned_ids]
    return {
        "products.csv": _write(out / "products.csv", PRODUCTS.columns, product_rows),
        "orders_part1.csv": _write(out / "orders_part1.csv", ORDERS.columns, order_rows),
        "order_items_part1.csv": _write(out / "order_items_part1.csv", ORDER_ITEMS.columns,
                                        item_rows),
        "orders_returns.csv": _write(out / "orders_returns.csv", ORDERS.columns, returns),
        "order_items_returns.csv": _write(out / "order_items_returns.csv", ORDER_ITEMS.columns,
                                          item_returns),
    }
