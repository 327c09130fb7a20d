"""Create the batch files resources: `python -m stack.init_files`.

The bucket (FILES_BUCKET), the events queue FILES_QUEUE with its DLQ and RedrivePolicy,
the SNS topics and the bucket's ObjectCreated notification for input/. Safe to run again;
against real AWS as well (SQS_ENDPOINT_URL and FILES_ENDPOINT_URL empty).
"""
from __future__ import annotations

import sys

from botocore.exceptions import BotoCoreError, ClientError

from app import aws
from app.settings import from_env_or_exit


def main() -> int:
    """Ensure the resources exist and print them."""
    settings = from_env_or_exit()
    try:
        made = aws.ensure_files_resources(settings)
    except (BotoCoreError, ClientError) as exc:
        raise SystemExit(f"S3, SQS and SNS at {settings.files_endpoint or 'AWS'}: {exc}") from None
    for name, value in made.items():
        print(f"{name}: {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
