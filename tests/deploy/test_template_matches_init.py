"""`make run` / `python -m stack.init_queues` / `stack.init_files` create what the template does.

Both are run on the same LocalStack for the same settings (under different names) and the
resources they made are compared as SQS, S3 and SNS report them: queue by queue, the
visibility timeout, the retention, the redrive policy (count and which queue), the files
queue's policy and the bucket's notification. What the template adds on top (the bucket's
versioning, public access block and encryption, the queues' and topics' encryption) is
checked on its own.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from app import aws, sqs
from app.settings import Settings
from deployment import aws_client, deploy, queue_attributes, stack_env, stack_resources

COMPARED = ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "FifoQueue",
            "ContentBasedDeduplication")


def as_created(endpoint_url: str, name: str, roles: dict[str, str]) -> dict:
    """A queue's compared attributes, its redrive target named by role, not by name."""
    attributes = queue_attributes(endpoint_url, name)
    shown = {key: attributes.get(key) for key in COMPARED}
    if "RedrivePolicy" in attributes:
        policy = json.loads(attributes["RedrivePolicy"])
        shown["RedrivePolicy"] = (roles[policy["deadLetterTargetArn"].rsplit(":", 1)[1]],
                                  int(policy["maxReceiveCount"]))
    return shown


def files_queue_policy(endpoint_url: str, name: str, bucket: str) -> list:
    """The files queue's policy statements, with its own ARN and bucket named generically."""
    attributes = queue_attributes(endpoint_url, name)
    text = attributes["Policy"].replace(attributes["QueueArn"], "QUEUE").replace(bucket, "BUCKET")
    return [{key: statement[key] for key in ("Effect", "Principal", "Action", "Resource")}
            | {"SourceArn": statement["Condition"]["ArnLike"]["aws:SourceArn"]}
            for statement in json.loads(text)["Statement"]]


def notification(endpoint_url: str, bucket: str) -> list:
    """The bucket's queue notifications: events, key filter, and the queue's name."""
    configured = aws_client("s3", endpoint_url).get_bucket_notification_configuration(
        Bucket=bucket)
    return [(sorted(c["Events"]), [(r["Name"].lower(), r["Value"])
                                   for r in c["Filter"]["Key"]["FilterRules"]],
             c["QueueArn"].rsplit(":", 1)[1]) for c in configured["QueueConfigurations"]]


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_init_queues_and_init_files_create_what_the_template_creates(sqs_server, fifo):
    tag = uuid.uuid4().hex[:8]
    base = Settings(sqs_endpoint_url=sqs_server.endpoint_url)
    # The template's OrdersFifo=true adds ".fifo"; ORDERS_QUEUE names the queue whole.
    suffix = ".fifo" if fifo else ""

    def named(prefix: str) -> Settings:
        return replace(base, orders_queue=f"{prefix}-{tag}-orders{suffix}",
                       files_queue=f"{prefix}-{tag}-fq",
                       files_bucket=f"{prefix}-{tag}-bucket",
                       files_success_topic=f"{prefix}-{tag}-done",
                       files_failure_topic=f"{prefix}-{tag}-failed")

    init, cfn = named("init"), named("cfn")
    sqs.ensure_queues(init)  # what python -m stack.init_queues and make run do
    aws.ensure_files_resources(init)  # python -m stack.init_files
    stack_name = f"cmp-{tag}"
    outputs = deploy(sqs_server.endpoint_url, stack_name,
                     OrdersQueueName=cfn.orders_queue.removesuffix(suffix),
                     OrdersFifo=str(fifo).lower(),
                     FilesQueueName=cfn.files_queue, FilesBucketName=cfn.files_bucket,
                     SuccessTopicName=cfn.files_success_topic,
                     FailureTopicName=cfn.files_failure_topic,
                     MaxReceiveCount=cfn.max_receive_count,
                     VisibilityTimeout=cfn.visibility_timeout,
                     OrdersRetentionSeconds=cfn.orders_retention_seconds,
                     FilesExecutionTimeout=cfn.files_execution_timeout)["Outputs"]
    # The stack's outputs name the queues as the settings do.
    named_by_outputs = stack_env.environment(outputs)
    assert (named_by_outputs["ORDERS_QUEUE"], named_by_outputs["ORDERS_DLQ"]) == (
        cfn.orders_queue, cfn.dlq_name)

    endpoint = sqs_server.endpoint_url
    seen = {}
    for made in (init, cfn):
        roles = {made.orders_queue: "orders", made.dlq_name: "orders DLQ",
                 made.files_queue: "files", made.files_dlq: "files DLQ"}
        seen[made.orders_queue] = {
            "queues": {role: as_created(endpoint, name, roles) for name, role in roles.items()},
            "policy": files_queue_policy(endpoint, made.files_queue, made.files_bucket),
            "notified": [(events, rules, roles[queue]) for events, rules, queue
                         in notification(endpoint, made.files_bucket)]}
    by_init, by_cfn = seen[init.orders_queue], seen[cfn.orders_queue]
    assert by_cfn["queues"] == by_init["queues"]
    assert {role: made["FifoQueue"] for role, made in by_cfn["queues"].items()} == {
        "orders": "true" if fifo else None, "orders DLQ": "true" if fifo else None,
        "files": None, "files DLQ": None}
    assert by_cfn["queues"]["orders"]["RedrivePolicy"] == ("orders DLQ", base.max_receive_count)
    assert by_cfn["queues"]["files"]["RedrivePolicy"] == ("files DLQ", base.max_receive_count)
    assert by_cfn["queues"]["orders DLQ"]["MessageRetentionPeriod"] == str(
        sqs.DLQ_RETENTION_SECONDS)
    assert by_cfn["policy"] == by_init["policy"]
    assert by_cfn["notified"] == by_init["notified"] == [
        (["s3:ObjectCreated:*"], [("prefix", aws.INPUT)], "files")]

    topics = {arn.rsplit(":", 1)[1] for arn in (
        t["TopicArn"] for t in aws_client("sns", endpoint).list_topics()["Topics"])}
    assert {init.files_success_topic, init.files_failure_topic} <= topics
    resources = stack_resources(endpoint, stack_name)
    made_topics = [resources[t].rsplit(":", 1)[1] for t in ("SuccessTopic", "FailureTopic")]
    assert made_topics == [cfn.files_success_topic, cfn.files_failure_topic]

    # What the template adds to the bucket.
    s3 = aws_client("s3", endpoint)
    assert s3.get_bucket_versioning(Bucket=cfn.files_bucket)["Status"] == "Enabled"
    assert all(s3.get_public_access_block(Bucket=cfn.files_bucket)[
        "PublicAccessBlockConfiguration"].values())
    [rule] = s3.get_bucket_encryption(Bucket=cfn.files_bucket)[
        "ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    for name in (cfn.orders_queue, cfn.dlq_name, cfn.files_queue, cfn.files_dlq):
        assert queue_attributes(endpoint, name)["SqsManagedSseEnabled"] == "true"
    sns = aws_client("sns", endpoint)
    for topic in ("SuccessTopic", "FailureTopic"):
        assert sns.get_topic_attributes(TopicArn=resources[topic])["Attributes"][
            "KmsMasterKeyId"] == "alias/aws/sns"
