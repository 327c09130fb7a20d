"""S3 and SNS access for the batch files path, beside app/sqs.py (same endpoint rules)."""
from __future__ import annotations

import json
import logging
from contextlib import closing
from typing import BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app import sqs
from app.settings import Settings

logger = logging.getLogger(__name__)

# The bucket's folders (the seed's layout); S3 has no folders, these are key prefixes.
INPUT, ARCHIVE, REJECTED = "input/", "archive/", "rejected/"
STAGING, RESULTS = "staging/", "results/"
PREFIXES = (INPUT, ARCHIVE, REJECTED, STAGING, RESULTS)
# Error codes of an object, or of the version of it asked for, that is not there.
GONE = ("NoSuchKey", "NoSuchVersion", "404")


def _client(service: str, settings: Settings, timeout: float = 30):
    local = bool(settings.files_endpoint)
    return boto3.client(
        service, region_name=settings.aws_region, endpoint_url=settings.files_endpoint or None,
        # Local servers accept any key; real AWS takes boto3's usual credential chain.
        aws_access_key_id="test" if local else None,
        aws_secret_access_key="test" if local else None,
        config=Config(connect_timeout=timeout, read_timeout=timeout,
                      retries={"max_attempts": 3, "mode": "standard"},
                      # LocalStack's path-style URLs need no DNS for bucket names.
                      s3={"addressing_style": "path"} if local else None))


def s3_client(settings: Settings):
    """A boto3 S3 client for the configured endpoint and region."""
    return _client("s3", settings)


def sns_client(settings: Settings):
    """A boto3 SNS client for the configured endpoint and region."""
    return _client("sns", settings)


def delta_storage_options(settings: Settings) -> dict[str, str]:
    """object_store options for delta-rs and polars on the files bucket.

    conditional_put=etag makes concurrent commits safe without a DynamoDB lock table
    (S3 and LocalStack both honour If-Match/If-None-Match).
    """
    options = {"AWS_REGION": settings.aws_region, "conditional_put": "etag"}
    if settings.files_endpoint:
        options.update(AWS_ENDPOINT_URL=settings.files_endpoint, AWS_ACCESS_KEY_ID="test",
                       AWS_SECRET_ACCESS_KEY="test",
                       AWS_ALLOW_HTTP=str(settings.files_endpoint.startswith("http:")).lower())
    return options


def move(s3, bucket: str, source: str, target: str, version_id: str | None = None) -> bool:
    """Copy then delete an object (one version of it when given: a newer upload of the key
    stays); False if it is already gone (moved before)."""
    version = {"VersionId": version_id} if version_id else {}
    try:
        s3.copy_object(Bucket=bucket, Key=target,
                       CopySource={"Bucket": bucket, "Key": source, **version})
    except ClientError as exc:
        if exc.response["Error"]["Code"] in GONE:
            return False
        raise
    s3.delete_object(Bucket=bucket, Key=source, **version)
    return True


def delete_version(s3, bucket: str, key: str, version_id: str) -> None:
    """Delete one version of an object for good (no delete marker)."""
    s3.delete_object(Bucket=bucket, Key=key, VersionId=version_id)


def put_json(s3, bucket: str, key: str, document) -> None:
    """Write a JSON document to S3."""
    s3.put_object(Bucket=bucket, Key=key, ContentType="application/json",
                  Body=json.dumps(document, indent=2, ensure_ascii=False, default=str).encode())


def get_bytes(s3, bucket: str, key: str, version_id: str | None = None) -> bytes | None:
    """An object's bytes (of one version when given), or None when it is not there."""
    try:
        version = {"VersionId": version_id} if version_id else {}
        return s3.get_object(Bucket=bucket, Key=key, **version)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in GONE:
            return None
        raise


# Objects are streamed in slices of this size, never held whole.
CHUNK_BYTES = 1 << 20


class ObjectTooLarge(Exception):
    """An object is larger than the caller accepts; its size is in the message."""

    def __init__(self, key: str, size: int, max_bytes: int):
        super().__init__(f"too large: {size:,} bytes, above FILES_MAX_BYTES ({max_bytes:,})")
        self.key, self.size, self.max_bytes = key, size, max_bytes


def download(s3, bucket: str, key: str, target: BinaryIO, version_id: str | None = None,
             max_bytes: int = 0) -> int | None:
    """Stream an object (at version_id, else its current version) into target in slices;
    its size, or None when there is no such key. ObjectTooLarge, before any byte is read,
    when it is larger than max_bytes (0: no limit)."""
    request = {"Bucket": bucket, "Key": key}
    if version_id:
        request["VersionId"] = version_id
    try:
        response = s3.get_object(**request)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "NoSuchVersion", "404"):
            return None
        raise
    with closing(response["Body"]) as body:
        size = response["ContentLength"]
        if max_bytes and size > max_bytes:
            raise ObjectTooLarge(key, size, max_bytes)
        for chunk in body.iter_chunks(CHUNK_BYTES):
            target.write(chunk)
    target.flush()
    return size


_TOPIC_ARNS: dict[tuple[str, str, str], str] = {}


def topic_arn(sns, name: str) -> str:
    """ARN of a topic by name; CreateTopic is idempotent and returns it (cached per process)."""
    key = (sns.meta.endpoint_url, sns.meta.region_name, name)
    if key not in _TOPIC_ARNS:
        _TOPIC_ARNS[key] = sns.create_topic(Name=name)["TopicArn"]
    return _TOPIC_ARNS[key]


def publish(sns, topic: str, subject: str, message: dict) -> str:
    """Publish a JSON message on a topic (by name); return the SNS message id."""
    response = sns.publish(TopicArn=topic_arn(sns, topic), Subject=subject[:100],
                           Message=json.dumps(message, ensure_ascii=False, default=str))
    return response["MessageId"]


def ensure_files_resources(settings: Settings, sqs_client=None, s3=None, sns=None) -> dict:
    """Create the bucket, the events queue with its DLQ, the topics and the bucket's
    notification for ObjectCreated under input/ (idempotent); return what was made."""
    sqs_client = sqs_client or sqs.client(settings)
    s3, sns = s3 or s3_client(settings), sns or sns_client(settings)
    try:
        if settings.aws_region == "us-east-1":
            s3.create_bucket(Bucket=settings.files_bucket)
        else:
            s3.create_bucket(Bucket=settings.files_bucket, CreateBucketConfiguration={
                "LocationConstraint": settings.aws_region})
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou",
                                                  "BucketAlreadyExists"):
            raise
    # Each event's upload is read, archived and deleted by its version id: a newer upload
    # of the same name stays in input/ for its own event.
    s3.put_bucket_versioning(Bucket=settings.files_bucket,
                             VersioningConfiguration={"Status": "Enabled"})
    queue_url, dlq_url, queue_arn = ensure_files_queue(settings, sqs_client)
    current = s3.get_bucket_notification_configuration(Bucket=settings.files_bucket)
    wanted = {"Id": f"{settings.files_queue}-input", "QueueArn": queue_arn,
              "Events": ["s3:ObjectCreated:*"],
              "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": INPUT}]}}}
    others = [c for c in current.get("QueueConfigurations", []) if c.get("Id") != wanted["Id"]]
    mine = [c for c in current.get("QueueConfigurations", []) if c.get("Id") == wanted["Id"]]
    # Set only when different: every change makes S3 send another s3:TestEvent.
    if not mine or mine[0].get("QueueArn") != queue_arn:
        s3.put_bucket_notification_configuration(
            Bucket=settings.files_bucket,
            NotificationConfiguration={"QueueConfigurations": [*others, wanted],
                                       **{k: v for k, v in current.items()
                                          if k in ("TopicConfigurations",
                                                   "LambdaFunctionConfigurations")}})
    topics = {name: sns.create_topic(Name=name)["TopicArn"]
              for name in (settings.files_success_topic, settings.files_failure_topic)}
    return {"bucket": settings.files_bucket, "queue": queue_url, "dlq": dlq_url, **topics}


def ensure_files_queue(settings: Settings, sqs_client=None) -> tuple[str, str, str]:
    """Create the file events queue and its DLQ (idempotent); (URL, DLQ URL, queue ARN)."""
    sqs_client = sqs_client or sqs.client(settings)
    dlq_url = sqs_client.create_queue(QueueName=settings.files_dlq)["QueueUrl"]
    dlq_arn = _queue_arn(sqs_client, dlq_url)
    queue_url = sqs_client.create_queue(QueueName=settings.files_queue)["QueueUrl"]
    queue_arn = _queue_arn(sqs_client, queue_url)
    sqs_client.set_queue_attributes(QueueUrl=queue_url, Attributes={
        # The files tasks ride on this queue too: each must end before its message reappears.
        "VisibilityTimeout": str(settings.files_execution_timeout),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(settings.max_receive_count)}),
        # S3 may send to the queue, from this bucket only (the seed's queue policy).
        "Policy": json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage", "Resource": queue_arn,
            "Condition": {"ArnLike": {"aws:SourceArn":
                                      f"arn:aws:s3:::{settings.files_bucket}"}}}]}),
    })
    return queue_url, dlq_url, queue_arn


def _queue_arn(sqs_client, url: str) -> str:
    return sqs_client.get_queue_attributes(QueueUrl=url,
                                           AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
