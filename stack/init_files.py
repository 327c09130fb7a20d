"""Create the batch files resources: `python -m stack.init_files`.

The bucket (FILES_BUCKET), the events queue FILES_QUEUE with its DLQ and RedrivePolicy,
the SNS topics and the bucket's ObjectCreated notification for input/. Safe to run again;
against real AWS as well (SQS_ENDPOINT_URL and FILES_ENDPOINT_URL empty).
"""
from __future__ import annotations

import sys

from app import aws
from app.settings import from_env_or_exit


def main() -> int:
    """Ensure the resources exist and print them."""
    made = aws.ensure_files_resources(from_env_or_exit())
    for name, value in made.items():
        print(f"{name}: {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
