"""The bare batched loop: the project's work without Celery, as a CPU-per-order reference.

boto3 ReceiveMessage 10, the same validation and atomic store script as the worker
(`app.pipeline.process`), one DeleteMessageBatch; no Celery, no events, no pool. What
the project's worker spends per order beyond this is what Celery's machinery costs.
Settings come from the environment like the worker's (app.settings.to_env). Runs until
killed.

    python -m bench.bare_loop [--processes 2]
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone

from app import pipeline, sqs
from app.deadletters import ORIGINAL_ID_ATTRIBUTE, original_id
from app.orders import Incoming
from app.settings import from_env
from app.store import Store
from bench.sqs_loop import consume, delete_batch, run_processes


def incoming(message: dict) -> Incoming:
    """An SQS message as the pipeline takes it, as the worker builds it."""
    sent_at_ms = (message.get("Attributes") or {}).get("SentTimestamp")
    sent_at = datetime.fromtimestamp(int(sent_at_ms) / 1000, timezone.utc) if sent_at_ms else None
    return Incoming(message["Body"], original_id(message), sent_at)


def run():
    """Receive ten, process them as one batch, delete them in one call, forever."""
    settings = from_env()
    client, store = sqs.client(settings), Store.from_url(settings.redis_url)

    def process(messages: list[dict]):
        pipeline.process([incoming(m) for m in messages], store, settings)
        delete_batch(client, settings.orders_url, messages)

    consume(client, settings.orders_url, process,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=[ORIGINAL_ID_ATTRIBUTE])


def main(argv=None):
    """Start the loop processes and wait for them (stopped by a signal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    run_processes(args.processes, run)


if __name__ == "__main__":
    main()
