"""python -m stack.migrate_store on a store that the v1 code filled (tests/fixtures/store_v1.json).

The same history applied by today's code to an empty store is the reference: every answer
the Store and the analytics give must be the same on the migrated store.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import date, timedelta

import pytest
import redis

from app import analytics
from app.settings import to_env
from app.store import Store
from fixtures import store_v1
from stack.migrate_store import Migration, is_v1, v1_keys
from stack.services import PROJECT_ROOT, free_port

V1_KEYS = json.loads(store_v1.DUMP.read_text())
FIRST_DAY, LAST_DAY = date(2024, 10, 1), date(2025, 1, 31)


def migrate(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack.migrate_store", *args], cwd=PROJECT_ROOT,
                          env=to_env(settings), capture_output=True, text=True, timeout=120)


def answers(store: Store) -> dict:
    """Everything the store answers about the fixture's history."""
    orders = [json.loads(body) for _, body in store_v1.bodies() if body.startswith("{")]
    users = sorted({body.get("user_id", "") for body in orders} - {""})
    days = [FIRST_DAY + timedelta(n) for n in range((LAST_DAY - FIRST_DAY).days + 1)]
    period = analytics.Period(FIRST_DAY, LAST_DAY)
    months = analytics.MonthRange(FIRST_DAY, LAST_DAY)
    ranges = [None, analytics.Period.of_day(date(2024, 11, 5)), analytics.Period(
        date(2024, 11, 1), date(2024, 11, 30)), analytics.Period(date(2024, 10, 20),
                                                                 date(2024, 12, 3))]
    return {
        "global": store.global_stats(), "outcomes": store.outcomes(),
        "corrected": store.corrected(), "by_field": store.rejected_by_field(),
        "users": [analytics.user_summary(store, u) for u in users],
        "user_periods": [analytics.user_period(store, u, period) for u in users],
        "daily": analytics.daily(store, analytics.Period(days[0], days[-1])),
        "monthly": analytics.monthly(store, months),
        "products": [analytics.product_stats(store, f"P{i:03d}") for i in range(1, 41)],
        "top_users": [analytics.top_users(store, 100, by, p) for by in ("spend", "orders")
                      for p in ranges],
        "top_products": [analytics.top_products(store, 50, by) for by in ("revenue", "units")],
        "rejected": sorted((r["message_id"], r["reasons"]) for r in store.rejected(0, 100)),
        "corrections": {body["order_id"]: store.correction(body["order_id"], body["user_id"])
                        for body in orders if "order_id" in body and "user_id" in body},
    }


def contents(client) -> list:
    """Each key's name, type and value (not its remaining time to live, which runs)."""
    return [(entry["key"], entry["type"], entry["value"]) for entry in store_v1.dump(client)]


@pytest.fixture
def settings_v1(settings):
    """The test's settings with the mismatch policy the fixture was filled with."""
    return replace(settings, order_value_mismatch="correct")


def test_a_v1_store_migrated_answers_as_if_todays_code_had_filled_it(settings_v1,
                                                                     redis_server):
    client = redis.Redis.from_url(settings_v1.redis_url, decode_responses=True)
    store_v1.load(client, V1_KEYS)
    assert sum(map(is_v1, client.scan_iter())) == len(V1_KEYS)
    run = migrate(settings_v1)
    assert run.returncode == 0, run.stderr
    assert f"{len(V1_KEYS)} keys in the v1 layout" in run.stderr and "migrating" in run.stderr
    assert not any(map(is_v1, client.scan_iter()))
    migrated = Store(client, settings_v1)

    reference_db = replace(settings_v1, redis_url=redis_server.url.rsplit("/", 1)[0] + "/9")
    reference_client = redis.Redis.from_url(reference_db.redis_url, decode_responses=True)
    reference_client.flushdb()
    reference = Store(reference_client, settings_v1)
    store_v1.apply_all(reference, settings_v1)
    expected = answers(reference)
    assert expected["global"].total_orders > 300  # the history is not empty
    assert answers(migrated) == expected

    # Idempotent: a second run finds nothing and changes nothing.
    before = contents(client)
    again = migrate(settings_v1)
    assert again.returncode == 0 and "0 keys in the v1 layout" in again.stderr
    assert contents(client) == before

    # Orders counted before the migration stay counted once when redelivered.
    store_v1.apply_all(migrated, settings_v1)
    store_v1.apply_all(reference, settings_v1)
    assert migrated.global_stats() == reference.global_stats() == expected["global"]
    assert migrated.outcomes() == reference.outcomes()
    assert migrated.outcomes()["counted"] == expected["outcomes"]["counted"]


def test_an_interrupted_migration_resumes(settings_v1):
    client = redis.Redis.from_url(settings_v1.redis_url, decode_responses=True)
    store_v1.load(client, V1_KEYS)

    keys = v1_keys(client)
    half = Migration(client, settings_v1)
    for key in keys[:len(keys) // 2]:
        half.convert(key)
    assert 0 < sum(map(is_v1, client.scan_iter())) < len(V1_KEYS)
    assert migrate(settings_v1).returncode == 0
    assert not any(map(is_v1, client.scan_iter()))
    fresh = redis.Redis.from_url(settings_v1.redis_url.rsplit("/", 1)[0] + "/10",
                                 decode_responses=True)
    fresh.flushdb()
    store_v1.load(fresh, V1_KEYS)
    assert migrate(replace(settings_v1, redis_url=settings_v1.redis_url.rsplit("/", 1)[0]
                           + "/10")).returncode == 0
    assert answers(Store(client, settings_v1)) == answers(Store(fresh, settings_v1))


def test_a_cluster_is_refused(settings_v1, redis_cluster):
    run = migrate(replace(settings_v1, redis_url=redis_cluster.url))
    assert run.returncode != 0 and "only ran on a standalone Redis" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_unreachable_redis_is_a_clear_error(settings_v1):
    run = migrate(replace(settings_v1, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert run.returncode != 0 and "Redis:" in run.stderr and "Traceback" not in run.stderr
