"""REDIS_WAIT_REPLICAS: a batch counts as stored only once enough replicas hold it."""
import re
import time

import pytest
import redis

from app.orders import Incoming, evaluate
from app.settings import Settings
from app.store import WAIT_TIMEOUT_MS, NotReplicated, Store, order_key, user_key
from conftest import wait_for
from stack.services import RedisServer, free_port
from bench.order_builders import order_body


def orders(*ids):
    return [evaluate(Incoming(order_body(i), f"m-{i}"), Settings()) for i in ids]


def test_with_wait_required_and_no_replica_apply_raises_a_transient_error(settings):
    from tasks.orders import TRANSIENT_ERRORS  # what Celery retries
    store = Store.from_url(settings.redis_url, Settings(redis_wait_replicas=1))
    started = time.monotonic()
    with pytest.raises(NotReplicated, match="0 of 1 replica"):
        store.apply(orders("O1"))
    assert time.monotonic() - started >= WAIT_TIMEOUT_MS / 1000 * 0.9
    assert isinstance(NotReplicated("x"), TRANSIENT_ERRORS)
    # Applied on the primary, so the retry finds it counted: still not confirmed, still raised.
    with pytest.raises(NotReplicated):
        store.apply(orders("O1"))
    assert store.outcomes()["counted"] == 1 and store.outcomes()["duplicate"] == 1


def test_with_a_replica_apply_returns_once_the_replica_holds_the_batch(tmp_path):
    primary = RedisServer(free_port(), log_dir=tmp_path, name="primary").start()
    replica = RedisServer(free_port(), log_dir=tmp_path, name="replica", extra_args=(
        "--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        on_replica = Store.from_url(replica.url)
        wait_for(lambda: on_replica.redis.info("replication")["master_link_status"] == "up",
                 timeout=30, message="the replica to sync")
        store = Store.from_url(primary.url, Settings(redis_wait_replicas=1))
        ids = [f"O{i}" for i in range(200)]
        for start in range(0, len(ids), 10):
            assert store.apply(orders(*ids[start:start + 10])) == ["counted"] * 10
            # Read at once, no waiting: WAIT returned only after the replica had it.
            assert on_replica.redis.get(order_key(ids[start + 9])) is not None
        assert on_replica.global_stats().total_orders == len(ids)
        # Redis's script cache is per server: a fresh one makes the pipeline load it.
        Store.from_url(primary.url).redis.script_flush()
        assert store.apply(orders("O-after-flush")) == ["counted"]
    finally:
        replica.cleanup()
        primary.cleanup()


def test_with_wait_a_failing_script_raises_its_own_error(settings):
    store = Store.from_url(settings.redis_url, Settings(redis_wait_replicas=1))
    store.redis.set(user_key("U1"), "corrupted")
    with pytest.raises(redis.ResponseError, match=re.escape(f"WRONGTYPE {user_key('U1')}")):
        store.apply(orders("O1"))
    assert store.redis.get(order_key("O1")) is None
