"""Sample files: as many rows as reported, the same files from the same seed, returns later."""
import csv

from app.files.contract import file_type_for
from app.files.sample import write_sample


def rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_each_file_has_the_rows_reported_under_its_types_header(tmp_path):
    written = write_sample(tmp_path, orders=300, products=40, seed=5)
    for name, count in written.items():
        with open(tmp_path / name, newline="", encoding="utf-8") as handle:
            header, *body = list(csv.reader(handle))
        assert tuple(header) == file_type_for(name).columns, name
        assert len(body) == count, name


def test_the_same_seed_writes_the_same_files_and_another_seed_others(tmp_path):
    for folder, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_sample(tmp_path / folder, orders=200, products=30, seed=seed)
    same = [(tmp_path / f / "orders_part1.csv").read_bytes() for f in "abc"]
    assert same[0] == same[1] != same[2]


def test_returns_are_earlier_orders_and_their_items_returned(tmp_path):
    count, share = 400, 0.25
    write_sample(tmp_path, orders=count, products=40, return_share=share, seed=3)
    orders = {r["order_id"] for r in rows(tmp_path / "orders_part1.csv")}
    returned = rows(tmp_path / "orders_returns.csv")
    assert len(returned) == int(count * share)
    assert {r["order_id"] for r in returned} <= orders
    assert {r["status"] for r in returned} == {"Returned"}
    assert all(r["returned_at"] for r in returned)
    item_orders = {r["order_id"] for r in rows(tmp_path / "order_items_returns.csv")}
    assert item_orders <= {r["order_id"] for r in returned}
