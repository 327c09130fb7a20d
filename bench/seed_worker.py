"""The seed-style baseline worker: boto3 loop; per message parse, check, 4 Redis calls, delete.

Written the way the public examples the project replaces consume orders, as the reference
they represent: ReceiveMessage up to 10, then for each message json.loads, a simple
validation, HINCRBY/HINCRBYFLOAT on user:<id> and global:stats (no dedup, float totals)
and one DeleteMessage. Runs until killed.

    python -m bench.seed_worker --endpoint URL --queue-url URL --redis-url URL [--processes 2]
"""
from __future__ import annotations

import argparse
import json
import math

import redis

from bench.sqs_loop import consume, plain_client, run_processes


def is_valid(order) -> bool:
    """The seeds' checks: ids present, a finite amount >= 0 that matches the items' total."""
    if not isinstance(order, dict) or not order.get("user_id") or not order.get("order_id"):
        return False
    value, items = order.get("order_value"), order.get("items")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value) or value < 0 or not isinstance(items, list) or not items:
        return False
    try:
        total = sum(item["quantity"] * item["price_per_unit"] for item in items)
    except (KeyError, TypeError):
        return False
    return abs(total - value) <= 0.01


def parse(body: str):
    """The order in a body, or None when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def handle(r: redis.Redis, body: str) -> bool:
    """Count one order the seeds' way; False when it is invalid (then only deleted)."""
    order = parse(body)
    if not is_valid(order):
        return False
    user_key = f"user:{order['user_id']}"
    r.hincrby(user_key, "order_count", 1)
    r.hincrbyfloat(user_key, "total_spend", order["order_value"])
    r.hincrby("global:stats", "total_orders", 1)
    r.hincrbyfloat("global:stats", "total_revenue", order["order_value"])
    return True


def run(endpoint: str, queue_url: str, redis_url: str):
    """Receive, handle and delete, one message at a time, forever."""
    sqs = plain_client(endpoint)
    r = redis.Redis.from_url(redis_url)

    def one_by_one(messages: list[dict]):
        for message in messages:
            handle(r, message["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    consume(sqs, queue_url, one_by_one)


def main(argv=None):
    """Start the worker processes and wait for them (stopped by a signal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    run_processes(args.processes, run, args.endpoint, args.queue_url, args.redis_url)


if __name__ == "__main__":
    main()
