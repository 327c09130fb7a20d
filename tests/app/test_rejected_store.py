"""The rejected store is bounded: heads of oversized bodies, records that expire, requeue
that sends first and forgets after. Real redis-server and LocalStack SQS."""
import hashlib
import json
import time

import pytest

from app.deadletters import ORIGINAL_ID_ATTRIBUTE
from app.orders import Incoming, evaluate
from app.pipeline import process
from app.rejections import NotRequeueable, requeue
from app.settings import Settings
from app.store import (KEPT_BODY_BYTES, REJECTED_INDEX, Store, rejected_key,
                       rejected_order_key)

DAY = 86400


def reject(store, settings, body, message_id):
    [outcome] = store.apply([evaluate(Incoming(body, message_id), settings)])
    assert outcome == "rejected"
    return store.rejection(message_id)


def test_an_oversized_body_keeps_its_head_size_and_sha256(settings):
    own = Settings(max_order_bytes=10_000)
    store = Store.from_url(settings.redis_url, own)
    # A three-byte character puts the 4 KiB cut inside one: it is dropped, not mangled.
    body = json.dumps({"order_id": "BIG1", "pad": "€" * 400_000}, ensure_ascii=False)
    data = body.encode()
    record = reject(store, own, body, "m-big")
    assert KEPT_BODY_BYTES - 3 < len(record["body"].encode()) < KEPT_BODY_BYTES
    assert data.startswith(record["body"].encode())
    assert (record["body_bytes"], record["body_sha256"]) == (len(data),
                                                             hashlib.sha256(data).hexdigest())
    assert store.redis.memory_usage(rejected_key("m-big"), samples=0) < 3 * KEPT_BODY_BYTES
    # At the limit a body is kept whole.
    whole = json.dumps({"order_id": "W", "pad": "x" * (own.max_order_bytes - 28)})
    assert len(whole.encode()) == own.max_order_bytes
    record = reject(store, own, whole, "m-whole")
    assert record["body"] == whole and "body_sha256" not in record


def test_every_rejection_record_and_its_pointer_expire_after_the_retention(settings):
    own = Settings(rejected_retention_days=3)
    store = Store.from_url(settings.redis_url, own)
    reject(store, own, '{"order_id": "X1"}', "m-x1")
    evaluated = [evaluate(Incoming(b, m), own) for b, m in [
        (json.dumps({"order_id": "O1", "user_id": "U1", "amount": 1}), "m-o1"),
        (json.dumps({"order_id": "O1", "user_id": "U2", "amount": 1}), "m-o2")]]
    assert store.apply(evaluated) == ["counted", "conflict"]
    for key in (rejected_key("m-x1"), rejected_order_key("X1"), rejected_key("m-o2"),
                rejected_order_key("O1")):
        assert 3 * DAY - 60 < store.redis.ttl(key) <= 3 * DAY, key


def test_the_index_forgets_expired_records(settings):
    own = Settings(rejected_retention_days=30)
    store = Store.from_url(settings.redis_url, own)
    now = time.time()
    # Left by records that expired: one beyond the retention, one that expired early.
    store.redis.zadd(REJECTED_INDEX, {"m-old": now - 31 * DAY, "m-gone": now - DAY})
    assert [r["message_id"] for r in store.rejected()] == []
    reject(store, own, "junk", "m-new")
    assert [r["message_id"] for r in store.rejected()] == ["m-new"]
    # Trimmed by score on write; a missing record within the retention is skipped on read.
    assert set(store.redis.zrange(REJECTED_INDEX, 0, -1)) == {"m-gone", "m-new"}


class CrashAfterSend:
    """A real SQS client whose process dies right after its message was sent."""

    def __init__(self, client):
        self.client = client

    def send_message(self, **request):
        self.client.send_message(**request)
        raise SystemExit("killed after sending")


def test_requeue_sends_first_so_a_crash_loses_nothing_and_a_second_send_counts_once(
        settings, store, sqs_client):
    body = json.dumps({"order_id": "R1", "user_id": "U1", "order_timestamp":
                       "2024-12-01T00:00:00Z", "order_value": 5.02,
                       "items": [{"product_id": "P1", "quantity": 1, "price_per_unit": 5}]})
    reject(store, Settings(), body, "m-r1")
    with pytest.raises(SystemExit):
        requeue(store, CrashAfterSend(sqs_client), settings.orders_url, "R1")
    assert store.rejection("R1") is not None and store.outcomes()["rejected"] == 1
    assert requeue(store, sqs_client, settings.orders_url, "R1")["message_id"] == "m-r1"
    assert store.rejection("R1") is None and store.outcomes()["rejected"] == 0

    messages = sqs_client.receive_message(QueueUrl=settings.orders_url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=2, MessageAttributeNames=["All"])
    incoming = [Incoming(m["Body"], m["MessageAttributes"][ORIGINAL_ID_ATTRIBUTE]["StringValue"])
                for m in messages["Messages"]]
    assert len(incoming) == 2
    fixed = Settings(order_value_mismatch="correct")
    assert [o.status for o in process(incoming, store, fixed)] == ["counted", "duplicate"]
    assert store.user_stats("U1").total_spend_cents == 500


def test_a_truncated_body_is_not_requeued(settings, sqs_client):
    own = Settings(max_order_bytes=5000)
    store = Store.from_url(settings.redis_url, own)
    body = json.dumps({"order_id": "BIG", "pad": "x" * 6000})
    reject(store, own, body, "m-big")
    with pytest.raises(NotRequeueable, match=f"{len(body)} bytes"):
        requeue(store, sqs_client, settings.orders_url, "m-big")
    assert store.rejection("m-big") is not None


def stored_bytes(store, message_id):
    """What a rejection record holds: its values, as includes/book.lua counts them."""
    raw = store.redis.hgetall(rejected_key(message_id))
    return sum(len(raw[f].encode("utf-8", "surrogatepass"))
               for f in ("message_id", "order_id", "body", "reasons", "first_seen"))


def flood(store, settings, first, count, pad=""):
    """count junk messages (each naming an order id), ten per call as a worker applies them."""
    ids = [f"m-{n:05d}" for n in range(first, first + count)]
    for start in range(0, count, 10):
        batch = [evaluate(Incoming(json.dumps({"order_id": f"J{m}", "pad": pad}), m), settings)
                 for m in ids[start:start + 10]]
        assert store.apply(batch) == ["rejected"] * len(batch)
    return ids


def keys_like(store, pattern):
    return {k for k in store.redis.scan_iter(match=pattern, count=1000)}


def test_a_flood_of_junk_keeps_the_rejected_store_within_its_caps_oldest_dropped_first(
        any_store):
    own = Settings(rejected_max_records=50, rejected_max_bytes=1 << 20)
    store = Store(any_store.redis, own)
    sent = flood(store, own, 0, 125)
    kept, dropped = sent[-50:], sent[:-50]
    assert [r["message_id"] for r in store.rejected(limit=1000)] == kept[::-1]
    assert keys_like(store, "rejected:{p}:*") == {rejected_key(m) for m in kept}
    # A dropped record's order-id pointer goes with it; the newest records stay readable.
    assert keys_like(store, "rejected-order:{p}:*") == {rejected_order_key(f"J{m}")
                                                         for m in kept}
    assert store.rejection(f"J{dropped[-1]}") is None
    assert store.rejection(f"J{kept[0]}")["message_id"] == kept[0]
    assert store.rejected_store() == {
        "records": 50, "bytes": sum(stored_bytes(store, m) for m in kept), "dropped": 75}
    # Dropping a record forgets the body, not that the message was rejected.
    assert store.outcomes()["rejected"] == 125

    # The byte cap: bigger bodies, each about a tenth of it.
    cap = 40_000
    own = Settings(rejected_max_records=1000, rejected_max_bytes=cap)
    store = Store(any_store.redis, own)
    sent = flood(store, own, 1000, 30, pad="x" * 3900)
    figures = store.rejected_store()
    listed = [r["message_id"] for r in store.rejected(limit=1000)]
    assert figures["records"] == len(listed) and listed == sent[::-1][:len(listed)]
    assert figures["bytes"] == sum(stored_bytes(store, m) for m in listed) <= cap
    # Only as many dropped as needed: the newest dropped would not have fitted.
    newest_dropped = sent[-len(listed) - 1]
    assert figures["bytes"] + 3900 > cap
    assert figures["dropped"] == 75 + 50 + 30 - len(listed)
    assert store.rejection(newest_dropped) is None
