"""The Redis primary dies mid-stream and its replica is promoted, with and without WAIT.

A SIGKILL of redis-server alone loses nothing on one host: the kernel still delivers what
Redis wrote to its replica's socket. A crashed host takes those buffers with it, so here the
replica follows the primary through a proxy (the network between the hosts), and the
primary's "host" dies as: replica stalled (SIGSTOP, so writes pile up unreplicated), then
the link reset (its buffered bytes gone) and the primary SIGKILLed. The workers reach
Redis through a second proxy, switched to the promoted replica as a failover would.

With REDIS_WAIT_REPLICAS=1 nothing may be lost or doubled. The run without WAIT is the
control: it must lose orders in the same scenario, or the first run proves nothing.
"""
from __future__ import annotations

import random
import signal
from dataclasses import replace

import pytest

from app.store import Store, order_key
from conftest import make_orders, wait_for
from stack.services import RedisServer, free_port
from tcp_proxy import TcpProxy
from test_failure_scenarios import (Expected, assert_totals, dead_letter_ids, drained, dumps,
                                    send)

ORDERS = 3000


def link_status(store: Store) -> str:
    return store.redis.info("replication").get("master_link_status", "")


def reopen(proxy: TcpProxy) -> bool:
    """Listen again; False while the port is still held by the listener just closed."""
    try:
        proxy.restore()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["wait-1", "no-wait"])
def test_primary_killed_mid_stream_and_replica_promoted(settings, sqs_client, start_worker,
                                                        tmp_path, wait_replicas):
    primary = RedisServer(free_port(), log_dir=tmp_path, name="redis-primary").start()
    link = TcpProxy("127.0.0.1", primary.port).start()
    replica = RedisServer(free_port(), log_dir=tmp_path, name="redis-replica", extra_args=(
        "--replicaof", "127.0.0.1", str(link.port))).start()
    front = TcpProxy("127.0.0.1", primary.port).start()
    spare = RedisServer(free_port(), log_dir=tmp_path, name="redis-spare")
    try:
        on_primary, on_replica = Store.from_url(primary.url), Store.from_url(replica.url)
        wait_for(lambda: link_status(on_replica) == "up", timeout=30, message="replica in sync")
        own = replace(settings, redis_url=f"redis://127.0.0.1:{front.port}/0",
                      control_url=settings.control_plane_url, redis_wait_replicas=wait_replicas,
                      task_max_retries=40)
        orders = make_orders("FO", ORDERS, users=40, rng=random.Random(9))
        start_worker(settings=own)
        # A fifth first, the rest once the replica is stalled: the orders counted past it do
        # not depend on how soon this process sees the fifth (on a loaded machine the worker
        # could count most of the queue before the stall).
        first = ORDERS // 5
        send(sqs_client, own.orders_url, [dumps(body) for body, _ in orders[:first]])
        wait_for(lambda: on_primary.outcomes()["counted"] >= first, timeout=120,
                 message="a fifth counted")
        replica.process.send_signal(signal.SIGSTOP)
        stalled_at = on_primary.outcomes()["counted"]
        send(sqs_client, own.orders_url, [dumps(body) for body, _ in orders[first:]])
        # Counted on the primary, not on the replica: acknowledged (without WAIT) or not.
        ahead = 50 if wait_replicas else 800
        wait_for(lambda: on_primary.outcomes()["counted"] >= stalled_at + ahead, timeout=120,
                 message=f"{ahead} orders past the stalled replica ({stalled_at} counted at "
                         f"the stall)")
        front.cut()
        counted_on_primary = on_primary.outcomes()["counted"]
        link.cut()
        primary.process.send_signal(signal.SIGKILL)
        replica.process.send_signal(signal.SIGCONT)
        wait_for(lambda: link_status(on_replica) == "down", timeout=30, message="link down")
        on_replica.redis.replicaof("NO", "ONE")
        promoted_with = on_replica.outcomes()["counted"]
        assert counted_on_primary < ORDERS and not drained(sqs_client, own), "not mid-stream"
        assert promoted_with < counted_on_primary, "the replica was not behind"
        # As a failover manager would: the workers go to the new primary, and a new
        # replica follows it (with WAIT, no batch is confirmed until one does).
        front.target = ("127.0.0.1", replica.port)
        wait_for(lambda: reopen(front), timeout=10, message="the proxy to listen again")
        spare.extra_args = ["--replicaof", "127.0.0.1", str(replica.port)]
        spare.start()

        wait_for(lambda: drained(sqs_client, own), timeout=300, message="the queue drained")
        kept = [(body, value) for body, value in orders
                if on_replica.redis.exists(order_key(body["order_id"]))]
        lost = ORDERS - len(kept)
        print(f"\nWAIT {wait_replicas}: primary had {counted_on_primary} counted, the replica "
              f"{promoted_with} when promoted; lost for good: {lost}; duplicates seen: "
              f"{on_replica.outcomes()['duplicate']}")
        # Whatever was kept is counted exactly once, to the cent.
        expected = Expected()
        expected.add_orders(kept)
        assert on_replica.outcomes()["counted"] == len(kept)
        assert_totals(on_replica, expected)
        assert dead_letter_ids(own) == []
        if wait_replicas:
            assert lost == 0
        else:
            assert 0 < lost <= counted_on_primary - promoted_with
    finally:
        front.cut()
        link.cut()
        replica.process and replica.process.send_signal(signal.SIGCONT)
        spare.cleanup()
        replica.cleanup()
        primary.cleanup()
