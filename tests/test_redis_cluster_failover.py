"""A Redis Cluster primary dies mid-stream; the cluster promotes its replica.

As in tests/test_redis_failover.py, the primary's host dies rather than just its process
(a SIGKILL alone loses nothing on one host: the kernel still delivers what Redis wrote to
its replica's socket). The primary announces a proxy's port to the cluster, so its replica
and the workers reach it through that proxy (the network to its host). The proxy stops
passing the replication stream on (the workers are served as before) until the primary
holds writes its replica has not, then it is reset (its buffered bytes gone) and the
primary SIGKILLed. The other primaries vote the
replica in and the workers' cluster clients find the new map by themselves; the test then
adds a node as the new primary's replica, as an operator replaces a failed node.

With REDIS_WAIT_REPLICAS=1 every order is counted exactly once. The run without WAIT is
the control: orders acknowledged but held only by the dead host must be lost, or the
first run proves nothing, and none may be counted twice.
"""
from __future__ import annotations

import random
import signal
from dataclasses import replace

import pytest
import redis

from app.store import Store
from conftest import make_orders, wait_for
from stack.cluster import LocalRedisCluster
from tcp_proxy import TcpProxy
from test_failure_scenarios import (Expected, assert_totals, dead_letter_ids, drained, dumps,
                                    send)

# Enough that the stream outlasts the stall: the proxy's and the kernel's buffers take in
# much of the stream first, and a faster worker (2026-12-01) counted 3,000 before the
# victim held 1 MB its replica had not (5,000 of 6,000 in the next run).
ORDERS = 10_000
# Replication stream the victim holds beyond its stalled replica before its host dies:
# with WAIT the stream grows slowly (batches there wait, then retry), without it at once.
UNREPLICATED_BYTES = {1: 300_000, 0: 1_000_000}


def victim_and_replica(cluster: LocalRedisCluster) -> tuple[int, int]:
    """Ports of the first primary and of its replica."""
    with redis.Redis(port=cluster.ports[0], decode_responses=True) as node:
        nodes = node.cluster("NODES")
    port_of = {meta["node_id"]: int(address.rsplit(":", 1)[1]) for address, meta in nodes.items()}
    victim = cluster.primary_ports()[0]
    victim_id = next(node_id for node_id, port in port_of.items() if port == victim)
    replica = next(port_of[meta["node_id"]] for meta in nodes.values()
                   if meta["master_id"] == victim_id)
    return victim, replica


def replication(port: int) -> dict:
    with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as node:
        return node.info("replication")


def unreplicated(victim: int) -> int:
    """Bytes of the victim's replication stream its replica has not acknowledged."""
    info = replication(victim)
    acked = info.get("slave0", {}).get("offset", 0)
    return info["master_repl_offset"] - acked


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["wait-1", "no-wait"])
def test_cluster_primary_killed_mid_stream_and_replica_promoted(settings, sqs_client,
                                                                start_worker, tmp_path,
                                                                wait_replicas):
    cluster = LocalRedisCluster(3, 1, log_dir=tmp_path).start()
    victim, replica = victim_and_replica(cluster)
    link = TcpProxy("127.0.0.1", victim).start()
    try:
        with redis.Redis(port=victim) as node:
            node.config_set("cluster-announce-port", link.port)
        wait_for(lambda: (replication(replica)["master_port"], replication(replica)[
            "master_link_status"]) == (link.port, "up"), timeout=30,
            message="the replica following its primary through the proxy")
        store = Store.from_url(cluster.url)
        own = replace(settings, redis_url=cluster.url, control_url=settings.control_plane_url,
                      redis_wait_replicas=wait_replicas, task_max_retries=60)
        orders = make_orders("CF", ORDERS, users=40, rng=random.Random(11))
        start_worker(settings=own)
        send(sqs_client, own.orders_url, [dumps(body) for body, _ in orders])

        wait_for(lambda: store.outcomes()["counted"] >= ORDERS // 5, timeout=120,
                 message="a fifth counted")
        link.stall_replication()
        ahead = UNREPLICATED_BYTES[wait_replicas]
        wait_for(lambda: unreplicated(victim) >= ahead, timeout=120,
                 message=f"{ahead} bytes the replica has not")
        counted_before = store.outcomes()["counted"]
        link.cut()
        next(n.process for n in cluster.nodes if n.port == victim).send_signal(signal.SIGKILL)
        assert counted_before < ORDERS and not drained(sqs_client, own), "not mid-stream"
        wait_for(lambda: replication(replica)["role"] == "master", timeout=60,
                 message="the cluster to promote the replica")
        # As an operator (or a managed service) replaces the failed node: the promoted
        # primary gets a replica, and with WAIT no batch there is confirmed until it syncs.
        cluster.add_replica(replica)

        wait_for(lambda: drained(sqs_client, own), timeout=300, message="the queue drained")
        expected = Expected()
        expected.add_orders(orders)
        counted = store.global_stats().total_orders
        lost = ORDERS - counted
        print(f"\nWAIT {wait_replicas}: {counted_before} counted when the primary died; "
              f"{counted} of {ORDERS} in the totals after the failover, lost {lost}")
        assert dead_letter_ids(own) == []
        if wait_replicas:
            assert store.outcomes()["counted"] == ORDERS
            assert_totals(store, expected)
        else:
            # Acknowledged (its messages deleted from SQS) but held only by the dead host.
            # Nothing may be counted twice, lost or not.
            assert 0 < lost <= counted_before
            for user_id, (count, spend) in expected.users.items():
                user = store.user_stats(user_id)
                assert user is None or (user.order_count <= count
                                        and user.total_spend_cents <= int(spend * 100)), user_id
    finally:
        link.cut()
        cluster.stop()
