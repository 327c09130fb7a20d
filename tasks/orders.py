"""The orders tasks: thin adapters over app.pipeline."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import redis
from celery.signals import task_failure, task_retry

from app import pipeline
from app.orders import Incoming
from app.settings import from_env
from app.store import Store
from tasks.batching import BATCH_TASK, BatchPartlyFailed
from tasks.celery import app

logger = logging.getLogger(__name__)
settings = from_env()

# Faults that pass by themselves: retried with backoff. Anything else is a bug or a poison
# message: the task fails, the message is left on SQS and, after MAX_RECEIVE_COUNT
# receives, SQS moves it to the dead-letter queue.
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError)
RETRY_OPTIONS = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": 2, "retry_jitter": True,
                 "retry_backoff_max": settings.retry_backoff_max,
                 "max_retries": settings.task_max_retries}

_store: Store | None = None


def store() -> Store:
    """The Store of this process, created on first use (after the pool forked)."""
    global _store
    if _store is None:
        _store = Store.from_url(settings.redis_url)
    return _store


def _incoming(body, message_id: str, sent_at_ms: int | None) -> Incoming:
    sent_at = datetime.fromtimestamp(sent_at_ms / 1000, timezone.utc) if sent_at_ms else None
    return Incoming(body, message_id, sent_at)


def _log(outcome: pipeline.Outcome, task_id: str):
    # One line per outcome; the extra fields become keys with LOG_FORMAT=json.
    logger.info("order %s: %s (task %s, message %s)%s", outcome.order_id, outcome.status,
                task_id, outcome.message_id,
                f": {outcome.reasons}" if outcome.reasons else "",
                extra={"task_id": task_id, "order_id": outcome.order_id,
                       "message_id": outcome.message_id, "outcome": outcome.status,
                       "reasons": outcome.reasons})


@app.task(name="orders.process", bind=True, **RETRY_OPTIONS)
def process_order(self, order, message_id: str | None = None, sent_at_ms: int | None = None):
    """Validate one order event and count it exactly once, or record why not."""
    [outcome] = pipeline.process([_incoming(order, message_id or self.request.id, sent_at_ms)],
                                 store(), settings)
    _log(outcome, self.request.id)
    return outcome.as_dict()


@app.task(name=BATCH_TASK, bind=True, Request="tasks.batching:BatchRequest", **RETRY_OPTIONS)
def process_batch(self, messages: list[dict]):
    """Validate up to ten raw order messages and apply them in one Redis call."""
    incoming = [_incoming(m["body"], m["message_id"], m["sent_at_ms"]) for m in messages]
    try:
        outcomes = pipeline.process(incoming, store(), settings)
        failed = {}
    except TRANSIENT_ERRORS:
        raise
    except Exception:
        # One poison message must not hold back its neighbours: apply them one by one,
        # so only the culprit is left to SQS's redelivery and dead-lettering.
        logger.warning("batch %s failed as a whole; applying its orders one by one",
                       self.request.id, exc_info=True)
        outcomes, failed = _one_by_one(incoming)
    for outcome in outcomes:
        _log(outcome, self.request.id)
    if failed:
        raise BatchPartlyFailed(sorted(failed), "; ".join(
            f"{i}: {type(e).__name__}: {e}" for i, e in failed.items()))
    # The task-succeeded event carries this: Flower's task list shows orders per batch.
    # (Each order's own outcome is on its log line.)
    return pipeline.tally(outcomes)


def _one_by_one(incoming: list[Incoming]):
    outcomes, failed = [], {}
    for message in incoming:
        try:
            outcomes += pipeline.process([message], store(), settings)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            logger.error("message %s failed: %s", message.message_id, exc, exc_info=True,
                         extra={"message_id": message.message_id})
            failed[message.message_id] = exc
    return outcomes, failed


@task_retry.connect
def count_retry(**kwargs):
    """Count retries for /metrics."""
    _count_task_event("retried")


@task_failure.connect
def count_failure(**kwargs):
    """Count failed task runs (their messages go back to SQS) for /metrics."""
    _count_task_event("failed")


def _count_task_event(event: str):
    try:
        store().count_task_event(event)
    except redis.RedisError as exc:  # often the very reason of the retry
        logger.warning("could not count %s task: %s", event, exc)
