"""Upkeep of the files path on LocalStack S3/SNS, real Delta tables and a real redis-server:
compaction, vacuum and checkpoints; records that expire; the sweeper of stuck executions."""
import json
import random
import time
from dataclasses import replace
from urllib.parse import unquote

import pytest

from app import aws
from app.files import kpis, maintenance
from app.files.contract import FILE_TYPES, ORDER_ITEMS, ORDERS, PRODUCTS
from app.files.execution import FileEvent, Files, new_execution_id
from app.store import EXECUTIONS_KEY, RUNNING_EXECUTIONS_KEY, execution_key
from conftest import Notifications, table_objects
from files_oracle import by_key, csv_of, expected_kpis, make_rows

RANGE = ("2024-01-01", "2024-01-31")
SWEEP = "files.sweep"


def run(files: Files, name: str, data: bytes) -> dict:
    """One execution over one uploaded file, its steps in this process."""
    key = f"input/{name}"
    files.s3.put_object(Bucket=files.settings.files_bucket, Key=key, Body=data)
    execution_id = new_execution_id()
    files.start(execution_id, [FileEvent(key)])
    files.stage(execution_id, key)
    files.compute_kpis(execution_id)
    record = files.finish(execution_id)
    assert record["status"] == "succeeded", record
    return record


def served(files: Files):
    return ([kpis.order_kpi_answer(kpis.OrderKpi(**r)) for r in files.store.order_kpis(*RANGE)],
            [kpis.category_kpi_answer(kpis.CategoryKpi(**r))
             for r in files.store.category_kpis(*RANGE)])


def recomputed(files: Files):
    """Every date's KPIs computed again from the tables as they are now."""
    versions = files.staging.versions()
    orders, items, products = (files.staging.scan(t, versions[t.name])
                               for t in (ORDERS, ORDER_ITEMS, PRODUCTS))
    order_kpis, category_kpis = kpis.compute_frames(orders, items, products)
    return ([kpis.order_kpi_answer(k) for k in order_kpis],
            [kpis.category_kpi_answer(k) for k in category_kpis])


def active_files(files: Files) -> dict[str, int]:
    """Data files of each table's current version."""
    return {t.name: len(files.staging.table(t).file_uris()) for t in FILE_TYPES}


def stored_files(files: Files, file_type) -> set[str]:
    """Data files of a table in the bucket, whatever version refers to them (not the log, nor
    the change data files)."""
    return {key for key in table_objects(files.settings, file_type, "")
            if "/_delta_log/" not in key and "/_change_data/" not in key}


def chunks(rows: list, count: int) -> list[list]:
    return [rows[i::count] for i in range(count)]


def orders_then_returns(files: Files, seed: int, returned: int) -> list[dict]:
    """30 orders staged by three executions, then the first `returned` of them returned by a
    fourth; the orders."""
    _, orders, _ = make_rows(random.Random(seed), orders=30)
    for n, part in enumerate(chunks(orders, 3)):
        run(files, f"orders_{n}.csv", csv_of(ORDERS, part))
    run(files, "orders_returns.csv", csv_of(ORDERS, [{**o, "status": "returned"}
                                                     for o in orders[:returned]]))
    return orders


@pytest.mark.slow
def test_maintain_after_50_executions_leaves_the_tables_readable_with_fewer_files_and_the_kpis(
        files_settings):
    files = Files(files_settings)
    rng = random.Random(50)
    products, orders, items = make_rows(rng, orders=120)
    returned = [{**o, "status": "returned"} for o in rng.sample(orders, 20)]
    moved = [{**p, "category": "Moved"} for p in products[:4]]
    # 50 executions of one file each: the tables' rows arrive in pieces, and some rows are
    # updated (returns, products moving to another category), as exports every few minutes.
    uploads = ([(f"products_{n}.csv", PRODUCTS, part) for n, part in enumerate(chunks(products, 4))]
               + [(f"orders_{n}.csv", ORDERS, part) for n, part in enumerate(chunks(orders, 20))]
               + [(f"order_items_{n}.csv", ORDER_ITEMS, part)
                  for n, part in enumerate(chunks(items, 20))]
               + [(f"orders_returns_{n}.csv", ORDERS, part)
                  for n, part in enumerate(chunks(returned, 4))]
               + [("products_moved.csv", PRODUCTS, moved)]
               + [("orders_again.csv", ORDERS, orders[:10])])
    assert len(uploads) == 50
    for name, file_type, rows in uploads:
        run(files, name, csv_of(file_type, rows))
    # Each table's rows in upload order: the last upload of a key wins.
    final = {t: by_key(t, [r for _, file_type, rows in uploads if file_type is t for r in rows])
             for t in (PRODUCTS, ORDERS, ORDER_ITEMS)}
    expected = expected_kpis(final[PRODUCTS], final[ORDERS], final[ORDER_ITEMS])
    assert served(files) == expected
    before = active_files(files)
    pinned = files.staging.versions()

    report = maintenance.maintain(files.staging, files_settings.files_vacuum_retention_hours,
                                  s3=files.s3, watermarks=files.store.kpi_watermarks())

    after = active_files(files)
    assert {name: (r["files_before"], r["files"]) for name, r in report.items()} == {
        name: (before[name], after[name]) for name in before}
    assert all(after[name] < before[name] for name in before), (before, after)
    for file_type in FILE_TYPES:
        log = f"{aws.STAGING}{file_type.table}/_delta_log/"
        assert aws.get_bytes(files.s3, files_settings.files_bucket,
                             log + "_last_checkpoint") is not None
        # Within the retention nothing is vacuumed: a reader pinned before still reads.
        assert report[file_type.name]["vacuumed"] == 0
        assert report[file_type.name]["change_data_removed"] == 0
        assert files.staging.scan(file_type, pinned[file_type.name]).collect().height > 0
    assert files.staging.scan(ORDERS, files.staging.table(ORDERS).version()).collect().height \
        == len(orders)
    assert served(files) == expected
    assert recomputed(files) == expected

    # Executions go on over the compacted tables.
    more_returns = [{**o, "status": "returned"} for o in orders[-5:]]
    run(files, "orders_more_returns.csv", csv_of(ORDERS, more_returns))
    expected = expected_kpis(final[PRODUCTS], final[ORDERS] | by_key(ORDERS, more_returns),
                             final[ORDER_ITEMS])
    assert served(files) == recomputed(files) == expected


def test_a_vacuum_past_the_retention_deletes_the_files_no_version_needs(files_settings):
    files = Files(files_settings)
    orders = orders_then_returns(files, seed=8, returned=5)
    stored = stored_files(files, ORDERS)
    expected = served(files)

    # Retention 0 (settings refuse it; the function takes what it is given).
    report = maintenance.maintain(files.staging, retention_hours=0)[ORDERS.name]

    left = stored_files(files, ORDERS)
    assert report["vacuumed"] == len(stored) - len(left) > 0
    assert len(left) == report["files"] == len(files.staging.table(ORDERS).file_uris())
    rows = files.staging.scan(ORDERS, files.staging.table(ORDERS).version()).collect()
    assert sorted(rows.get_column("order_id")) == sorted(o["order_id"] for o in orders)
    assert served(files) == recomputed(files) == expected
    # The next execution reads the changes since the KPIs' watermarks over the vacuumed table.
    run(files, "orders_late.csv", csv_of(ORDERS, [{**orders[-1], "status": "returned"}]))
    assert served(files) == recomputed(files) != expected


def test_an_execution_record_expires_after_the_record_days(files_settings):
    settings = replace(files_settings, files_execution_record_days=3)
    files = Files(settings)
    _, orders, _ = make_rows(random.Random(1), orders=3)
    record = run(files, "orders.csv", csv_of(ORDERS, orders))
    ttl = files.store.redis.ttl(execution_key(record["execution_id"]))
    assert 3 * 86400 - 60 < ttl <= 3 * 86400
    # The list of executions forgets those whose records have expired.
    old = {**record, "execution_id": "20200101T000000Z-old", "started_at_ms": 1_577_836_800_000}
    files.store.redis.zadd(EXECUTIONS_KEY, {old["execution_id"]: old["started_at_ms"]})
    run(files, "orders_again.csv", csv_of(ORDERS, orders))
    assert old["execution_id"] not in files.store.redis.zrange(EXECUTIONS_KEY, 0, -1)
    assert len(files.store.executions()) == 2


def test_the_sweeper_fails_and_announces_an_execution_that_outlived_the_timeout(
        files_settings):
    settings = replace(files_settings, files_execution_timeout=120)
    files = Files(settings)
    notes = Notifications(settings)
    stale, fresh, done = (new_execution_id() for _ in range(3))
    for execution_id in (stale, fresh, done):
        files.start(execution_id, [FileEvent(f"input/orders_{execution_id}.csv")])
    now_ms = int(time.time() * 1000)
    for execution_id in (stale, done):
        # As started 121 s ago, one second past the timeout.
        record = {**files.store.execution(execution_id), "started_at_ms": now_ms - 121_000}
        files.store.save_execution(record)
    files.store.save_execution({**files.store.execution(done), "status": "succeeded"})
    assert set(files.store.redis.zrange(RUNNING_EXECUTIONS_KEY, 0, -1)) == {stale, fresh}

    assert maintenance.sweep(files, SWEEP, now_ms) == [stale]

    record = files.store.execution(stale)
    assert record["status"] == "failed" and record["failure"]["task"] == SWEEP
    assert "FILES_EXECUTION_TIMEOUT (120 s)" in record["failure"]["error"]
    [(topic, message)] = notes.wait(1)
    assert topic == settings.files_failure_topic
    assert (message["execution_id"], message["files"]) == (stale, [f"input/orders_{stale}.csv"])
    assert [files.store.execution(i)["status"] for i in (fresh, done)] == ["running",
                                                                           "succeeded"]
    assert files.store.redis.zrange(RUNNING_EXECUTIONS_KEY, 0, -1) == [fresh]
    # Swept once: a second sweep finds nothing more to fail or to announce.
    assert maintenance.sweep(files, SWEEP, now_ms) == []
    assert len(notes.poll()) == 1


def change_data_named(files: Files, file_type, versions: range) -> set[str]:
    """The change data files the commits of these versions name (their "cdc" actions)."""
    table_key = f"{aws.STAGING}{file_type.table}/"
    named = set()
    for version in versions:
        entry = aws.get_bytes(files.s3, files.settings.files_bucket,
                              f"{table_key}_delta_log/{version:020d}.json")
        for line in entry.decode().splitlines():
            action = json.loads(line)
            if "cdc" in action:
                named.add(table_key + unquote(action["cdc"]["path"]))
    return named


def test_maintain_removes_the_change_data_files_no_kpi_step_or_reader_needs(files_settings):
    files = Files(files_settings)
    _, orders, _ = make_rows(random.Random(20), orders=40)
    for n, part in enumerate(chunks(orders, 4)):
        run(files, f"orders_{n}.csv", csv_of(ORDERS, part))
    # Updates of rows already staged: each merge writes their before and after images.
    for n, part in enumerate(chunks(orders[:12], 3)):
        run(files, f"orders_returns_{n}.csv", csv_of(ORDERS, [{**o, "status": "returned"}
                                                              for o in part]))
    current = files.staging.table(ORDERS).version()
    written = table_objects(files.settings, ORDERS, "_change_data/")
    assert written and set(written) == change_data_named(files, ORDERS, range(current + 1))
    assert files.store.kpi_watermarks()[ORDERS.name] == current
    # A KPI step that last saw version `lagging` reads the changes after it: their files stay.
    lagging = current - 2
    needed = change_data_named(files, ORDERS, range(lagging + 1, current + 1))
    assert needed and needed < set(written)
    expected_changes = files.staging.changes(ORDERS, lagging + 1, current, ["order_id"])

    report = maintenance.maintain(files.staging, retention_hours=0, s3=files.s3,
                                  watermarks={ORDERS.name: lagging})[ORDERS.name]

    left = table_objects(files.settings, ORDERS, "_change_data/")
    assert set(left) == needed
    assert report["change_data_removed"] == len(written) - len(needed)
    changes = files.staging.changes(ORDERS, lagging + 1, current, ["order_id"])
    assert sorted(changes.rows()) == sorted(expected_changes.rows())
    # The next execution reads the changes since the stored watermarks: KPIs stay exact.
    run(files, "orders_late.csv", csv_of(ORDERS, [{**orders[-1], "status": "returned"}]))
    assert served(files) == recomputed(files)


def test_maintain_drops_expired_log_entries_but_not_those_a_kpi_step_still_reads(
        files_settings):
    files = Files(files_settings)
    orders = orders_then_returns(files, seed=30, returned=6)
    table = files.staging.table(ORDERS)
    # Every log entry expires a second after its commit.
    table.alter.set_table_properties({"delta.logRetentionDuration": "interval 1 second"})
    current = files.staging.table(ORDERS).version()
    lagging = current - 3
    expected_changes = files.staging.changes(ORDERS, lagging + 1, current, ["order_id"])
    entries = len([k for k in table_objects(files.settings, ORDERS, "_delta_log/")
                   if k.endswith(".json")])
    time.sleep(1.5)

    # A KPI step still has to read the changes after `lagging`: their log entries stay.
    report = maintenance.maintain(files.staging, retention_hours=0, s3=files.s3,
                                  watermarks={ORDERS.name: lagging})[ORDERS.name]

    assert report["log_entries_removed"] == 0 and report["log_cleanup"].startswith("skipped")
    changes = files.staging.changes(ORDERS, lagging + 1, current, ["order_id"])
    assert changes is not None and sorted(changes.rows()) == sorted(expected_changes.rows())

    # Once the KPIs caught up, the entries before the checkpoint go (by maintain only:
    # delta-rs's writers no longer drop them after their commits).
    run(files, "orders_late.csv", csv_of(ORDERS, [{**orders[-1], "status": "returned"}]))
    time.sleep(1.5)
    logged = {k for k in table_objects(files.settings, ORDERS, "_delta_log/")
              if k.endswith(".json")}
    assert len(logged) == entries + files.staging.table(ORDERS).version() - current
    report = maintenance.maintain(files.staging, retention_hours=0, s3=files.s3,
                                  watermarks=files.store.kpi_watermarks())[ORDERS.name]
    left = table_objects(files.settings, ORDERS, "_delta_log/")
    kept = {k for k in left if k.endswith(".json")}
    assert report["log_entries_removed"] == len(logged - kept) > 0
    assert report["log_entries"] == len(kept)
    assert min(int(k.rsplit("/", 1)[1][:20]) for k in kept) > lagging
    rows = files.staging.scan(ORDERS, files.staging.table(ORDERS).version()).collect()
    assert sorted(rows.get_column("order_id")) == sorted(o["order_id"] for o in orders)
    run(files, "orders_later.csv", csv_of(ORDERS, [{**orders[-2], "status": "returned"}]))
    assert served(files) == recomputed(files)
