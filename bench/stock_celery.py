"""Stock Celery on SQS: Celery's default settings and one plain task per order, as its docs show.

Only what it takes to reach the benchmark's SQS server and queue is set (broker URL,
region, plain http, queue name); prefetch, acks, polling and everything else keep
Celery's and kombu's defaults. The task makes the seed worker's Redis calls.

    BENCH_BROKER_URL=sqs://test:test@127.0.0.1:PORT BENCH_QUEUE=name BENCH_REDIS_URL=redis://...
    celery -A bench.stock_celery worker --concurrency 2
"""
from __future__ import annotations

import os
import uuid

import redis
from celery import Celery
from kombu import Connection
from kombu.asynchronous.aws.sqs.message import AsyncMessage
from kombu.serialization import dumps
from kombu.transport import TRANSPORT_ALIASES
from kombu.utils.json import dumps as json_dumps

from bench.seed_worker import handle

TASK = "stock.count_order"

# The project's `celery.commands` entry point (tasks.cli) imports tasks/, which points
# sqs:// at the project's transport in every `celery` process: stock Celery gets kombu's.
TRANSPORT_ALIASES["sqs"] = "kombu.transport.SQS:Transport"

app = Celery("stock")
app.conf.broker_url = os.environ.get("BENCH_BROKER_URL", "sqs://test:test@127.0.0.1:4566")
app.conf.broker_transport_options = {"region": "us-east-1", "is_secure": False}
app.conf.task_default_queue = os.environ.get("BENCH_QUEUE", "celery")

_redis: redis.Redis | None = None


@app.task(name=TASK)
def count_order(body: str):
    """Parse, check and count one order body with the seed's four Redis calls."""
    global _redis
    if _redis is None:  # one client per pool process, made after the fork
        _redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    handle(_redis, body)


def envelopes(broker_url: str, queue: str, bodies):
    """SQS message bodies exactly as count_order.delay(body) would send them.

    .delay() makes one SendMessage per task (~150 tasks/s on LocalStack); building the
    same envelopes here lets the harness send them ten at a time with SendMessageBatch.
    The steps are kombu's own: as_task_v2, the serializer, the channel's prepare_message
    and basic_publish's augmentation, then the SQS transport's base64 JSON envelope.
    """
    with Connection(broker_url, transport_options=app.conf.broker_transport_options) as conn:
        channel = conn.default_channel
        for body in bodies:
            headers, properties, payload, _ = app.amqp.as_task_v2(
                str(uuid.uuid4()), TASK, args=(body,), reply_to=app.thread_oid)
            content_type, encoding, data = dumps(payload, serializer="json")
            # The producer's default: persistent.
            properties = {**properties, "delivery_mode": 2}
            message = channel.prepare_message(data, None, content_type, encoding, headers,
                                              properties)
            channel._inplace_augment_message(message, "", queue)
            envelope = json_dumps(message)
            yield AsyncMessage().encode(envelope) if channel.sqs_base64_encoding else envelope
