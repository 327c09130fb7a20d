"""The orders.process task: a thin adapter over app.pipeline."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import redis

from app import pipeline
from app.orders import Incoming
from app.settings import from_env
from app.store import Store
from tasks.celery import app

logger = logging.getLogger(__name__)
settings = from_env()

# Faults that pass by themselves: retried with backoff. Anything else is a bug or a poison
# message: the task fails, the message is left on SQS and, after MAX_RECEIVE_COUNT
# receives, SQS moves it to the dead-letter queue.
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError)

_store: Store | None = None


def store() -> Store:
    """The Store of this process, created on first use (after the pool forked)."""
    global _store
    if _store is None:
        _store = Store.from_url(settings.redis_url)
    return _store


@app.task(name="orders.process", bind=True, autoretry_for=TRANSIENT_ERRORS,
          retry_backoff=2, retry_backoff_max=settings.retry_backoff_max, retry_jitter=True,
          max_retries=settings.task_max_retries)
def process_order(self, order, message_id: str | None = None, sent_at_ms: int | None = None):
    """Validate one order event and count it exactly once, or record why not."""
    sent_at = (datetime.fromtimestamp(sent_at_ms / 1000, timezone.utc)
               if sent_at_ms else None)
    incoming = Incoming(order, message_id or self.request.id, sent_at)
    [outcome] = pipeline.process([incoming], store(), settings)
    # One line per outcome; the extra fields become keys with LOG_FORMAT=json.
    logger.info("order %s: %s (task %s, message %s)%s", outcome.order_id, outcome.status,
                self.request.id, outcome.message_id,
                f": {outcome.reasons}" if outcome.reasons else "",
                extra={"task_id": self.request.id, "order_id": outcome.order_id,
                       "message_id": outcome.message_id, "outcome": outcome.status,
                       "reasons": outcome.reasons})
    return outcome.as_dict()
