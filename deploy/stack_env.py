"""A deployed stack's outputs as the processes' environment: `python deploy/stack_env.py STACK`.

Each output of deploy/cloudformation/pipeline.yaml is an environment variable of
app/settings.py in CamelCase (CloudFormation allows only letters and digits in an
output's name): OrdersQueueUrl is ORDERS_QUEUE_URL. The lines are `NAME=value`, for
`env`, a Kubernetes ConfigMap (`kubectl create configmap --from-env-file`) or a shell
(`set -a; . ./pipeline.env; set +a`). boto3's usual configuration applies (AWS_PROFILE,
AWS_REGION, an instance profile...).
"""
from __future__ import annotations

import re
import sys


def variable_name(output_key: str) -> str:
    """The environment variable of an output: OrdersQueueUrl -> ORDERS_QUEUE_URL."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", output_key).upper()


def environment(outputs: list[dict]) -> dict[str, str]:
    """Variable -> value for describe_stacks' Outputs."""
    return {variable_name(o["OutputKey"]): o["OutputValue"] for o in outputs}


def main(argv: list[str] | None = None) -> int:
    """Print NAME=value for each output of the stack named in argv."""
    import boto3

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python deploy/stack_env.py STACK_NAME", file=sys.stderr)
        return 2
    [stack] = boto3.client("cloudformation").describe_stacks(StackName=argv[0])["Stacks"]
    for name, value in environment(stack.get("Outputs", [])).items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
