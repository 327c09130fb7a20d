"""Uploads -> S3 events on SQS -> real Celery workers -> Delta -> KPIs in Redis -> archive, SNS."""
import json
import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from app import aws, sqs
from app.files import kpis
from app.files.contract import ORDER_ITEMS, ORDERS, PRODUCTS
from app.store import KPI_SNAPSHOTS_KEY, FilesStore
from conftest import Notifications, wait_for
from files_oracle import by_key, csv_of, expected_kpis, make_rows
from tasks.celery import create_celery

RANGE = ("2024-01-01", "2024-01-31")


def upload(settings, named):
    s3 = aws.s3_client(settings)
    for name, data in named.items():
        s3.put_object(Bucket=settings.files_bucket, Key=f"input/{name}", Body=data)


def keys_in(settings, prefix):
    listed = aws.s3_client(settings).list_objects_v2(Bucket=settings.files_bucket, Prefix=prefix)
    return {o["Key"] for o in listed.get("Contents", [])}


def served(settings):
    store = FilesStore.from_url(settings.redis_url)
    return ([kpis.order_kpi_answer(kpis.OrderKpi(**r)) for r in store.order_kpis(*RANGE)],
            [kpis.category_kpi_answer(kpis.CategoryKpi(**r)) for r in store.category_kpis(*RANGE)])


def maps_polars(pid: int) -> bool:
    """Whether the process has polars' native library mapped (it imported polars)."""
    return "polars" in Path(f"/proc/{pid}/maps").read_text()


def drained(settings, name):
    return sqs.depth(settings, name) == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_uploaded_files_become_kpis_then_are_archived_and_announced(files_settings, start_worker):
    settings = files_settings
    notes = Notifications(settings)
    rng = random.Random(21)
    products, orders, items = make_rows(rng, orders=80)
    # The bucket's notification was configured by the fixture: an s3:TestEvent is queued.
    peek = sqs.client(settings).receive_message(QueueUrl=settings.files_url, WaitTimeSeconds=5,
                                                VisibilityTimeout=0)["Messages"]
    assert json.loads(peek[0]["Body"])["Event"] == "s3:TestEvent"
    worker = start_worker(settings=settings)
    upload(settings, {"products.csv": csv_of(PRODUCTS, products),
                      "orders_part1.csv": csv_of(ORDERS, orders),
                      "order_items_part1.csv": csv_of(ORDER_ITEMS, items),
                      "orders_broken.csv": b"order_id,status\nO1,complete\n"})

    [(topic, message)] = notes.wait(1)
    assert topic == settings.files_success_topic
    assert sorted(message["valid_files"]) == ["order_items_part1.csv", "orders_part1.csv",
                                              "products.csv"]
    assert [f["name"] for f in message["invalid_files"]] == ["orders_broken.csv"]
    assert message["rows_kept"] == len(products) + len(orders) + len(items)
    assert message["dates"] == sorted({o["created_at"][:10] for o in orders})
    assert served(settings) == expected_kpis(by_key(PRODUCTS, products), by_key(ORDERS, orders),
                                             by_key(ORDER_ITEMS, items))
    assert keys_in(settings, "archive/") == {"archive/products.csv", "archive/orders_part1.csv",
                                             "archive/order_items_part1.csv"}
    assert keys_in(settings, "rejected/") == {"rejected/orders_broken.csv",
                                              "rejected/orders_broken.csv.reason.json"}
    assert keys_in(settings, "input/") == set()
    assert keys_in(settings, "results/") == {f"results/{message['execution_id']}.json"}
    # polars loads in the pool processes that ran the steps, never in the main process that
    # forks them (a child forked after polars ran in its parent can deadlock).
    main = worker.process.pid
    assert not maps_polars(main)
    assert any(maps_polars(pid) for pid in worker.service.members() if pid != main)
    # Nothing in the worker's log for an operator to chase: no library warns of a
    # deprecation (Celery's own, for a chord's error callback, came with every execution).
    assert "DeprecationWarning" not in worker.log_path.read_text()

    # An update turning a third of the orders into returns moves their days' return rates.
    returned = rng.sample(orders, len(orders) // 3)
    updates = [{**o, "status": "returned"} for o in returned]
    upload(settings, {"orders_returns.csv": csv_of(ORDERS, updates)})
    (topic, second) = notes.wait(2)[1]
    assert topic == settings.files_success_topic and second["valid_files"] == ["orders_returns.csv"]
    expected = expected_kpis(by_key(PRODUCTS, products), by_key(ORDERS, orders + updates),
                             by_key(ORDER_ITEMS, items))
    assert served(settings) == expected
    assert sum(d["return_rate"] for d in expected[0]) > 0

    # The same update again: a new execution that changes nothing.
    upload(settings, {"orders_returns.csv": csv_of(ORDERS, updates)})
    (topic, third) = notes.wait(3)[2]
    assert topic == settings.files_success_topic and third["rows_kept"] == len(updates)
    record = FilesStore.from_url(settings.redis_url).execution(third["execution_id"])
    assert [(f["inserted"], f["updated"]) for f in record["files"]] == [(0, 0)]
    assert served(settings) == expected

    # Every event was deleted, the test event too: nothing left, nothing dead-lettered.
    wait_for(lambda: drained(settings, settings.files_queue), timeout=30,
             message="files queue to drain")
    assert sqs.depth(settings, settings.files_dlq)["visible"] == 0


@pytest.mark.slow
def test_a_failing_step_announces_failure_archives_nothing_and_dead_letters_the_event(
        files_settings, start_worker, store):
    settings = files_settings
    notes = Notifications(settings)
    # A real fault: the KPI script meets a key of the wrong type, at every try.
    store.redis.set(KPI_SNAPSHOTS_KEY, "not a hash")
    _, orders, _ = make_rows(random.Random(4), orders=10)
    start_worker(settings=settings)
    upload(settings, {"orders.csv": csv_of(ORDERS, orders)})

    wait_for(lambda: sqs.depth(settings, settings.files_dlq)["visible"] == 1, timeout=180,
             message="the file event in the DLQ")
    notes.poll()
    failures = [m for topic, m in notes.received if topic == settings.files_failure_topic]
    assert len(failures) == settings.max_receive_count  # one per try
    assert {f["step"] for f in failures} == {"KPIs"}
    assert all("WRONGTYPE" in f["error"] and f["files"] == ["input/orders.csv"] for f in failures)
    assert not [m for topic, m in notes.received if topic == settings.files_success_topic]
    assert keys_in(settings, "input/") == {"input/orders.csv"}
    assert keys_in(settings, "archive/") == set()
    dead = sqs.client(settings).receive_message(QueueUrl=settings.url_of(settings.files_dlq),
                                                MaxNumberOfMessages=1)["Messages"][0]
    assert json.loads(dead["Body"])["Records"][0]["s3"]["object"]["key"] == "input/orders.csv"


def test_a_file_above_files_max_bytes_is_rejected_and_announced_with_its_size(
        files_settings, start_worker):
    products, orders, _ = make_rows(random.Random(6), orders=30)
    small, large = csv_of(PRODUCTS, products), csv_of(ORDERS, orders)
    settings = replace(files_settings, files_max_bytes=len(large) - 1)
    assert len(small) <= settings.files_max_bytes
    notes = Notifications(settings)
    start_worker(settings=settings)
    upload(settings, {"products.csv": small, "orders_large.csv": large})

    # Both files in one execution or in two (the window): the large one's is announced.
    wait_for(lambda: any(m.get("invalid_files") for _, m in notes.poll()), timeout=120,
             message="the rejection announced")
    [(topic, message)] = [(t, m) for t, m in notes.received if m.get("invalid_files")]
    reason = f"too large: {len(large):,} bytes, above FILES_MAX_BYTES ({len(large) - 1:,})"
    assert message["invalid_files"] == [{"name": "orders_large.csv", "reasons": [reason]}]
    assert topic == settings.files_success_topic  # the execution itself went through
    wait_for(lambda: keys_in(settings, "rejected/") == {
        "rejected/orders_large.csv", "rejected/orders_large.csv.reason.json"}
        and keys_in(settings, "archive/") == {"archive/products.csv"},
        message="the large file in rejected/, the other archived")


@pytest.mark.slow
def test_two_workers_and_overlapping_executions_agree_with_one_computation(files_settings,
                                                                         start_worker):
    settings = files_settings
    notes = Notifications(settings)
    products, orders, items = make_rows(random.Random(13), orders=120)
    first, second = orders[:60], orders[60:]
    first_ids = {o["order_id"] for o in first}
    items_of_first = [i for i in items if i["order_id"] in first_ids]
    items_of_second = [i for i in items if i["order_id"] not in first_ids]
    start_worker(settings=settings, name="w1", concurrency=1)
    start_worker(settings=settings, name="w2", concurrency=1)
    # Items arrive before and after their orders, in executions that may overlap.
    upload(settings, {"products.csv": csv_of(PRODUCTS, products),
                      "orders_part1.csv": csv_of(ORDERS, first),
                      "order_items_part2.csv": csv_of(ORDER_ITEMS, items_of_second)})
    wait_for(lambda: FilesStore.from_url(settings.redis_url).executions(), timeout=60,
             message="a first execution to start")
    upload(settings, {"orders_part2.csv": csv_of(ORDERS, second),
                      "order_items_part1.csv": csv_of(ORDER_ITEMS, items_of_first)})

    wait_for(lambda: sorted(f for _, m in notes.poll() for f in m.get("valid_files", [])) == [
        "order_items_part1.csv", "order_items_part2.csv", "orders_part1.csv",
        "orders_part2.csv", "products.csv"], timeout=180, message="every file announced once")
    assert len(notes.received) >= 2
    assert {topic for topic, _ in notes.received} == {settings.files_success_topic}
    assert served(settings) == expected_kpis(by_key(PRODUCTS, products), by_key(ORDERS, orders),
                                             by_key(ORDER_ITEMS, items))
    assert keys_in(settings, "input/") == set()


def test_a_file_and_its_update_in_one_window_are_staged_in_upload_order(files_settings,
                                                                       start_worker):
    settings = files_settings
    notes = Notifications(settings)
    products, orders, items = make_rows(random.Random(30), orders=20)
    updates = [{**o, "status": "returned"} for o in orders[:10]]
    start_worker(settings=settings)
    upload(settings, {"orders.csv": csv_of(ORDERS, orders)})
    upload(settings, {"orders_update.csv": csv_of(ORDERS, updates)})
    [(_, message)] = notes.wait(1)
    assert sorted(message["valid_files"]) == ["orders.csv", "orders_update.csv"]
    assert served(settings)[0] == expected_kpis({}, by_key(ORDERS, orders + updates), {})[0]


@pytest.mark.slow
def test_bodies_that_are_no_s3_event_are_dead_lettered_and_the_worker_goes_on(files_settings,
                                                                             start_worker):
    settings = files_settings
    notes = Notifications(settings)
    client = sqs.client(settings)
    junk = ["not json", json.dumps([1, 2]),
            json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]})]
    for body in junk:
        client.send_message(QueueUrl=settings.files_url, MessageBody=body)
    worker = start_worker(settings=settings)
    wait_for(lambda: sqs.depth(settings, settings.files_dlq)["visible"] == len(junk),
             timeout=120, message="the junk bodies in the files DLQ")
    upload(settings, {"orders.csv": csv_of(ORDERS, make_rows(random.Random(2), orders=5)[1])})
    [(topic, message)] = notes.wait(1)
    assert topic == settings.files_success_topic and message["valid_files"] == ["orders.csv"]
    assert worker.process.poll() is None


def test_a_forged_finish_message_deletes_nothing(files_settings, start_worker):
    settings = files_settings
    notes = Notifications(settings)
    start_worker(settings=settings)
    _, orders, _ = make_rows(random.Random(60), orders=10)
    upload(settings, {"orders.csv": csv_of(ORDERS, orders)})
    [(_, message)] = notes.wait(1)
    tables, archived, before = keys_in(settings, "staging/"), keys_in(settings, "archive/"), \
        served(settings)
    log = sorted(k for k in tables if "/_delta_log/" in k)
    # What a sender allowed on the files queue can write: old-style arguments naming Delta
    # log entries as a staged file and its effects, and new-style ones.
    staged = {"key": log[0], "name": "orders.csv", "status": "valid", "rows_read": 1,
              "rows_kept": 1, "dropped": {}, "seconds": 0, "effects": {"ref": log[-1]}}
    forged = [[{"staged": [staged], "kpis": {"dates": []}}, message["execution_id"], []],
              [message["execution_id"]], ["20240101T000000Z-0badf00d"]]
    app = create_celery(settings)
    for args in forged:
        app.send_task("files.finish", args=args, queue=settings.files_queue).get(
            timeout=120, propagate=False)

    assert keys_in(settings, "staging/") == tables
    assert keys_in(settings, "archive/") == archived
    assert served(settings) == before
    assert [m for _, m in notes.poll()] == [message]  # nothing announced again


@pytest.mark.slow
def test_a_step_killed_each_time_ends_the_execution_failed_then_a_later_upload_succeeds(
        files_settings, start_worker):
    settings = files_settings
    notes = Notifications(settings)
    store = FilesStore.from_url(settings.redis_url)
    worker = start_worker(settings=settings, concurrency=1)
    # Big enough that a step runs for a while after it loaded polars.
    _, orders, _ = make_rows(random.Random(61), orders=20000)
    upload(settings, {"orders.csv": csv_of(ORDERS, orders)})
    killed = set()

    def kill_steps_until_failed():
        # A step loads polars in the pool process that runs it: SIGKILL that process, as
        # the OOM killer would, every time one does.
        for pid in worker.service.members():
            if pid != worker.process.pid and pid not in killed and maps_polars(pid):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        return [e for e in store.executions() if e["status"] == "failed"]

    [record] = wait_for(kill_steps_until_failed, timeout=300, interval=0.05,
                        message="the execution to end failed")
    [(topic, failure)] = notes.wait(1)
    assert topic == settings.files_failure_topic
    assert failure["execution_id"] == record["execution_id"]
    assert failure["step"] == "validate and stage" and "started" in failure["error"]
    assert failure["files"] == ["input/orders.csv"]
    # Its last delivery before the DLQ fails the step instead of trying it.
    assert len(killed) == settings.max_receive_count - 1

    upload(settings, {"orders_later.csv": csv_of(ORDERS, make_rows(random.Random(62), orders=5,
                                                                   prefix="L")[1])})
    wait_for(lambda: any("orders_later.csv" in m.get("valid_files", [])
                         for topic, m in notes.poll() if topic == settings.files_success_topic),
             timeout=180, message="the later upload's success")
    assert worker.process.poll() is None
