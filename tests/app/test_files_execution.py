"""The execution steps without Celery, on LocalStack S3/SNS and a real redis-server."""
import json
import random
import threading
from dataclasses import replace

import pytest

from app import aws, sqs
from app.files import kpis
from app.files.contract import ORDER_ITEMS, ORDERS, PRODUCTS, file_type_for
from app.files.execution import FileEvent, Files, new_execution_id, parse_event
from app.files.sample import write_sample
from app.store import FilesStore
from files_oracle import by_key, csv_of, eager_cleaning, expected_kpis, make_rows

RANGE = ("2024-01-01", "2024-01-31")


def upload(files: Files, named: dict[str, bytes]) -> list[str]:
    keys = []
    for name, data in named.items():
        files.s3.put_object(Bucket=files.settings.files_bucket, Key=f"input/{name}", Body=data)
        keys.append(f"input/{name}")
    return keys


def run(files: Files, keys: list[str]) -> dict:
    """The canvas's steps in order, in this process."""
    execution_id = new_execution_id()
    files.start(execution_id, [FileEvent(key) for key in keys])
    for key in keys:
        files.stage(execution_id, key)
    files.compute_kpis(execution_id)
    return files.finish(execution_id)


def served(store: FilesStore):
    return ([kpis.order_kpi_answer(kpis.OrderKpi(**row)) for row in store.order_kpis(*RANGE)],
            [kpis.category_kpi_answer(kpis.CategoryKpi(**row))
             for row in store.category_kpis(*RANGE)])


def keys_in(files: Files, prefix: str) -> set[str]:
    listed = files.s3.list_objects_v2(Bucket=files.settings.files_bucket, Prefix=prefix)
    return {o["Key"] for o in listed.get("Contents", [])}


def test_kpis_of_staged_files_match_an_independent_computation(files_settings):
    files = Files(files_settings)
    products, orders, items = make_rows(random.Random(3), orders=60)
    keys = upload(files, {"products.csv": csv_of(PRODUCTS, products),
                          "orders_part1.csv": csv_of(ORDERS, orders),
                          "order_items_part1.csv": csv_of(ORDER_ITEMS, items)})
    record = run(files, keys)

    assert served(files.store) == expected_kpis(by_key(PRODUCTS, products),
                                                by_key(ORDERS, orders), by_key(ORDER_ITEMS, items))
    assert record["status"] == "succeeded"
    assert record["rows_kept"] == len(products) + len(orders) + len(items)
    assert record["dates"] == sorted({o["created_at"][:10] for o in orders})
    assert keys_in(files, "archive/") == {k.replace("input/", "archive/") for k in keys}
    assert keys_in(files, "input/") == set()
    assert aws.get_bytes(files.s3, files_settings.files_bucket,
                         f"results/{record['execution_id']}.json") is not None


def test_an_update_file_moves_the_return_rate_and_counts_nothing_twice(files_settings):
    files = Files(files_settings)
    rng = random.Random(5)
    products, orders, items = make_rows(rng, orders=40)
    run(files, upload(files, {"products.csv": csv_of(PRODUCTS, products),
                              "orders.csv": csv_of(ORDERS, orders),
                              "order_items.csv": csv_of(ORDER_ITEMS, items)}))
    returned = rng.sample(orders, 10)
    order_updates = [{**o, "status": "Returned"} for o in returned]
    item_updates = [{**i, "status": "returned"} for i in items
                    if i["order_id"] in {o["order_id"] for o in returned}]
    before_orders = served(files.store)[0]
    run(files, upload(files, {"orders_update.csv": csv_of(ORDERS, order_updates),
                              "order_items_update.csv": csv_of(ORDER_ITEMS, item_updates)}))

    final_orders = by_key(ORDERS, orders) | {o["order_id"]: {**o, "status": "returned"}
                                             for o in order_updates}
    expected = expected_kpis(by_key(PRODUCTS, products), final_orders,
                             by_key(ORDER_ITEMS, items + item_updates))
    after = served(files.store)
    assert after == expected
    assert [d["total_orders"] for d in after[0]] == [d["total_orders"] for d in before_orders]
    assert any(a["return_rate"] > b["return_rate"] for a, b in zip(after[0], before_orders))


def test_reuploading_a_file_changes_nothing(files_settings):
    files = Files(files_settings)
    products, orders, items = make_rows(random.Random(8), orders=30)
    contents = {"products.csv": csv_of(PRODUCTS, products), "orders.csv": csv_of(ORDERS, orders),
                "order_items.csv": csv_of(ORDER_ITEMS, items)}
    run(files, upload(files, contents))
    kpis_before, versions_before = served(files.store), files.staging.versions()
    record = run(files, upload(files, contents))

    assert served(files.store) == kpis_before
    assert files.staging.versions() == versions_before  # no commit at all
    assert [f["inserted"] + f["updated"] for f in record["files"]] == [0, 0, 0]


def test_an_invalid_file_is_rejected_with_its_reasons(files_settings):
    files = Files(files_settings)
    keys = upload(files, {"orders_bad.csv": b"order_id,user_id\nO1,U1\n",
                          "customers.csv": b"id\n1\n"})
    record = run(files, keys)
    assert {f["name"] for f in record["invalid_files"]} == {"orders_bad.csv", "customers.csv"}
    assert keys_in(files, "rejected/") == {"rejected/orders_bad.csv",
                                           "rejected/orders_bad.csv.reason.json",
                                           "rejected/customers.csv",
                                           "rejected/customers.csv.reason.json"}
    reason = aws.get_bytes(files.s3, files_settings.files_bucket,
                           "rejected/orders_bad.csv.reason.json").decode()
    assert "missing required column(s)" in reason and "num_of_item" in reason
    assert served(files.store) == ([], [])


def test_two_writers_staging_at_once_lose_no_commit(files_settings):
    """Concurrent merges into one table (conditional_put=etag): every row arrives."""
    staging = Files(files_settings).staging
    batches = []
    for writer in range(3):
        _, orders, _ = make_rows(random.Random(writer), orders=50, prefix=f"W{writer}-")
        batches.append(orders)
    from app.files.cleaning import clean, read_csv
    frames = [clean(read_csv(csv_of(ORDERS, b), ORDERS), ORDERS).frame for b in batches]
    errors = []

    def write(frame):
        try:
            Files(files_settings).staging.upsert(ORDERS, frame)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f,)) for f in frames]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    staged = staging.scan(ORDERS, staging.table(ORDERS).version()).collect()
    expected = sorted(o["order_id"] for batch in batches for o in batch)
    assert sorted(staged.get_column("order_id")) == expected


def test_kpis_from_an_older_snapshot_never_overwrite_newer_ones(store):
    files_store = FilesStore(store.redis)
    newer = kpis.OrderKpi("2024-01-02", 5, 500, 5, 5, 1)
    older = kpis.OrderKpi("2024-01-02", 3, 300, 3, 3, 0)
    assert files_store.write_kpis(7, ["2024-01-02"], [newer], []) == 1
    assert files_store.write_kpis(6, ["2024-01-02"], [older], []) == 0
    assert files_store.order_kpis("2024-01-01", "2024-01-03") == [
        {"order_date": "2024-01-02", "total_orders": 5, "total_revenue_cents": 500,
         "total_items_sold": 5, "unique_customers": 5, "returned_orders": 1}]
    # A date left without orders disappears.
    assert files_store.write_kpis(8, ["2024-01-02"], [], []) == 1
    assert files_store.order_kpis("2024-01-01", "2024-01-03") == []


def moved_rows(rng):
    """Rows, then updates moving a product to another category, an item to an order of
    another date and an order to a new date."""
    products, orders, items = make_rows(rng, orders=40)
    date_of = {o["order_id"]: o["created_at"][:10] for o in orders}
    sold = {i["product_id"] for i in items}
    product = next(p for p in products if p["id"] in sold)
    product_update = {**product, "category": next(c for c in ("Jeans", "Tops")
                                                   if c != product["category"])}
    item = items[0]
    other = next(o for o in orders if o["created_at"][:10] != date_of[item["order_id"]])
    item_update = {**item, "order_id": other["order_id"]}
    order = orders[-1]
    order_update = {**order, "created_at": "2024-01-09T08:00:00Z"}
    return (products, orders, items), ([product_update], [order_update], [item_update])


@pytest.mark.parametrize("fails_after", ["first stage", "every stage", "kpis"])
def test_a_retry_after_the_merge_leaves_the_kpis_of_a_recomputation(files_settings, fails_after):
    files = Files(files_settings)
    (products, orders, items), (product_updates, order_updates, item_updates) = moved_rows(
        random.Random(41))
    run(files, upload(files, {"products.csv": csv_of(PRODUCTS, products),
                              "orders.csv": csv_of(ORDERS, orders),
                              "order_items.csv": csv_of(ORDER_ITEMS, items)}))
    keys = upload(files, {"products_update.csv": csv_of(PRODUCTS, product_updates),
                          "orders_update.csv": csv_of(ORDERS, order_updates),
                          "order_items_update.csv": csv_of(ORDER_ITEMS, item_updates)})
    # The first try commits its merges, then fails: its events come back to a new execution.
    execution_id = new_execution_id()
    files.start(execution_id, [FileEvent(key) for key in keys])
    for key in keys[:1 if fails_after == "first stage" else None]:
        files.stage(execution_id, key)
    if fails_after == "kpis":
        files.compute_kpis(execution_id)
    run(files, keys)

    expected = expected_kpis(by_key(PRODUCTS, products + product_updates),
                             by_key(ORDERS, orders + order_updates),
                             by_key(ORDER_ITEMS, items + item_updates))
    assert served(files.store) == expected
    # The updates did move figures: a date appeared, and the category KPIs changed.
    before = expected_kpis(by_key(PRODUCTS, products), by_key(ORDERS, orders),
                           by_key(ORDER_ITEMS, items))
    assert "2024-01-09" in {k["order_date"] for k in expected[0]} - {
        k["order_date"] for k in before[0]}
    assert expected[1] != before[1]


def uploaded(files: Files, name: str, data: bytes) -> FileEvent:
    """Upload a file and return its S3 event, as the bucket's notification delivered it."""
    files.s3.put_object(Bucket=files.settings.files_bucket, Key=f"input/{name}", Body=data)
    client = sqs.client(files.settings)
    while True:
        response = client.receive_message(QueueUrl=files.settings.files_url,
                                          MaxNumberOfMessages=1, WaitTimeSeconds=10)
        [message] = response["Messages"]
        client.delete_message(QueueUrl=files.settings.files_url,
                              ReceiptHandle=message["ReceiptHandle"])
        parsed = parse_event(message["Body"], files.settings.files_bucket)
        if parsed.kind == "files":
            [event] = parsed.files
            assert event.version_id and event.sequencer
            return event


def staged_orders(files: Files) -> dict:
    frame = files.staging.scan(ORDERS, files.staging.versions()["orders"]).collect()
    return dict(frame.select("order_id", "status").iter_rows())


def read(files: Files, key: str) -> bytes | None:
    return aws.get_bytes(files.s3, files.settings.files_bucket, key)


def test_a_file_uploaded_again_during_its_execution_is_left_for_its_own_event(files_settings):
    files = Files(files_settings)
    _, orders, _ = make_rows(random.Random(50), orders=20)
    first, second = csv_of(ORDERS, orders), csv_of(ORDERS, [
        {**o, "status": "returned"} for o in orders] + [{**orders[0], "order_id": "O-new"}])
    event = uploaded(files, "orders.csv", first)
    execution_id = new_execution_id()
    files.start(execution_id, [event])
    files.stage(execution_id, event.key)
    again = uploaded(files, "orders.csv", second)  # while the first execution runs
    files.compute_kpis(execution_id)
    files.finish(execution_id)

    assert read(files, "archive/orders.csv") == first  # archived what it read
    assert read(files, "input/orders.csv") == second  # the new upload waits for its event
    execution_id = new_execution_id()
    files.start(execution_id, [again])
    files.stage(execution_id, again.key)
    files.compute_kpis(execution_id)
    record = files.finish(execution_id)

    assert record["valid_files"] == ["orders.csv"]
    assert read(files, "archive/orders.csv") == second
    assert keys_in(files, "input/") == set()
    assert staged_orders(files) == {**{o["order_id"]: "returned" for o in orders},
                                    "O-new": "complete"}
    assert served(files.store)[0] == expected_kpis(
        {}, by_key(ORDERS, orders + [{**o, "status": "returned"} for o in orders]
                   + [{**orders[0], "order_id": "O-new"}]), {})[0]


def stage_in_reverse(files: Files, older_rows: list[dict], newer_rows: list[dict]
                     ) -> tuple[str, str]:
    """Upload orders.csv twice, each upload in an execution of its own; the newer upload's
    execution stages first, the older one's after it. The two execution ids, older first."""
    older = uploaded(files, "orders.csv", csv_of(ORDERS, older_rows))
    newer = uploaded(files, "orders.csv", csv_of(ORDERS, newer_rows))
    first, second = new_execution_id(), new_execution_id()
    files.start(first, [older])
    files.start(second, [newer])
    files.stage(second, newer.key)
    files.stage(first, older.key)
    return first, second


def test_two_uploads_of_one_key_committing_in_reverse_order_leave_the_newer(files_settings):
    files = Files(files_settings)
    _, orders, _ = make_rows(random.Random(51), orders=20)
    newer_rows = [{**o, "status": "returned"} for o in orders]
    first, second = stage_in_reverse(files, orders, newer_rows)
    for execution_id in (second, first):
        files.compute_kpis(execution_id)
    records = [files.finish(second), files.finish(first)]

    assert staged_orders(files) == {o["order_id"]: "returned" for o in orders}
    assert served(files.store)[0] == expected_kpis({}, by_key(ORDERS, newer_rows), {})[0]
    assert [r["valid_files"] for r in records] == [["orders.csv"], []]
    assert [s["name"] for s in records[1]["skipped_files"]] == ["orders.csv"]
    assert read(files, "archive/orders.csv") == csv_of(ORDERS, newer_rows)
    assert keys_in(files, "input/") == set()


def test_a_file_above_files_max_bytes_is_rejected_with_its_size_and_the_rest_staged(
        files_settings):
    orders = csv_of(ORDERS, make_rows(random.Random(4), orders=20)[1])
    products = csv_of(PRODUCTS, make_rows(random.Random(4), orders=1)[0])
    files = Files(replace(files_settings, files_max_bytes=len(orders) - 1))
    assert len(products) < len(orders)
    record = run(files, upload(files, {"products.csv": products, "orders_big.csv": orders}))

    assert record["status"] == "succeeded"
    assert record["valid_files"] == ["products.csv"]
    assert record["invalid_files"] == [{"name": "orders_big.csv", "reasons": [
        f"too large: {len(orders):,} bytes, above FILES_MAX_BYTES ({len(orders) - 1:,})"]}]
    reason = json.loads(aws.get_bytes(files.s3, files_settings.files_bucket,
                                      "rejected/orders_big.csv.reason.json"))
    assert reason["reasons"] == record["invalid_files"][0]["reasons"]
    assert keys_in(files, "input/") == set()
    assert files.staging.versions()["orders"] is None  # nothing of it was staged


def test_staged_sample_files_report_the_rows_and_drops_of_the_eager_read(files_settings,
                                                                         tmp_path):
    files = Files(files_settings)
    written = write_sample(tmp_path, orders=1500, products=150, dirty_share=0.05, seed=3)
    names = ["products.csv", "orders_part1.csv", "order_items_part1.csv"]
    record = run(files, upload(files, {n: (tmp_path / n).read_bytes() for n in names}))

    for name in names:
        frame, rows_read, dropped = eager_cleaning((tmp_path / name).read_bytes(),
                                                   file_type_for(name))
        assert rows_read == written[name]
        assert record["rows_dropped"][name] == dropped
        [staged] = [f for f in record["files"] if f["name"] == name]
        assert (staged["rows_read"], staged["rows_kept"]) == (rows_read, frame.height)
        table = files.staging.scan(file_type_for(name), files.staging.versions()[
            file_type_for(name).name]).collect()
        # The table's rows also name their upload (upload_key, upload_order).
        assert table.select(frame.columns).sort(frame.columns).equals(
            frame.sort(frame.columns))


def test_files_merged_in_many_commits_and_a_retry_after_some_leave_exact_kpis(files_settings):
    files = Files(replace(files_settings, files_merge_batch_rows=7))
    products, orders, items = make_rows(random.Random(43), orders=40)
    named = {"products.csv": csv_of(PRODUCTS, products), "orders.csv": csv_of(ORDERS, orders),
             "order_items.csv": csv_of(ORDER_ITEMS, items)}
    keys = upload(files, named)
    # A first try committed the first batch of the items, then its worker died.
    from app.files.cleaning import clean, read_csv
    files.staging.upsert(ORDER_ITEMS, clean(read_csv(named["order_items.csv"], ORDER_ITEMS),
                                            ORDER_ITEMS).frame.head(7))
    record = run(files, keys)

    assert served(files.store) == expected_kpis(by_key(PRODUCTS, products),
                                                by_key(ORDERS, orders),
                                                by_key(ORDER_ITEMS, items))
    [staged_items] = [f for f in record["files"] if f["name"] == "order_items.csv"]
    assert staged_items["inserted"] == len(by_key(ORDER_ITEMS, items)) - 7
    assert files.staging.versions()["orders"] >= len(orders) // 7  # a commit per batch


def test_duplicates_of_a_key_in_different_batches_stage_its_last_kept_row_with_exact_counts(
        files_settings):
    files = Files(replace(files_settings, files_merge_batch_rows=3))
    products, orders, items = make_rows(random.Random(61), orders=12)
    # Orders again far apart (other batches, other parts of the keys): a later status wins,
    # a later row a rule drops wins nothing, and a row without its key counts once.
    again = ([{**o, "status": "returned"} for o in orders[::3]]
             + [{**o, "num_of_item": 0} for o in orders[1::3]] + [{**orders[0], "order_id": ""}]
             + [{**o, "status": "shipped"} for o in orders[::6]])
    rows = orders + again
    record = run(files, upload(files, {"products.csv": csv_of(PRODUCTS, products),
                                       "orders.csv": csv_of(ORDERS, rows),
                                       "order_items.csv": csv_of(ORDER_ITEMS, items)}))

    kept = [r for r in rows if r["order_id"] and r["num_of_item"] > 0]
    applied = by_key(ORDERS, kept)
    [staged] = [f for f in record["files"] if f["name"] == "orders.csv"]
    assert (staged["rows_read"], staged["rows_kept"]) == (len(rows), len(applied))
    assert {k: n for k, n in staged["dropped"].items() if n} == {
        "missing_key": 1, "num_of_item_not_positive": len(orders[1::3]),
        "duplicate_key": len(kept) - len(applied)}
    assert (staged["inserted"], staged["updated"]) == (len(applied), 0)
    assert staged_orders(files) == {k: o["status"] for k, o in applied.items()}
    assert served(files.store) == expected_kpis(by_key(PRODUCTS, products), applied,
                                                by_key(ORDER_ITEMS, items))

    # The same file with every order returned but its first duplicates: each key's last row
    # decides, updated where it differs from what is staged.
    returns = [{**r, "status": "returned"} for r in rows[:len(orders)]] + again
    record = run(files, upload(files, {"orders.csv": csv_of(ORDERS, returns)}))
    now = by_key(ORDERS, [r for r in returns if r["order_id"] and r["num_of_item"] > 0])
    [staged] = record["files"]
    assert (staged["inserted"], staged["updated"]) == (0, sum(
        now[k]["status"] != o["status"] for k, o in applied.items()))
    assert staged_orders(files) == {k: o["status"] for k, o in now.items()}


def test_an_older_upload_staged_after_a_newer_one_adds_the_rows_the_newer_left(files_settings):
    files = Files(files_settings)
    _, orders, _ = make_rows(random.Random(52), orders=20)
    older_rows = orders[:15]
    newer_rows = [{**o, "status": "returned"} for o in orders[:5]] + orders[15:]
    first, second = stage_in_reverse(files, older_rows, newer_rows)
    for execution_id in (second, first):
        files.compute_kpis(execution_id)
        files.finish(execution_id)

    # As if the older were applied, then the newer.
    applied = by_key(ORDERS, older_rows + newer_rows)
    assert staged_orders(files) == {k: o["status"] for k, o in applied.items()}
    assert served(files.store)[0] == expected_kpis({}, applied, {})[0]
    assert read(files, "archive/orders.csv") == csv_of(ORDERS, newer_rows)
    assert keys_in(files, "input/") == set()
