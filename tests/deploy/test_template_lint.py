"""The template passes cfn-lint with no warning, and parliament finds nothing in its policies.

The policies are checked as deployed (IAM resolved every reference), with and without a
KMS key; a policy with a known fault shows that parliament's check can fail here.
"""
from __future__ import annotations

import json
import subprocess
import uuid
from urllib.parse import unquote

import pytest
import yaml
from parliament import analyze_policy_string

from app import aws
from deployment import (BIN, TEMPLATE, DeployedStack, aws_client, deploy, deploy_fresh,
                        stack_resources)

POLICIES = ("WorkerPolicy", "ApiPolicy", "ProducerPolicy", "OperatorPolicy", "BeatPolicy")
KEY_ARN = "arn:aws:kms:us-east-1:000000000000:key/0b1c7d2e-3f4a-4b5c-8d6e-7f8091a2b3c4"


@pytest.fixture(scope="module")
def deployed(sqs_server, redis_server) -> DeployedStack:
    """The template deployed once for this module (a conftest.py here would shadow
    tests/conftest.py, which other directories import by name)."""
    return deploy_fresh(sqs_server, redis_server)


def test_cfn_lint_passes_with_no_warning():
    linted = subprocess.run([BIN / "cfn-lint", "--format", "parseable", str(TEMPLATE)],
                            capture_output=True, text=True, timeout=300)
    assert (linted.returncode, linted.stdout, linted.stderr) == (0, "", "")


def policy_documents(endpoint_url: str, stack_name: str) -> dict[str, dict]:
    """Logical id -> the deployed default version of each managed policy the stack has."""
    iam = aws_client("iam", endpoint_url)
    resources = stack_resources(endpoint_url, stack_name)
    documents = {}
    for logical_id in (p for p in POLICIES if p in resources):
        arn = resources[logical_id]
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"][
            "Document"]
        documents[logical_id] = json.loads(unquote(document)) if isinstance(document, str) \
            else document
    return documents


def findings(document: dict) -> list[str]:
    """parliament's findings for one policy document, as text."""
    return [f"{f.issue}: {f.detail} at {f.location}"
            for f in analyze_policy_string(json.dumps(document)).findings]


def actions(document: dict) -> set[str]:
    """Every action a policy allows."""
    named = set()
    for statement in document["Statement"]:
        listed = statement["Action"]
        named |= {listed} if isinstance(listed, str) else set(listed)
    return named


@pytest.fixture(scope="module")
def with_key(sqs_server):
    """The template deployed with a customer managed key's ARN."""
    name = f"key-{uuid.uuid4().hex[:8]}"
    deploy(sqs_server.endpoint_url, name, OrdersQueueName=f"{name}-orders",
           FilesQueueName=f"{name}-files", FilesBucketName=f"{name}-files",
           SuccessTopicName=f"{name}-done", FailureTopicName=f"{name}-failed", KmsKeyArn=KEY_ARN)
    return name


def test_parliament_finds_nothing_in_the_deployed_policies(deployed, with_key):
    for stack_name in (deployed.name, with_key):
        for logical_id, document in policy_documents(deployed.endpoint_url, stack_name).items():
            assert findings(document) == [], f"{stack_name} {logical_id}"


def test_parliament_does_report_a_faulty_policy():
    # sqs:DeleteMessageBatch is no IAM action (DeleteMessage covers the batch call), and
    # sqs:SendMessage on "*" names no queue: both kinds of fault the policies avoid.
    faulty = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sqs:DeleteMessageBatch",
         "Resource": "arn:aws:sqs:us-east-1:000000000000:orders-queue"},
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}]}
    issues = " ".join(findings(faulty))
    assert "UNKNOWN_ACTION" in issues and "RESOURCE_STAR" in issues, issues


def test_each_process_kind_gets_only_its_calls(deployed, with_key):
    plain = policy_documents(deployed.endpoint_url, deployed.name)
    assert actions(plain["ProducerPolicy"]) == {"sqs:SendMessage"}
    assert actions(plain["ApiPolicy"]) == {"sqs:GetQueueUrl", "sqs:GetQueueAttributes"}
    assert "sqs:PurgeQueue" not in actions(plain["WorkerPolicy"])
    assert not any(a.startswith(("s3:", "sns:")) for a in actions(plain["OperatorPolicy"]))
    # Beat sends its upkeep tasks to the files queue and touches nothing else.
    assert actions(plain["BeatPolicy"]) == {"sqs:SendMessage", "sqs:GetQueueAttributes"}
    files_queue = stack_resources(deployed.endpoint_url, deployed.name)["FilesQueue"]
    [beat] = plain["BeatPolicy"]["Statement"]
    assert beat["Resource"].rsplit(":", 1)[1] == files_queue.rsplit("/", 1)[1]
    # The key appears only when one is given, for the processes that encrypt or decrypt.
    keyed = policy_documents(deployed.endpoint_url, with_key)
    assert not any(a.startswith("kms:") for doc in plain.values() for a in actions(doc))
    assert actions(keyed["ProducerPolicy"]) == {"sqs:SendMessage", "kms:GenerateDataKey"}
    assert actions(keyed["BeatPolicy"]) == {"sqs:SendMessage", "sqs:GetQueueAttributes",
                                            "kms:GenerateDataKey"}
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= actions(keyed["WorkerPolicy"])
    assert not any(a.startswith("kms:") for a in actions(keyed["ApiPolicy"]))
    for document in plain.values():
        for statement in document["Statement"]:
            assert statement["Resource"] != "*" and "*" not in statement["Resource"]


def template() -> dict:
    """The template as data, its intrinsic functions (!Ref, !If...) read as None."""
    class Loader(yaml.SafeLoader):
        pass
    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(TEMPLATE.read_text(), Loader=Loader)


def test_the_bucket_expires_what_maintain_deleted_under_staging():
    # Read from the template: LocalStack's CloudFormation (the session's) creates the bucket
    # without its LifecycleConfiguration (get_bucket_lifecycle_configuration: none).
    bucket = template()["Resources"]["FilesBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    [rule] = bucket["LifecycleConfiguration"]["Rules"]
    assert (rule["Status"], rule["Prefix"], rule["ExpiredObjectDeleteMarker"]) == (
        "Enabled", aws.STAGING, True)
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] >= 1
