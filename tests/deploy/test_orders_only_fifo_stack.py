"""The template with OrdersFifo=true and FilesEnabled=false: an orders-only deployment of
FIFO queues, run on nothing but its outputs.

A shop platform's FIFO sends (grouped by user, deduplicated by order id) are counted by a
worker started on the stack's outputs, a poison message reaches the FIFO DLQ, and the
operator's redrive sends it back in its group. No files resource exists, and the worker's
policy names none.
"""
from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from app.deadletters import DeadLetterQueue
from app.store import Store, user_key
from bench.order_builders import make_orders, order
from deployment import DeployedStack, deploy_fresh, depth, stack_resources, start_worker
from stack.services import wait_for
from test_template_lint import actions, findings, policy_documents


@pytest.fixture(scope="module")
def deployed(sqs_server, redis_server) -> DeployedStack:
    return deploy_fresh(sqs_server, redis_server, OrdersFifo="true", FilesEnabled="false",
                        MaxReceiveCount=2)


def test_the_stack_has_fifo_orders_queues_and_no_files_resources(deployed):
    outputs = deployed.outputs
    assert outputs["ORDERS_QUEUE"].endswith("-orders.fifo")
    assert outputs["ORDERS_DLQ"] == outputs["ORDERS_QUEUE"].removesuffix(".fifo") + "-dlq.fifo"
    assert outputs["FILES_ENABLED"] == "false"
    assert not any(key.startswith("FILES_") for key in set(outputs) - {"FILES_ENABLED"})
    # The settings' own default name of the DLQ is the stack's.
    assert deployed.settings.dlq_name == outputs["ORDERS_DLQ"]
    resources = stack_resources(deployed.endpoint_url, deployed.name)
    assert set(resources) == {"OrdersQueue", "OrdersDeadLetterQueue", "WorkerPolicy",
                              "ApiPolicy", "ProducerPolicy", "OperatorPolicy"}
    policies = policy_documents(deployed.endpoint_url, deployed.name)
    assert not any(a.startswith(("s3:", "sns:")) for a in actions(policies["WorkerPolicy"]))
    for logical_id, document in policies.items():
        assert findings(document) == [], logical_id


def test_a_worker_on_the_outputs_counts_fifo_orders_and_a_poison_is_redriven_in_its_group(
        deployed, tmp_path):
    store = Store.from_url(deployed.redis_url)
    settings = deployed.settings
    client = DeadLetterQueue(settings).sqs
    orders = make_orders("FS", 40, users=4, rng=random.Random(9))
    store.redis.set(user_key("POISONED"), "not a hash")  # counting it fails with WRONGTYPE
    poison = order(order_id="FS-POISON", user_id="POISONED")
    bodies = [body for body, _ in orders] + [poison]
    entries = [{"Id": str(i), "MessageBody": json.dumps(body), "MessageGroupId": body["user_id"],
                "MessageDeduplicationId": body["order_id"]} for i, body in enumerate(bodies)]
    for start in range(0, len(entries), 10):
        assert not client.send_message_batch(QueueUrl=settings.orders_url,
                                             Entries=entries[start:start + 10]).get("Failed")
    worker = start_worker(deployed, tmp_path, name="fifo-orders-only")
    try:
        wait_for(lambda: store.outcomes()["counted"] >= len(orders), timeout=90,
                 message=f"{len(orders)} FIFO orders counted")
        totals = store.global_stats()
        assert (totals.total_orders, Decimal(totals.total_revenue_cents) / 100) == (
            len(orders), sum((value for _, value in orders), Decimal(0)))
        wait_for(lambda: depth(deployed, settings.dlq_name)["visible"] == 1, timeout=120,
                 message="the poison message in the stack's FIFO DLQ")
        store.redis.delete(user_key("POISONED"))  # the data fixed
        [moved] = DeadLetterQueue(settings).redrive()
        assert moved.group_id == "POISONED"
        wait_for(lambda: store.outcomes()["counted"] == len(orders) + 1, timeout=90,
                 message="the redriven order counted")
        assert worker.running, worker.log_tail()
    finally:
        worker.stop(timeout=30)
