"""Raw JSON orders sent with boto3 -> real Celery worker -> Redis -> API under gunicorn."""
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from decimal import Decimal

import requests

from app import sqs
from app.settings import to_env
from app.store import Store
from conftest import ROOT, make_orders, order, order_body, wait_for


INVALID_BODIES = [
    "not json", " ", "[1, 2]", "null",  # SQS refuses a truly empty body
    order_body("BAD1", order_value="two hundred"),
    order_body("BAD2", value_cents=502),  # the item total is 5.00
    order_body("BAD3", order_value=float("nan")),  # json.dumps writes NaN, as some senders do
]


def test_raw_orders_are_counted_exactly_once_and_served(settings, sqs_client, start_worker,
                                                        api_server):
    rng = random.Random(7)
    orders = make_orders("ORD", 300, users=25, rng=rng)
    bodies = [json.dumps(body) for body, _ in orders]
    duplicates = rng.sample(bodies, 40)
    legacy = [json.dumps({"user_id": "L1", "amount": 100}), json.dumps({"user_id": "L1", "amount": 2.5})]
    conflicting = json.dumps({**orders[0][0], "user_id": "SOMEONE-ELSE"})
    raw = bodies + duplicates + INVALID_BODIES + legacy
    rng.shuffle(raw)
    for batch in sqs.chunks(raw):
        assert sqs.send_bodies(sqs_client, settings.orders_url, batch) == []

    # A Celery-native producer: send_task with the order as the argument.
    native = order("NATIVE1", "N1", lines=[("P1", 5, 250)], day="2024-12-05")
    subprocess.run([sys.executable, "-c",
                    "import json, sys; from tasks import app; "
                    "app.send_task('orders.process', args=[json.loads(sys.argv[1])])",
                    json.dumps(native)], cwd=ROOT, env={**os.environ, **to_env(settings)},
                   check=True, timeout=60)

    expected_user = defaultdict(lambda: [0, Decimal(0)])
    for body, value in orders:
        expected_user[body["user_id"]][0] += 1
        expected_user[body["user_id"]][1] += value
    expected_user["L1"] = [2, Decimal("102.5")]
    expected_user["N1"] = [1, Decimal(native["order_value"])]
    expected_orders = len(orders) + 2 + 1
    expected_revenue = sum(v for _, v in orders) + Decimal("102.5") + Decimal("12.5")

    start_worker()
    wait_for(lambda: _settled(settings) >= len(raw) + 1, timeout=180,
             message="every message to reach an outcome")
    # Sent once the original is counted, so which of the two wins is known.
    assert sqs.send_bodies(sqs_client, settings.orders_url, [conflicting]) == []
    wait_for(lambda: _settled(settings) >= len(raw) + 2, timeout=60,
             message="the conflicting order to reach an outcome")

    assert _outcomes(settings) == {"counted": expected_orders, "duplicate": len(duplicates),
                                   "rejected": len(INVALID_BODIES), "conflict": 1}
    assert requests.get(f"{api_server}/stats/global").json() == {
        "total_orders": expected_orders, "total_revenue": float(expected_revenue)}
    for user_id, (order_count, spend) in expected_user.items():
        response = requests.get(f"{api_server}/users/{user_id}/stats")
        assert response.json() == {"user_id": user_id, "order_count": order_count,
                                   "total_spend": float(spend)}, user_id
    assert requests.get(f"{api_server}/users/SOMEONE-ELSE/stats").status_code == 404
    # Every message was acknowledged: nothing is left visible or in flight.
    wait_for(lambda: sqs.depth(settings, settings.orders_queue) == {
        "visible": 0, "in_flight": 0, "delayed": 0}, timeout=30, message="queue to drain")
    assert sqs.depth(settings, settings.dlq_name)["visible"] == 0


def _outcomes(settings):
    return Store.from_url(settings.redis_url).outcomes()


def _settled(settings):
    """Messages that reached an outcome."""
    return sum(_outcomes(settings).values())


def test_orders_on_an_extra_queue_are_counted_like_the_others(settings, sqs_client, start_worker,
                                                              api_server):
    """A producer sending to another queue (OrderQueue) is consumed by the same workers."""
    settings = replace(settings, extra_orders_queues=f"{settings.orders_queue}-x")
    urls = sqs.ensure_queues(settings)
    extra_name, extra_url = next(iter(settings.extra_queue_urls.items()))
    assert urls[extra_name].endswith(f"/{extra_name}")

    orders = make_orders("XQ", 60, users=6, rng=random.Random(11))
    bodies = [json.dumps(body) for body, _ in orders]
    # Half on each queue, and the same order on both: counted once.
    for url, share in ((settings.orders_url, bodies[:30]),
                       (extra_url, bodies[30:] + bodies[:1] + INVALID_BODIES[:1])):
        for batch in sqs.chunks(share):
            assert sqs.send_bodies(sqs_client, url, batch) == []

    start_worker(settings=settings)
    wait_for(lambda: _settled(settings) == len(bodies) + 2, timeout=120,
             message="every message of both queues to reach an outcome")
    assert _outcomes(settings) == {"counted": 60, "duplicate": 1, "rejected": 1, "conflict": 0}
    assert requests.get(f"{api_server}/stats/global").json() == {
        "total_orders": 60, "total_revenue": float(sum(value for _, value in orders))}
    for name in (settings.orders_queue, extra_name):
        wait_for(lambda: sqs.depth(settings, name) == {"visible": 0, "in_flight": 0, "delayed": 0},
                 timeout=30, message=f"{name} to drain")
