"""The files' contract: types by name prefix, required columns, keys and partitions."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass


@dataclass(frozen=True)
class FileType:
    """One kind of CSV export and the Delta table it is staged into."""

    name: str
    columns: tuple[str, ...]
    key: str
    partition_by: tuple[str, ...]

    @property
    def table(self) -> str:
        """The Delta table's folder under staging/."""
        return self.name


PRODUCTS = FileType("products", ("id", "sku", "cost", "category", "name", "brand",
                                 "retail_price", "department"), "id", ("department",))
ORDERS = FileType("orders", ("order_id", "user_id", "status", "created_at", "returned_at",
                             "shipped_at", "delivered_at", "num_of_item"),
                  "order_id", ("year", "month"))
ORDER_ITEMS = FileType("order_items", ("id", "order_id", "user_id", "product_id", "status",
                                       "created_at", "shipped_at", "delivered_at",
                                       "returned_at", "sale_price"), "id", ("year", "month"))
# Longest prefix first: "order_items..." also starts with "order".
FILE_TYPES = (PRODUCTS, ORDER_ITEMS, ORDERS)
BY_NAME = {t.name: t for t in FILE_TYPES}


def file_type_for(key: str) -> FileType | None:
    """The type of a file by its name's prefix (products*, order_items*, orders*), or None."""
    name = posixpath.basename(key)
    return next((t for t in FILE_TYPES if name.startswith(t.name)), None)
