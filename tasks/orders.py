"""The orders tasks: thin adapters over app.pipeline."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from functools import cached_property

import redis
from celery import Task, shared_task
from celery.backends.base import DisabledBackend
from celery.exceptions import Retry
from celery.signals import task_failure, task_retry, worker_init

from app import pipeline
from app.display import error_text
from app.orders import Incoming
from app.settings import Settings
from app.store import NotReplicated, Store
from app.store.lua import install_read_functions
from tasks.backpressure import retry_if_refused
from tasks.collector import BatchPartlyFailed
from tasks.names import PROCESS_BATCH, PROCESS_ORDER

logger = logging.getLogger(__name__)

# Faults that pass by themselves: retried with backoff. Anything else is a bug or a poison
# message: the task fails, the message is left on SQS and, after MAX_RECEIVE_COUNT
# receives, SQS moves it to the dead-letter queue. NotReplicated: too few replicas confirmed
# the batch (REDIS_WAIT_REPLICAS), so its messages must stay on SQS.
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, NotReplicated)


class OrderTask(Task):
    """Base of the orders tasks: the app's settings and Store, transient errors retried."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_jitter = True

    @property
    def settings(self) -> Settings:
        """The settings the app was built with."""
        return self.app.settings

    @property
    def retry_backoff_max(self) -> int:
        """Cap of the retry backoff (settings keep it below the visibility timeout)."""
        return self.settings.retry_backoff_max

    @property
    def max_retries(self) -> int:
        """Retries of a transient failure before the task fails."""
        return self.settings.task_max_retries

    @cached_property
    def backend(self) -> DisabledBackend:
        """No result store: an order's outcome is in Redis and in the events Flower shows.

        The files canvas keeps its results on the control-plane Redis; an orders task
        touching that store on every retry would fail with it, when only the aggregates'
        Redis should matter (it did: retries during a Redis outage hung until the time
        limit killed the pool process).
        """
        return DisabledBackend(self.app)

    @cached_property
    def store(self) -> Store:
        """This process's Store, created on first use (after the pool forked)."""
        return Store.from_settings(self.settings)


def _incoming(body, message_id: str, sent_at_ms: int | None,
              refused_task: str | None = None) -> Incoming:
    sent_at = datetime.fromtimestamp(sent_at_ms / 1000, timezone.utc) if sent_at_ms else None
    return Incoming(body, message_id, sent_at, refused_task)


def _process(task: OrderTask, incoming: list[Incoming]) -> list[pipeline.Outcome]:
    """pipeline.process, with a write the store refused turned into the task's Retry."""
    try:
        return pipeline.process(incoming, task.store, task.settings)
    except Exception as exc:
        if (retry := retry_if_refused(task, exc)) is not None:
            raise retry from exc
        raise


def _log(outcome: pipeline.Outcome, task_id: str):
    # One line per outcome; the extra fields become keys with LOG_FORMAT=json. Ids come
    # from senders: text logs escape every message (tasks.celery.EscapedMessages).
    logger.info("order %s: %s (task %s, message %s)%s", outcome.order_id, outcome.status,
                task_id, outcome.message_id,
                f": {outcome.reasons}" if outcome.reasons else "",
                extra={"task_id": task_id, "order_id": outcome.order_id,
                       "message_id": outcome.message_id, "outcome": outcome.status,
                       "reasons": outcome.reasons})


@shared_task(name=PROCESS_ORDER, bind=True, base=OrderTask,
             Request="tasks.backpressure:StoreRequest")
def process_order(self, order, message_id: str | None = None, sent_at_ms: int | None = None,
                  refused_task: str | None = None):
    """Validate one order event and count it exactly once, or record why not."""
    [outcome] = _process(self, [_incoming(order, message_id or self.request.id,
                                          sent_at_ms, refused_task)])
    _log(outcome, self.request.id)
    return outcome.as_dict()


@shared_task(name=PROCESS_BATCH, bind=True, base=OrderTask, Request="tasks.collector:BatchRequest")
def process_batch(self, messages: list[dict]):
    """Validate up to ten raw order messages and apply them in one Redis call."""
    incoming = [_incoming(m["body"], m["message_id"], m["sent_at_ms"], m.get("refused_task"))
                for m in messages]
    try:
        outcomes = _process(self, incoming)
        failed = {}
    except (Retry, *TRANSIENT_ERRORS):
        raise
    except Exception:
        # One poison message must not hold back its neighbours: apply them one by one,
        # so only the culprit is left to SQS's redelivery and dead-lettering.
        logger.warning("batch %s failed as a whole; applying its orders one by one",
                       self.request.id, exc_info=True)
        outcomes, failed = _one_by_one(self, incoming)
    for outcome in outcomes:
        _log(outcome, self.request.id)
    if failed:
        raise BatchPartlyFailed(sorted(failed), "; ".join(
            f"{i}: {error_text(e)}" for i, e in failed.items()))
    # The task-succeeded event carries this: Flower's task list shows orders per batch.
    # (Each order's own outcome is on its log line.)
    return pipeline.tally(outcomes)


def _one_by_one(task: OrderTask, incoming: list[Incoming]):
    outcomes, failed = [], {}
    for message in incoming:
        try:
            outcomes += _process(task, [message])
        except (Retry, *TRANSIENT_ERRORS):
            raise
        except Exception as exc:
            logger.error("message %s failed: %s", message.message_id, exc, exc_info=True,
                         extra={"message_id": message.message_id})
            failed[message.message_id] = exc
    return outcomes, failed


@worker_init.connect
def install_the_apis_read_functions(sender=None, **kwargs):
    """Install the functions the API reads with: its Redis user may not (app/store/lua.py)."""
    settings = getattr(sender.app if sender else None, "settings", None)
    if settings is None:
        return
    try:
        install_read_functions(Store.from_settings(settings).redis)
    except redis.RedisError as exc:
        # Redis not up yet: the first write that finds the script cache empty installs them.
        logger.warning("could not install the API's read functions: %s", exc)


@task_retry.connect
def count_retry(sender=None, **kwargs):
    """Count retries for /metrics."""
    _count_task_event(sender, "retried")


@task_failure.connect
def count_failure(sender=None, **kwargs):
    """Count failed task runs (their messages go back to SQS) for /metrics."""
    _count_task_event(sender, "failed")


def _count_task_event(task, event: str):
    if not isinstance(task, OrderTask):
        return
    try:
        task.store.count_task_event(event)
    except redis.RedisError as exc:  # often the very reason of the retry
        logger.warning("could not count %s task: %s", event, exc)
