"""The files' contract: a file's type by its name, whatever folder it is in."""
import pytest

from app.files.contract import BY_NAME, FILE_TYPES, ORDER_ITEMS, ORDERS, PRODUCTS, file_type_for


@pytest.mark.parametrize("key, expected", [
    ("input/products.csv", PRODUCTS), ("input/2024/orders-01.csv", ORDERS),
    # order_items also starts with "order": the longer name wins.
    ("input/order_items_jan.csv", ORDER_ITEMS), ("orders.csv", ORDERS),
    ("input/users.csv", None), ("input/orders/readme.txt", None)])
def test_a_file_type_comes_from_the_name_not_the_folder(key, expected):
    assert file_type_for(key) is expected


def test_each_type_keys_and_partitions_by_its_own_columns_or_derived_dates():
    assert set(BY_NAME) == {t.name for t in FILE_TYPES} == {"products", "orders", "order_items"}
    for file_type in FILE_TYPES:
        assert file_type.key in file_type.columns
        assert set(file_type.partition_by) <= {*file_type.columns, "year", "month"}
