"""SQS access shared by the producer, the CLI, the health check and the tests."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Iterable, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.settings import Settings, is_fifo

logger = logging.getLogger(__name__)

# SendMessageBatch and DeleteMessageBatch take at most ten entries.
BATCH_SIZE = 10
DEPTH_ATTRIBUTES = {
    "ApproximateNumberOfMessages": "visible",
    "ApproximateNumberOfMessagesNotVisible": "in_flight",
    "ApproximateNumberOfMessagesDelayed": "delayed",
}
# SQS's maximum. A message's age counts from its first send, and a dead-lettered message
# keeps that age: with the default 4 days, one that waited 3 days would have one left.
DLQ_RETENTION_SECONDS = 14 * 86400
# Error codes of a queue that does not exist (query and JSON protocols).
MISSING_QUEUE_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
# What SQS accepts as a MessageGroupId or MessageDeduplicationId.
FIFO_TOKEN = re.compile(r"[!-~]{1,128}")


def fifo_token(text: str) -> str:
    """text as a group or deduplication id: itself if SQS takes it, else its SHA-256."""
    return text if FIFO_TOKEN.fullmatch(text) else hashlib.sha256(text.encode()).hexdigest()


def fifo_send_fields(url: str, group: str, deduplication: str) -> dict[str, str]:
    """The MessageGroupId and MessageDeduplicationId of a send to a FIFO queue; {} for others.

    deduplication names the send: the same name within SQS's 5-minute window is sent once.
    """
    if not is_fifo(url):
        return {}
    return {"MessageGroupId": fifo_token(group),
            "MessageDeduplicationId": hashlib.sha256(deduplication.encode()).hexdigest()}


def creation_attributes(name: str) -> dict[str, str]:
    """The attributes a queue can only get when it is created: FIFO for a .fifo name."""
    return {"FifoQueue": "true"} if is_fifo(name) else {}


def client(settings: Settings, timeout: float = 10, attempts: int = 3):
    """A boto3 SQS client for the configured endpoint and region (attempts: retries + 1)."""
    local = bool(settings.sqs_endpoint_url)
    return boto3.client(
        "sqs",
        region_name=settings.aws_region,
        endpoint_url=settings.sqs_endpoint_url or None,
        # Local servers accept any key; real AWS takes boto3's usual credential chain.
        aws_access_key_id="test" if local else None,
        aws_secret_access_key="test" if local else None,
        config=Config(connect_timeout=timeout, read_timeout=timeout,
                      # botocore's max_attempts would count the retries alone.
                      retries={"total_max_attempts": attempts, "mode": "standard"}),
    )


def ensure_queues(settings: Settings, sqs=None) -> dict[str, str]:
    """Create the orders queues and their dead-letter queue (idempotent); name -> URL of each.

    Extra orders queues share the dead-letter queue: a redrive sends to ORDERS_QUEUE. Names
    ending in .fifo make FIFO queues (settings keep them all FIFO or all standard), whose
    content-based deduplication lets a producer send without a deduplication id.
    """
    sqs = sqs or client(settings)
    dlq_url = sqs.create_queue(QueueName=settings.dlq_name,
                               Attributes=creation_attributes(settings.dlq_name))["QueueUrl"]
    # create_queue keeps an existing queue's attributes: set them explicitly.
    sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes={
        "MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)})
    dlq_arn = sqs.get_queue_attributes(
        QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {
        "VisibilityTimeout": str(settings.visibility_timeout),
        "MessageRetentionPeriod": str(settings.orders_retention_seconds),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(settings.max_receive_count)}),
    }
    if is_fifo(settings.orders_queue):
        attributes["ContentBasedDeduplication"] = "true"
    urls = {}
    for name in settings.consumed_queue_urls:
        urls[name] = sqs.create_queue(QueueName=name,
                                      Attributes=creation_attributes(name))["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=urls[name], Attributes=attributes)
    return {**urls, settings.dlq_name: dlq_url}


class MissingQueue(ValueError):
    """A queue a process is to consume does not exist."""


def check_queues_exist(settings: Settings, names: Iterable[str], sqs=None):
    """Raise MissingQueue, saying how to create it, for the first of names SQS does not have.

    Other errors (endpoint unreachable, access denied) are left to the caller.
    """
    sqs = sqs or client(settings, timeout=5, attempts=1)
    for name in names:
        url = (settings.files_url if name == settings.files_queue
               else settings.consumed_queue_urls[name])
        try:
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in MISSING_QUEUE_CODES:
                raise
            if name == settings.files_queue:
                how = ("create it with `python -m stack.init_files` (or the CloudFormation "
                       "stack), or run without the files path: FILES_ENABLED=false")
            else:
                how = ("create it with `python -m stack.init_queues` (or the CloudFormation "
                       "stack)")
            raise MissingQueue(f"queue {name} does not exist ({url}): {how}; or start "
                               "the worker with -Q naming only the queues it should consume"
                               ) from None


def queue_url(settings: Settings, name: str, sqs=None) -> str:
    """URL of an existing queue."""
    sqs = sqs or client(settings)
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def depth(settings: Settings, name: str, sqs=None) -> dict[str, int]:
    """Approximate visible, in-flight and delayed counts of a queue."""
    sqs = sqs or client(settings)
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url(settings, name, sqs), AttributeNames=list(DEPTH_ATTRIBUTES)
    )["Attributes"]
    return {label: int(attrs.get(attr, 0)) for attr, label in DEPTH_ATTRIBUTES.items()}


def chunks(items: Iterable, size: int = BATCH_SIZE) -> Iterator[list]:
    """Split an iterable into lists of at most `size` items."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def order_group(body: str) -> str:
    """A FIFO message group for an order body: its user (orders within a user keep their
    order, as shop platforms group them), else one group for whatever is not an order."""
    try:
        user = json.loads(body).get("user_id")
    except (ValueError, AttributeError, RecursionError):
        user = None
    return user if isinstance(user, str) and user else "not-an-order"


def send_bodies(sqs, url: str, bodies: list[str]) -> list[str]:
    """Send up to ten raw bodies in one SendMessageBatch; return the ids SQS failed.

    To a FIFO queue each goes in its user's group, deduplicated by its content.
    """
    entries = [{"Id": str(i), "MessageBody": body,
                **(fifo_send_fields(url, order_group(body), body) if is_fifo(url) else {})}
               for i, body in enumerate(bodies)]
    response = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    failed = response.get("Failed", [])
    for failure in failed:
        logger.warning("SQS refused message %s: %s", failure["Id"], failure.get("Message"))
    return [f["Id"] for f in failed]
