"""SQS_STS_ROLE_ARN: the worker's SQS transport assumes a role (kombu's sts_role_arn,
celery/kombu#1321), here against the session LocalStack's STS.

kombu asks STS through `boto3.client("sts")`, that is boto3's default chain and endpoint:
AWS_ENDPOINT_URL_STS points it at LocalStack, whose STS answers AssumeRole with temporary
credentials (LocalStack does not enforce the role's trust or permissions: on AWS, the role
must trust the worker's own role and allow WorkerPolicy's SQS calls).
"""
from __future__ import annotations

import json
import random
import uuid
from dataclasses import replace
from decimal import Decimal

import boto3
import pytest

from app import sqs
from bench.order_builders import make_orders
from deployment import aws_client
from stack.services import wait_for
from tasks.celery import create_celery


@pytest.fixture
def role_arn(sqs_server) -> str:
    """A role in LocalStack's IAM that anyone in its account may assume."""
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::000000000000:root"},
        "Action": "sts:AssumeRole"}]}
    return aws_client("iam", sqs_server.endpoint_url).create_role(
        RoleName=f"orders-reader-{uuid.uuid4().hex[:8]}",
        AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


@pytest.fixture
def sts_environment(sqs_server) -> dict[str, str]:
    """boto3's default chain and STS endpoint, as a worker on LocalStack has them."""
    return {"AWS_ENDPOINT_URL_STS": sqs_server.endpoint_url, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def test_the_setting_reaches_kombus_transport_options(settings):
    options = create_celery(replace(settings, sqs_sts_role_arn="arn:aws:iam::123456789012:"
                                    "role/orders")).conf.broker_transport_options
    assert options["sts_role_arn"] == "arn:aws:iam::123456789012:role/orders"
    assert "sts_role_arn" not in create_celery(settings).conf.broker_transport_options


def test_the_sqs_channel_consumes_with_the_assumed_roles_credentials(
        settings, role_arn, sts_environment, monkeypatch):
    for name, value in sts_environment.items():
        monkeypatch.setenv(name, value)
    app = create_celery(replace(settings, sqs_sts_role_arn=role_arn))
    with app.connection_for_read() as connection:
        client = connection.default_channel.sqs(queue=settings.orders_queue)
        # botocore keeps a client's credentials with its request signer.
        credentials = client._request_signer._credentials.get_frozen_credentials()
        assert credentials.access_key != "test" and credentials.token
        assert client.get_queue_attributes(QueueUrl=settings.orders_url, AttributeNames=[
            "QueueArn"])["Attributes"]["QueueArn"].endswith(f":{settings.orders_queue}")
    identity = boto3.client(
        "sts", endpoint_url=settings.sqs_endpoint_url, region_name="us-east-1",
        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token).get_caller_identity()
    role_name = role_arn.rsplit("/", 1)[1]
    assert f":assumed-role/{role_name}/Celery" in identity["Arn"]


def test_a_worker_with_sqs_sts_role_arn_counts_orders(settings, role_arn, sts_environment,
                                                      start_worker, store):
    start_worker(settings=replace(settings, sqs_sts_role_arn=role_arn), env=sts_environment)
    orders = make_orders("STS", 20, users=4, rng=random.Random(11))
    for batch in sqs.chunks(orders):
        assert sqs.send_bodies(sqs.client(settings), settings.orders_url,
                               [json.dumps(body) for body, _ in batch]) == []
    wait_for(lambda: store.outcomes()["counted"] >= len(orders), timeout=90,
             message="the orders counted by the worker on the assumed role")
    totals = store.global_stats()
    assert Decimal(totals.total_revenue_cents) / 100 == sum(
        (value for _, value in orders), Decimal(0))
