"""What the bench's own SQS consumers share: a plain boto3 client, the receive loop, and
the processes it runs in (bench/drain.py, bench/seed_worker.py, bench/bare_loop.py)."""
from __future__ import annotations

import multiprocessing
from typing import Callable

import boto3


def plain_client(endpoint: str):
    """A boto3 SQS client as the public examples make one: default config, dummy keys."""
    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def consume(client, queue_url: str, handle: Callable[[list[dict]], None],
            wait_seconds: int = 10, **receive_options) -> None:
    """ReceiveMessage up to ten at a time, forever; handle(messages) each batch received."""
    while True:
        messages = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=wait_seconds,
                                          **receive_options).get("Messages", [])
        if messages:
            handle(messages)


def delete_batch(client, queue_url: str, messages: list[dict]) -> None:
    """The messages deleted in one DeleteMessageBatch."""
    client.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])


def start_processes(count: int, target, *args) -> list[multiprocessing.Process]:
    """Start count daemon processes running target(*args); daemons end with their parent."""
    workers = [multiprocessing.Process(target=target, args=args, daemon=True)
               for _ in range(count)]
    for worker in workers:
        worker.start()
    return workers


def run_processes(count: int, target, *args) -> None:
    """Start count processes running target(*args) and wait for them (stopped by a signal)."""
    for worker in start_processes(count, target, *args):
        worker.join()
