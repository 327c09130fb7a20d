"""The SQS server's raw drain rate: ReceiveMessage 10 + DeleteMessageBatch, no processing.

The ceiling of every consumer on the same server. Processes share a counter and the
parent stops them all as soon as --expect messages were deleted. It prints the count as
a JSON line every half second, and a last one at the end:

    python -m bench.drain --endpoint URL --queue-url URL --expect 20000 [--processes 2]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time

from bench.sqs_loop import consume, delete_batch, plain_client, start_processes


def run(endpoint: str, queue_url: str, deleted):
    """Receive and delete in batches of ten, forever."""
    sqs = plain_client(endpoint)

    def drop(messages: list[dict]):
        delete_batch(sqs, queue_url, messages)
        with deleted.get_lock():
            deleted.value += len(messages)

    consume(sqs, queue_url, drop, wait_seconds=1)


def main(argv=None):
    """Drain --expect messages with --processes processes; print the elapsed time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.monotonic()
    deleted = multiprocessing.Value("q", 0)
    workers = start_processes(args.processes, run, args.endpoint, args.queue_url, deleted)
    # Polling a shared counter: the last receive of the other process need not be waited for.
    next_report = started
    while deleted.value < args.expect and any(w.is_alive() for w in workers):
        if time.monotonic() >= next_report:
            report(deleted.value, started)
            next_report += 0.5
        time.sleep(0.01)
    report(deleted.value, started)
    for worker in workers:
        worker.terminate()


def report(deleted: int, started: float):
    """One JSON line: messages deleted so far and seconds since the start."""
    print(json.dumps({"deleted": deleted, "seconds": round(time.monotonic() - started, 3)}),
          flush=True)


if __name__ == "__main__":
    main()
