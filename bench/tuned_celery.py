"""Tuned Celery on SQS: stock Celery's task with the settings a Celery expert sets on SQS.

The same plain task per order as bench/stock_celery.py (the seed worker's Redis calls,
the same envelopes), so the difference between the two rows is configuration alone:

- task_acks_late: the message is deleted after the task ran, not before;
- worker_prefetch_multiplier 10: each pool process holds a receive's worth, so one
  ReceiveMessage asks for 10 messages instead of 4 × 2 = 8 shared;
- polling_interval 0.1 s instead of 1 s: kombu 5.7 also sleeps it whenever the prefetch
  window is full, which caps stock Celery at one receive a second;
- wait_time_seconds 10: long polling, so an empty queue is not polled in a loop.

    BENCH_BROKER_URL=sqs://test:test@127.0.0.1:PORT BENCH_QUEUE=name BENCH_REDIS_URL=redis://...
    celery -A bench.tuned_celery worker --concurrency 2
"""
from __future__ import annotations

import os

from celery import Celery

from bench import stock_celery

app = Celery("tuned")
app.conf.broker_url = os.environ.get("BENCH_BROKER_URL", "sqs://test:test@127.0.0.1:4566")
app.conf.broker_transport_options = {"region": "us-east-1", "is_secure": False,
                                     "polling_interval": 0.1, "wait_time_seconds": 10}
app.conf.task_default_queue = os.environ.get("BENCH_QUEUE", "celery")
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 10
app.conf.task_ignore_result = True

# Registered under stock Celery's task name: the harness queues the same envelopes.
count_order = app.task(name=stock_celery.TASK)(stock_celery.count_order.run)
