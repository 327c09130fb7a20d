"""The KPIs' integer rounding (rates and averages half up, as exact decimals would round)
and their computation a bucket at a time."""
import random
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from app import aws
from app.files.contract import ORDER_ITEMS, ORDERS, PRODUCTS
from app.files.execution import FileEvent, Files, new_execution_id
from app.files.kpis import (BUCKET_SEED, CategoryKpi, OrderKpi, Snapshot, category_kpi_answer,
                            compute, compute_frames, order_kpi_answer, rate, ratio_cents,
                            table_rows)
from files_oracle import by_key, csv_of, expected_kpis, make_rows

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


# The KPIs' computation a bucket at a time (kpis.compute_frames with buckets > 1), against
# plain Python over the same rows.

DAYS = [datetime(2024, 1, 30, tzinfo=timezone.utc) + timedelta(days=n) for n in range(4)]


def plain_kpis(orders: list[dict], items: list[dict], products: list[dict],
               dates: list[str] | None = None):
    """Order and category KPIs in plain Python, as exact integers."""
    date_of = {o["order_id"]: o["created_at"].date().isoformat() for o in orders
               if dates is None or o["created_at"].date().isoformat() in dates}
    category_of = {p["id"]: p["category"] for p in products}
    days = defaultdict(lambda: {"orders": set(), "users": set(), "returned": 0, "cents": 0,
                                "items": 0})
    for order in orders:
        if order["order_id"] in date_of:
            day = days[date_of[order["order_id"]]]
            day["orders"].add(order["order_id"])
            day["returned"] += order["status"] == "returned"
            if order["user_id"] is not None:
                day["users"].add(order["user_id"])
    categories = defaultdict(lambda: {"cents": 0, "orders": set(), "items": 0, "returned": 0})
    for item in items:
        if item["order_id"] not in date_of:
            continue
        day = date_of[item["order_id"]]
        days[day]["cents"] += item["sale_price_cents"]
        days[day]["items"] += 1
        category = categories[(category_of.get(item["product_id"], "Unknown"), day)]
        category["cents"] += item["sale_price_cents"]
        category["orders"].add(item["order_id"])
        category["items"] += 1
        category["returned"] += item["status"] == "returned"
    return ([OrderKpi(d, len(v["orders"]), v["cents"], v["items"], len(v["users"]),
                      v["returned"]) for d, v in sorted(days.items())],
            [CategoryKpi(c, d, v["cents"], len(v["orders"]), v["items"], v["returned"])
             for (c, d), v in sorted(categories.items())])


def frames(orders: list[dict], items: list[dict], products: list[dict]):
    """The rows as the staged tables' columns that the KPIs read."""
    return (pl.LazyFrame(orders, schema={"order_id": pl.String, "user_id": pl.String,
                                         "status": pl.String,
                                         "created_at": pl.Datetime("us", "UTC")}),
            pl.LazyFrame(items, schema={"id": pl.String, "order_id": pl.String,
                                        "product_id": pl.String, "status": pl.String,
                                        "sale_price_cents": pl.Int64}),
            pl.LazyFrame(products, schema={"id": pl.String, "category": pl.String}))


def bucket_of(ids: list[str], buckets: int) -> dict[str, int]:
    """The bucket each id hashes to."""
    numbers = pl.Series(ids, dtype=pl.String).hash(BUCKET_SEED) % buckets
    return dict(zip(ids, numbers.to_list()))


def test_kpis_a_bucket_at_a_time_are_those_of_the_whole_tables():
    rng = random.Random(7)
    products = [{"id": f"P{n}", "category": rng.choice(["Jeans", "Tops", "Shoes"])}
                for n in range(10)]
    orders = [{"order_id": f"O{n}", "user_id": f"U{rng.randint(1, 15)}",
               "status": rng.choice(["complete", "returned"]),
               "created_at": rng.choice(DAYS) + timedelta(hours=rng.randint(0, 23))}
              for n in range(120)]
    orders[0]["user_id"] = None
    items = [{"id": f"I{n}", "order_id": rng.choice(orders)["order_id"],
              # P10 and P11 are not staged: "Unknown".
              "product_id": f"P{rng.randint(0, 11)}",
              "status": rng.choice(["complete", "returned"]),
              "sale_price_cents": rng.randint(1, 50_000)} for n in range(300)]
    # Items of orders that are not staged count nowhere.
    items += [{"id": "I-none", "order_id": "O-unstaged", "product_id": "P1",
               "status": "complete", "sale_price_cents": 700}]
    buckets = 6
    order_bucket = bucket_of([o["order_id"] for o in orders], buckets)
    per_user_day = defaultdict(set)
    for order in orders:
        per_user_day[order["user_id"], order["created_at"].date()].add(
            order_bucket[order["order_id"]])
    # Some customer has orders of one date in two buckets: summing each bucket's distinct
    # customers would count them twice.
    assert any(len(spread) > 1 for spread in per_user_day.values())

    computed = compute_frames(*frames(orders, items, products), buckets=buckets)

    assert computed == plain_kpis(orders, items, products)
    assert {k.category for k in computed[1]} >= {"Unknown"}
    one_date = [DAYS[1].date().isoformat()]
    assert (compute_frames(*frames(orders, items, products), one_date, buckets=buckets)
            == plain_kpis(orders, items, products, one_date))


order_ids = st.sampled_from([f"O{n}" for n in range(40)])


@st.composite
def tables(draw):
    """Orders (unique ids, some without a customer), items (some of no staged order, some
    of no staged product) and products."""
    products = [{"id": p, "category": draw(st.sampled_from(["A", "B", "Unknown"]))}
                for p in draw(st.lists(st.sampled_from(["P0", "P1", "P2", "P3"]), unique=True))]
    orders = [{"order_id": o, "user_id": draw(st.none() | st.sampled_from(["U1", "U2", "U3"])),
               "status": draw(st.sampled_from(["complete", "returned", "shipped"])),
               "created_at": draw(st.sampled_from(DAYS))
               + timedelta(minutes=draw(st.integers(0, 1439)))}
              for o in draw(st.lists(order_ids, unique=True, max_size=30))]
    items = [{"id": f"I{n}", "order_id": draw(order_ids),
              "product_id": draw(st.sampled_from(["P0", "P1", "P2", "P3", "P9"])),
              "status": draw(st.sampled_from(["complete", "returned"])),
              "sale_price_cents": draw(st.integers(1, 10 ** 6))}
             for n in range(draw(st.integers(0, 60)))]
    return orders, items, products


@settings(max_examples=60, deadline=None)
@given(rows=tables(), buckets=st.integers(1, 7),
       dates=st.none() | st.lists(st.sampled_from([d.date().isoformat() for d in DAYS]),
                                  unique=True))
def test_kpis_in_any_number_of_buckets_are_the_plain_computation(rows, buckets, dates):
    orders, items, products = rows
    assert compute_frames(*frames(orders, items, products), dates, buckets=buckets) == \
        plain_kpis(orders, items, products, dates)


# The same through the staged tables on LocalStack S3.

def run(files: Files, named: dict[str, bytes]) -> dict:
    """Upload the files and run one execution's steps over them in this process."""
    keys = []
    for name, data in named.items():
        files.s3.put_object(Bucket=files.settings.files_bucket, Key=f"input/{name}", Body=data)
        keys.append(f"input/{name}")
    execution_id = new_execution_id()
    files.start(execution_id, [FileEvent(key) for key in keys])
    for key in keys:
        files.stage(execution_id, key)
    files.compute_kpis(execution_id)
    record = files.finish(execution_id)
    assert record["status"] == "succeeded", record
    return record


def served(files: Files, first: str, last: str):
    return ([order_kpi_answer(OrderKpi(**r)) for r in files.store.order_kpis(first, last)],
            [category_kpi_answer(CategoryKpi(**r)) for r in files.store.category_kpis(first, last)])


def test_staged_tables_larger_than_a_bucket_give_the_kpis_of_an_independent_computation(
        files_settings):
    batch_rows = 20
    files = Files(replace(files_settings, files_merge_batch_rows=batch_rows))
    rng = random.Random(11)
    products, orders, items = make_rows(rng, orders=80)
    run(files, {"products.csv": csv_of(PRODUCTS, products), "orders.csv": csv_of(ORDERS, orders),
                "order_items.csv": csv_of(ORDER_ITEMS, items)})
    # Items moved to an order of another date, a product moved to another category.
    moved = [{**item, "order_id": rng.choice([o for o in orders
                                              if o["created_at"][:10] != item["created_at"][:10]
                                              ])["order_id"]}
             for item in rng.sample(items, 15)]
    recategorised = [{**products[0], "category": "Moved"}]
    run(files, {"order_items_moved.csv": csv_of(ORDER_ITEMS, moved),
                "products_moved.csv": csv_of(PRODUCTS, recategorised)})
    versions = files.staging.versions()
    rows = table_rows(files.staging, ORDER_ITEMS, versions[ORDER_ITEMS.name])

    assert rows == len(items) > 3 * batch_rows  # so the KPIs were computed in buckets
    assert served(files, "2024-01-01", "2024-01-31") == expected_kpis(
        by_key(PRODUCTS, products + recategorised), by_key(ORDERS, orders),
        by_key(ORDER_ITEMS, items + moved))


def test_kpis_of_some_dates_read_only_the_orders_of_their_months(files_settings):
    files = Files(files_settings)
    products, orders, items = make_rows(random.Random(13), orders=40)
    february = [{**o, "created_at": "2024-02" + o["created_at"][7:]} for o in orders[:10]]
    orders = orders[10:] + february
    run(files, {"products.csv": csv_of(PRODUCTS, products), "orders.csv": csv_of(ORDERS, orders),
                "order_items.csv": csv_of(ORDER_ITEMS, items)})
    snapshot = Snapshot(files.staging.versions())
    january = sorted({o["created_at"][:10] for o in orders if o["created_at"] < "2024-02"})
    expected = expected_kpis(by_key(PRODUCTS, products), by_key(ORDERS, orders[:-10]),
                             by_key(ORDER_ITEMS, items))
    # Every data file of February's orders gone: a read of them would fail.
    bucket = files.settings.files_bucket
    prefix = f"{aws.STAGING}{ORDERS.table}/year=2024/month=2/"
    listed = files.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    for entry in listed:
        files.s3.delete_object(Bucket=bucket, Key=entry["Key"])

    computed = compute(files.staging, snapshot, january)

    assert ([order_kpi_answer(k) for k in computed[0]],
            [category_kpi_answer(k) for k in computed[1]]) == expected
    with pytest.raises(FileNotFoundError):
        compute(files.staging, snapshot, ["2024-02-03"])
