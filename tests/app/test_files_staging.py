"""Delta tables on LocalStack's S3: upserts by key, reads pinned to a version, what changed."""
import logging
import math
from dataclasses import replace

import polars as pl
import pytest
from deltalake import write_deltalake

from app import aws
from app.files.cleaning import clean, read_csv
from app.files.contract import ORDER_ITEMS, ORDERS, PRODUCTS
from app.files.kpis import Snapshot, changed_dates
from app.files.staging import CHANGE_DATA_FEED, Staging
from conftest import table_objects

HEADER = ",".join(ORDERS.columns)


def orders(*rows: tuple[str, str, str]):
    """A cleaned orders frame of (order_id, user_id, created_at) rows."""
    lines = [HEADER] + [f"{oid},{user},complete,{created},,,,1" for oid, user, created in rows]
    return clean(read_csv("\n".join(lines).encode(), ORDERS), ORDERS).frame


def staging_of(settings) -> Staging:
    return Staging(f"s3://{settings.files_bucket}/{aws.STAGING}",
                   aws.delta_storage_options(settings))


def test_an_upsert_updates_by_key_and_an_old_version_still_reads_as_it_was(files_settings):
    staging = staging_of(files_settings)
    assert staging.versions() == {"products": None, "order_items": None, "orders": None}
    assert staging.scan(ORDERS, None).collect().is_empty()

    first = orders(("O1", "U1", "2024-01-05T10:00:00Z"), ("O2", "U2", "2024-01-06T10:00:00Z"))
    staging.upsert(ORDERS, first)
    version = staging.versions()["orders"]
    moved = orders(("O2", "U9", "2024-01-20T10:00:00Z"), ("O3", "U3", "2024-01-21T10:00:00Z"))
    metrics = staging.upsert(ORDERS, moved)
    # O2 changes its date: both its old and its new date need their KPIs again.
    snapshot = Snapshot(staging.versions())
    assert changed_dates(staging, snapshot, {"orders": version}) == [
        "2024-01-06", "2024-01-20", "2024-01-21"]

    assert (metrics["num_target_rows_updated"], metrics["num_target_rows_inserted"]) == (1, 1)
    users = dict(staging.scan(ORDERS, staging.versions()["orders"]).collect()
                 .select("order_id", "user_id").iter_rows())
    assert users == {"O1": "U1", "O2": "U9", "O3": "U3"}
    pinned = dict(staging.scan(ORDERS, version).collect().select("order_id", "user_id")
                  .iter_rows())
    assert pinned == {"O1": "U1", "O2": "U2"}


def test_the_same_rows_again_commit_nothing(files_settings):
    staging = staging_of(files_settings)
    rows = orders(("O1", "U1", "2024-01-05T10:00:00Z"))
    staging.upsert(ORDERS, rows)
    before = staging.versions()
    metrics = staging.upsert(ORDERS, rows)
    assert metrics["num_target_rows_updated"] == metrics["num_target_rows_inserted"] == 0
    assert staging.versions() == before
    assert staging.versions()[PRODUCTS.name] is None


def test_a_large_file_is_merged_in_batches_one_commit_each_and_the_last_duplicate_wins(
        files_settings):
    staging = replace(staging_of(files_settings), batch_rows=3)
    rows = [(f"O{n}", f"U{n}", f"2024-01-{1 + n % 28:02d}T10:00:00Z") for n in range(8)]
    # O1 again at the end, in another batch than its first row: the file's last row wins.
    rows.append(("O1", "U-last", "2024-01-30T10:00:00Z"))
    frame = orders(*rows)
    assert frame.height == 8  # cleaning kept the last O1 only

    metrics = staging.upsert(ORDERS, frame)
    assert staging.versions()["orders"] == math.ceil(8 / 3)  # version 0 is the creation
    assert metrics["num_target_rows_inserted"] == 8
    users = dict(staging.scan(ORDERS, staging.versions()["orders"]).collect()
                 .select("order_id", "user_id").iter_rows())
    assert users == {**{f"O{n}": f"U{n}" for n in range(8)}, "O1": "U-last"}
    # Every batch's commit recorded its changes: all dates, from the creation on.
    assert changed_dates(staging, Snapshot(staging.versions()), {}) == sorted(
        {created[:10] for oid, _, created in rows if (oid, created[:10]) != ("O1", "2024-01-02")})


def test_a_retry_after_some_batches_committed_merges_the_rest_only(files_settings):
    staging = replace(staging_of(files_settings), batch_rows=2)
    frame = orders(*[(f"O{n}", f"U{n}", f"2024-01-{1 + n:02d}T10:00:00Z") for n in range(5)])
    staging.upsert(ORDERS, frame.head(2))  # the first try's first batch, then it died
    before = staging.versions()["orders"]

    metrics = staging.upsert(ORDERS, frame)
    assert metrics["num_target_rows_inserted"] == 3
    assert metrics["num_target_rows_updated"] == 0
    # The first batch changes nothing: no commit for it, one for each of the other two.
    assert staging.versions()["orders"] == before + 2
    assert staging.scan(ORDERS, before + 2).collect().select(frame.columns).sort(
        "order_id").equals(frame.sort("order_id"))


def test_an_older_upload_of_a_key_never_overwrites_rows_a_newer_one_wrote(files_settings):
    staging = staging_of(files_settings)
    # A table staged before rows named their upload: its rows have none.
    write_deltalake(staging.uri(ORDERS), orders(("O0", "U-old", "2024-01-01T10:00:00Z")),
                    partition_by=list(ORDERS.partition_by), configuration=CHANGE_DATA_FEED,
                    storage_options=staging.storage_options)

    def upload(order: str, *rows, key: str = "input/orders.csv") -> None:
        staging.upsert(ORDERS, orders(*rows), key, order)

    day = "2024-01-02T10:00:00Z"
    upload("01", ("O0", "U1", day), ("O1", "U1", day), ("O3", "U1", day))
    upload("03", ("O1", "U3", day))  # the newest upload
    before = staging.versions()["orders"]
    upload("03", ("O1", "U3", day))  # its retry, or the same values again: no commit
    assert staging.versions()["orders"] == before
    # Arrives last, ordered between the two.
    upload("02", ("O1", "U2", day), ("O2", "U2", day), ("O3", "U2", day))
    users = dict(staging.scan(ORDERS, staging.versions()["orders"]).collect()
                 .select("order_id", "user_id").iter_rows())
    # As applied in upload order 01, 02, 03: O1 is the newest's, O2 and O3 the one between's.
    assert users == {"O0": "U1", "O1": "U3", "O2": "U2", "O3": "U2"}

    # Uploads of another key are not ordered against it: the last merged wins.
    upload("00", ("O1", "U-other", day), key="input/orders_other.csv")
    assert dict(staging.scan(ORDERS, staging.versions()["orders"]).collect()
                .select("order_id", "user_id").iter_rows())["O1"] == "U-other"


def test_a_newer_upload_of_equal_values_still_wins_over_an_older_one_merged_last(
        files_settings):
    staging = staging_of(files_settings)

    def upload(order: str, *rows) -> dict:
        return staging.upsert(ORDERS, orders(*rows), "input/orders.csv", order)

    day = "2024-01-02T10:00:00Z"
    x = [("O1", "U-x", day), ("O2", "U-x", day)]
    upload("01", *x)
    # X' (upload 03) has X's values; Y (upload 02, between them) is merged last.
    again = upload("03", *x)
    assert again["num_target_rows_updated"] == again["num_target_rows_inserted"] == 0
    before = staging.versions()["orders"]
    assert upload("03", *x)["num_target_rows_updated"] == 0  # its retry: no commit
    assert staging.versions()["orders"] == before
    upload("02", ("O1", "U-y", day), ("O2", "U-y", day), ("O3", "U-y", day))

    # As applied in upload order 01, 02, 03: X' wins where it has rows, Y adds O3.
    frame = staging.scan(ORDERS, staging.versions()["orders"]).collect()
    assert dict(frame.select("order_id", "user_id").iter_rows()) == {
        "O1": "U-x", "O2": "U-x", "O3": "U-y"}
    assert dict(frame.select("order_id", "upload_order").iter_rows()) == {
        "O1": "03", "O2": "03", "O3": "02"}


def cleaned(file_type, *lines: str):
    """A cleaned frame of a file_type's CSV lines."""
    text = "\n".join([",".join(file_type.columns), *lines])
    return clean(read_csv(text.encode(), file_type), file_type).frame


def test_changed_items_and_products_give_the_dates_of_their_staged_orders(files_settings):
    staging = staging_of(files_settings)
    staging.upsert(ORDERS, orders(("O1", "U1", "2024-01-05T10:00:00Z"),
                                  ("O2", "U2", "2024-01-06T10:00:00Z"),
                                  ("O3", "U3", "2024-01-07T10:00:00Z")))

    def items(*rows: tuple[str, str, str]):
        return cleaned(ORDER_ITEMS, *(f"{i},{o},U1,{p},complete,2024-01-05T10:00:00Z,,,,9.50"
                                      for i, o, p in rows))

    def products(*rows: tuple[str, str]):
        return cleaned(PRODUCTS, *(f"{p},SKU{p},1.00,{c},Name,Brand,2.00,Men" for p, c in rows))

    staging.upsert(ORDER_ITEMS, items(("I1", "O1", "P1"), ("I2", "O2", "P2")))
    staging.upsert(PRODUCTS, products(("P1", "Jeans"), ("P2", "Tops")))
    # A first load: every staged date, from the orders' changes alone.
    assert changed_dates(staging, Snapshot(staging.versions()), {}) == [
        "2024-01-05", "2024-01-06", "2024-01-07"]

    loaded = staging.versions()
    staging.upsert(ORDER_ITEMS, items(("I1", "O3", "P1")))  # moved from O1 to O3
    staging.upsert(PRODUCTS, products(("P2", "Swim")))  # P2's items are O2's
    assert changed_dates(staging, Snapshot(staging.versions()), loaded) == [
        "2024-01-05", "2024-01-06", "2024-01-07"]
    moved = staging.versions()
    staging.upsert(ORDERS, orders(("O1", "U9", "2024-01-05T10:00:00Z")))
    staging.upsert(PRODUCTS, products(("P2", "Jeans")))
    # O1's change does not cover every staged date: P2's are read too.
    assert changed_dates(staging, Snapshot(staging.versions()), moved) == [
        "2024-01-05", "2024-01-06"]


def _files_by_key_range(staging: Staging, file_type) -> pl.DataFrame:
    """The table's files: partition, least and greatest key (from the Delta file stats)."""
    actions = pl.DataFrame(staging.table(file_type).get_add_actions(flatten=True))
    return actions.select(pl.concat_str([pl.col(f"partition.{c}").cast(pl.String)
                                         for c in file_type.partition_by]).alias("partition"),
                          pl.col(f"min.{file_type.key}").alias("low"),
                          pl.col(f"max.{file_type.key}").alias("high"))


def test_a_file_of_new_keys_scans_only_the_table_files_its_key_range_meets(files_settings):
    batch_rows = 250
    staging = replace(staging_of(files_settings), batch_rows=batch_rows)
    months = 3
    # Ids are numbers written as text: in file order, any run of them spans, in text order,
    # nearly every key ("1" to "99" in the first 250).
    first = [HEADER] + [f"{n},U{n},complete,2024-{1 + n % months:02d}-05T10:00:00Z,,,,1"
                        for n in range(1, 2001)]
    staging.upsert(ORDERS, clean(read_csv("\n".join(first).encode(), ORDERS), ORDERS,
                                 batch_rows=batch_rows))
    files = _files_by_key_range(staging, ORDERS)
    # Each commit wrote one file per month of a range of keys that no other file meets.
    assert files.height == math.ceil(2000 / batch_rows) * months
    for _, same in files.sort("low").group_by("partition"):
        assert (same.get_column("high").head(-1) < same.get_column("low").tail(-1)).all()

    second = [HEADER] + [f"{n},U{n},complete,2024-01-07T10:00:00Z,,,,1"
                         for n in range(5001, 5101)]
    low, high = "5001", "5100"
    metrics = staging.upsert(ORDERS, clean(read_csv("\n".join(second).encode(), ORDERS),
                                           ORDERS, batch_rows=batch_rows))
    assert metrics["num_target_rows_inserted"] == 100
    met = files.filter((pl.col("low") <= high) & (pl.col("high") >= low)).height
    assert metrics["num_target_files_scanned"] == met
    assert metrics["num_target_files_skipped_during_scan"] == files.height - met
    # The keys "5001" to "5100" fall within one or two ranges of the first file's keys.
    assert met <= 2 * months


def test_keys_no_table_file_holds_are_written_once_and_read_as_inserts(files_settings):
    staging = replace(staging_of(files_settings), batch_rows=3)
    rows = [(f"O{n}", f"U{n}", f"2024-01-{1 + n:02d}T10:00:00Z") for n in range(7)]
    cleaned_rows = clean(read_csv("\n".join(
        [HEADER] + [f"{o},{u},complete,{c},,,,1" for o, u, c in rows]).encode(), ORDERS),
        ORDERS, batch_rows=3)

    metrics = staging.upsert(ORDERS, cleaned_rows)

    # A first load: every range of keys met no file, so no merge wrote them twice.
    assert metrics["num_target_rows_inserted"] == 7
    assert table_objects(files_settings, ORDERS, "_change_data/") == {}
    assert changed_dates(staging, Snapshot(staging.versions()), {}) == sorted(
        c[:10] for _, _, c in rows)
    changes = staging.changes(ORDERS, 1, staging.versions()["orders"],
                              ["order_id", "_change_type"])
    assert sorted(changes.rows()) == sorted((o, "insert") for o, _, _ in rows)

    # Keys the table holds are merged: the change of O2 and the new O9, with their images.
    version = staging.versions()["orders"]
    metrics = staging.upsert(ORDERS, orders(("O2", "U-moved", "2024-02-01T10:00:00Z"),
                                            ("O9", "U9", "2024-01-09T10:00:00Z")))
    assert (metrics["num_target_rows_updated"], metrics["num_target_rows_inserted"]) == (1, 1)
    assert table_objects(files_settings, ORDERS, "_change_data/")
    assert changed_dates(staging, Snapshot(staging.versions()), {"orders": version}) == [
        "2024-01-03", "2024-01-09", "2024-02-01"]


DAY = "2024-01-02T10:00:00Z"


@pytest.mark.parametrize("staged_before, newer, older", [
    # Both see no file holding their keys: both write, the older's write conflicts.
    ([], ["O1", "O2"], ["O2", "O3"]),
    # The newer merges (O1 is staged), the older writes (no file holds O2 or O3).
    (["O1"], ["O1", "O2"], ["O2", "O3"]),
    # The newer writes (no file holds O2 or O3), the older merges (O1 is staged).
    (["O1"], ["O2", "O3"], ["O1", "O3"]),
], ids=["write after a write", "write after a merge", "merge after a write"])
def test_a_commit_raced_by_another_of_its_keys_is_merged_after_it(
        files_settings, monkeypatch, caplog, staged_before, newer, older):
    staging = staging_of(files_settings)
    if staged_before:
        # Staged with the newer's values from another file: the newer's merge leaves them
        # (its commit only adds a file, as a write does).
        staging.upsert(ORDERS, orders(*[(k, "U-new", DAY) for k in staged_before]),
                       "input/earlier.csv", "00")
    real = Staging._create_if_missing
    raced = []

    def newer_commits_after_the_snapshot(self, file_type, frame):
        table = real(self, file_type, frame)
        if not raced:
            raced.append(True)
            # Another worker stages a newer upload of some of the same keys: it commits
            # after the older upload read the table, before the older commits.
            staging.upsert(ORDERS, orders(*[(k, "U-new", DAY) for k in newer]),
                           "input/orders.csv", "02")
        return table

    monkeypatch.setattr(Staging, "_create_if_missing", newer_commits_after_the_snapshot)
    caplog.set_level(logging.INFO, logger="app.files.staging")
    metrics = staging.upsert(ORDERS, orders(*[(k, "U-old", DAY) for k in older]),
                             "input/orders.csv", "01")

    # The older upload's commit conflicted with the newer one's, and the try after it
    # merged on the new version: each key once, the newer's rows stay.
    assert any("conflicted" in r.getMessage() for r in caplog.records)
    expected = {k: "U-new" for k in staged_before}
    expected.update({k: "U-old" for k in older if k not in newer})
    expected.update({k: "U-new" for k in newer})
    staged = staging.scan(ORDERS, staging.versions()["orders"]).collect()
    assert sorted(staged.select("order_id", "user_id").rows()) == sorted(expected.items())
    assert metrics["num_target_rows_updated"] == len(
        [k for k in older if k in staged_before and k not in newer])
    assert metrics["num_target_rows_inserted"] == len(
        [k for k in older if k not in staged_before and k not in newer])


def test_keys_with_quotes_and_backslashes_are_staged_as_they_are(files_settings):
    staging = staging_of(files_settings)
    # Quotes inside the range (written without a merge), then at its ends (merged).
    first = ["A1", "B'2", "C\\3", "D4"]
    staging.upsert(ORDERS, orders(*[(k, "U1", "2024-01-05T10:00:00Z") for k in first]))
    assert table_objects(files_settings, ORDERS, "_change_data/") == {}
    second = ["'E5' OR 'a'='a", "C\\3", "\\F6"]
    staging.upsert(ORDERS, orders(*[(k, "U2", "2024-01-05T10:00:00Z") for k in second]))
    staged = staging.scan(ORDERS, staging.versions()["orders"]).collect()
    assert sorted(staged.select("order_id", "user_id").rows()) == sorted(
        [(k, "U1") for k in first if k not in second] + [(k, "U2") for k in second])
