"""Create or update the orders queues and their dead-letter queue: `python -m stack.init_queues`.

docker compose runs this once (the `init` service) before the workers start, so the
RedrivePolicy is in place before any message is received. Safe to run again: a rerun
applies changed settings (receive count, visibility, retention) to existing queues.
"""
from __future__ import annotations

import sys
import time

from botocore.exceptions import BotoCoreError, ClientError

from app import sqs
from app.settings import from_env_or_exit


def _transient(exc: Exception) -> bool:
    """True for errors of an SQS endpoint that is still starting."""
    if isinstance(exc, ClientError):
        # 4xx is a real answer (bad attribute, access denied): retrying won't help.
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500) >= 500
    return True  # connection refused, unknown host, timeouts


def main(attempts: int = 30, delay: float = 2.0) -> int:
    """Ensure the queues exist, retrying while the endpoint comes up; print their URLs."""
    settings = from_env_or_exit()  # a bad setting fails at once, not after the retries
    for attempt in range(1, attempts + 1):
        try:
            urls = sqs.ensure_queues(settings)
            break
        except (BotoCoreError, ClientError) as exc:
            if attempt == attempts or not _transient(exc):
                raise SystemExit(f"SQS at {settings.sqs_endpoint_url or 'AWS'}: {exc}") from None
            print(f"SQS at {settings.sqs_endpoint_url or 'AWS'} not ready ({exc}); "
                  f"try {attempt}/{attempts}, next in {delay:g}s", file=sys.stderr, flush=True)
            time.sleep(delay)
    print(f"orders queue: {urls.pop(settings.orders_queue)}", flush=True)
    print(f"dead-letter queue: {urls.pop(settings.dlq_name)}", flush=True)
    for url in urls.values():
        print(f"extra orders queue: {url}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
