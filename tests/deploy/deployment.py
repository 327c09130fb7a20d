"""Helpers of tests/deploy: deploy deploy/cloudformation/pipeline.yaml to the session's
LocalStack and run processes on nothing but its outputs (plus Redis URL and endpoint)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import uuid
from pathlib import Path

import boto3
import requests

from app import sqs
from app.settings import from_env
from app.store import Store
from stack.services import Process, free_port, wait_for

# Not imported from tests/conftest.py: this directory's conftest.py would shadow it.
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
TEMPLATE = DEPLOY / "cloudformation" / "pipeline.yaml"
# Database of this package's processes on the session's redis-server (its control plane
# takes the next one): the other tests flush database 0 as they go.
REDIS_DB = 4


def _load_stack_env():
    spec = importlib.util.spec_from_file_location("stack_env", DEPLOY / "stack_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stack_env = _load_stack_env()


def aws_client(service: str, endpoint_url: str):
    """A boto3 client on the local endpoint (LocalStack accepts any key)."""
    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def deploy(endpoint_url: str, stack_name: str, timeout: float = 120, **parameters) -> dict:
    """create_stack with the template and parameters; wait for CREATE_COMPLETE; its outputs."""
    cloudformation = aws_client("cloudformation", endpoint_url)
    cloudformation.create_stack(StackName=stack_name, TemplateBody=TEMPLATE.read_text(),
                                Parameters=[{"ParameterKey": k, "ParameterValue": str(v)}
                                            for k, v in parameters.items()])
    deadline = time.monotonic() + timeout
    while True:
        [stack] = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = cloudformation.describe_stack_events(StackName=stack_name)["StackEvents"]
        raise AssertionError(f"{stack_name}: {stack['StackStatus']} "
                             f"{stack.get('StackStatusReason')}: " + "; ".join(
                                 f"{e['LogicalResourceId']} {e['ResourceStatus']} "
                                 f"{e.get('ResourceStatusReason', '')}" for e in events[:8]))
    return stack


def base_environment() -> dict[str, str]:
    """What any process needs that is not the pipeline's: PATH, HOME, locale."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "PYTHONUNBUFFERED": "1"}


class DeployedStack:
    """A deployed stack: its outputs as environment, and the local pieces added to it."""

    def __init__(self, stack: dict, endpoint_url: str, redis_url: str):
        self.name = stack["StackName"]
        self.outputs = stack_env.environment(stack["Outputs"])
        self.endpoint_url = endpoint_url
        self.redis_url = redis_url

    def environment(self, **extra: str) -> dict[str, str]:
        """The processes' environment: the outputs, the Redis URL, the local endpoint."""
        return {**base_environment(), **self.outputs, "REDIS_URL": self.redis_url,
                "SQS_ENDPOINT_URL": self.endpoint_url, **extra}

    @property
    def settings(self):
        """The Settings that environment gives (what the processes see)."""
        return from_env(self.environment())


def start_worker(stack: DeployedStack, log_dir: Path, name: str = "deployed",
                 **extra: str) -> Process:
    """`celery -A tasks worker` on the stack's environment; returns once it is ready."""
    process = Process(f"worker-{name}", [BIN / "celery", "-A", "tasks", "worker", "--loglevel",
                                         "INFO", "--concurrency", "2", "-n", f"{name}@%h"],
                      env=stack.environment(**extra), log_dir=log_dir, cwd=ROOT)
    process.start()
    process.wait_ready(lambda: b" ready." in process.log_path.read_bytes(), 90,
                       "the worker on the stack's outputs to say it is ready")
    return process


def start_api(stack: DeployedStack, log_dir: Path) -> tuple[Process, str]:
    """The API under gunicorn on the stack's environment; (process, base URL)."""
    port = free_port()
    process = Process("gunicorn-deployed", [BIN / "gunicorn", "-c", "web/gunicorn.conf.py",
                                            "web:create_app()"],
                      env=stack.environment(API_BIND=f"127.0.0.1:{port}", API_WORKERS="2"),
                      log_dir=log_dir, cwd=ROOT)
    process.start()
    base = f"http://127.0.0.1:{port}"

    def answers():
        assert process.running, process.log_tail()
        try:
            return requests.get(f"{base}/health", timeout=5).status_code > 0
        except requests.RequestException:
            return False

    wait_for(answers, timeout=60, message="the API on the stack's outputs to answer")
    return process, base


class TopicListener:
    """A queue subscribed to the stack's topics: what they announced, as (topic, message)."""

    def __init__(self, endpoint_url: str, topic_arns: list[str]):
        self.sqs = aws_client("sqs", endpoint_url)
        self.url = self.sqs.create_queue(QueueName=f"listen-{uuid.uuid4().hex[:10]}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        sns = aws_client("sns", endpoint_url)
        for topic_arn in topic_arns:
            sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)
        self.received: list[tuple[str, dict]] = []

    def poll(self) -> list[tuple[str, dict]]:
        for message in self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10,
                                                WaitTimeSeconds=1).get("Messages", []):
            envelope = json.loads(message["Body"])
            self.received.append((envelope["TopicArn"].rsplit(":", 1)[1],
                                  json.loads(envelope["Message"])))
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return self.received


def stack_resources(endpoint_url: str, stack_name: str) -> dict[str, str]:
    """Logical id -> physical id of a deployed stack's resources."""
    cloudformation = aws_client("cloudformation", endpoint_url)
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in
            cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]}


def queue_attributes(endpoint_url: str, name: str) -> dict[str, str]:
    """Every attribute of a queue, by name."""
    client = aws_client("sqs", endpoint_url)
    url = client.get_queue_url(QueueName=name)["QueueUrl"]
    return client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def deploy_fresh(sqs_server, redis_server, **parameters) -> DeployedStack:
    """The template deployed under fresh names (and parameters), on a flushed Redis database."""
    name = f"dep-{uuid.uuid4().hex[:8]}"
    stack = deploy(sqs_server.endpoint_url, name, **{
        "OrdersQueueName": f"{name}-orders", "FilesQueueName": f"{name}-files",
        "FilesBucketName": f"{name}-files", "SuccessTopicName": f"{name}-done",
        "FailureTopicName": f"{name}-failed", "MaxReceiveCount": 3, **parameters})
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    deployed = DeployedStack(stack, sqs_server.endpoint_url, redis_url)
    Store.from_url(redis_url).redis.flushdb()
    Store.from_url(deployed.settings.control_plane_url).redis.flushdb()
    return deployed


def depth(stack: DeployedStack, queue: str) -> dict[str, int]:
    """Visible, in-flight and delayed counts of one of the stack's queues."""
    return sqs.depth(stack.settings, queue)
