"""Backpressure: while the store refuses writes, the worker receives nothing from SQS.

A Redis that is up but refuses writes (OOM under noeviction, READONLY, MISCONF, BUSY,
NOPERM, a cluster that is down: app.redis_client.write_refusal) is a fault of the
infrastructure, not of the orders. Orders received meanwhile would only fail, burn their
receives and reach the dead-letter queue within minutes. So:

- the orders task retries a refused write with Celery's retry (the batch goes back to
  the queue as a task message of its own; backoff capped at RETRY_BACKOFF_MAX), with no
  cap on the count: the refusal lasts as long as the fault does;
- the worker's main process hears of it (StoreRequest.on_retry) and closes the gate: the
  receive chains of tasks/sqs/receive.py park instead of receiving;
- while closed, the gate tries a write of its own every PROBE_SECONDS; the first that
  goes through, or an orders task that succeeds, opens it and wakes the chains.

The receive side's own gate rather than Celery's cancel_consumer/add_consumer: those
end and restart kombu's receive chains (receive.py counts and sizes them) and go through
remote control; parking keeps every chain as it is, and resuming is what receive.py
already does when the prefetch window frees room. One line is logged when consumption
pauses and one when it resumes.
"""
from __future__ import annotations

import logging
import weakref
from time import monotonic
from typing import Callable

from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request

from app.redis_client import connect, refused_write, write_refusal
from app.store.keys import WRITE_PROBE_KEY

logger = logging.getLogger(__name__)

# Seconds between two probe writes while the store refuses writes.
PROBE_SECONDS = 2.0
# A probe waits at most this long for Redis: it runs on the worker's event loop.
PROBE_TIMEOUT = 1.0


class StoreRefused(Exception):
    """The store refused a write; reason is Redis' error code (OOM, READONLY, ...)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail

    def __str__(self):
        return f"the store refuses writes ({self.reason}): {self.detail}"


def retry_if_refused(task, exc: BaseException) -> Retry | None:
    """The retry to raise when exc is the store refusing a write; None for anything else.

    The retry count grows without a cap (max_retries one above it): a refusal is not the
    orders' fault, and the gate keeps new messages away meanwhile.
    """
    reason = write_refusal(exc)
    if reason is None:
        return None
    retries = task.request.retries
    countdown = get_exponential_backoff_interval(
        factor=task.retry_backoff, retries=retries, maximum=task.retry_backoff_max,
        full_jitter=task.retry_jitter)
    return task.retry(exc=StoreRefused(reason, str(exc)[:200]), countdown=countdown,
                      max_retries=retries + 1, throw=False)


class Gate:
    """Open while the store takes writes; closed, the receive chains park."""

    def __init__(self):
        self.reason: str | None = None
        self._since = 0.0
        self._timer = None
        self._probe: Callable[[], str | None] | None = None
        self._announce: Callable[[str | None], None] | None = None
        self._wakers: list[weakref.WeakMethod] = []

    @property
    def closed(self) -> bool:
        """Whether consumption is paused."""
        return self.reason is not None

    def use(self, timer, probe: Callable[[], str | None],
            announce: Callable[[str | None], None] | None = None):
        """The consumer's timer (its event loop), the probe write (None when it went through)
        and announce(reason), told the refusal's reason while paused, None once resumed."""
        self._timer, self._probe, self._announce = timer, probe, announce

    def on_open(self, wake: Callable[[], None]):
        """Call wake (a bound method: held weakly) whenever the gate opens."""
        self._wakers = [w for w in self._wakers if w() is not None]
        self._wakers.append(weakref.WeakMethod(wake))

    def close(self, reason: str, detail: str = ""):
        """The store refused a write: pause consumption (logged once) and start probing."""
        if self.closed:
            return
        self.reason, self._since = reason, monotonic()
        logger.warning("consumption paused: the store refuses writes (%s)%s; the batches held "
                       "are retried, nothing is received until a write goes through (tried "
                       "every %.0f s)", reason, f": {detail}" if detail else "", PROBE_SECONDS,
                       extra={"consumption": "paused", "reason": reason})
        self._tell()
        self._schedule_probe()

    def open(self, how: str):
        """A write went through: resume consumption (logged once)."""
        if not self.closed:
            return
        reason, self.reason = self.reason, None
        logger.warning("consumption resumed: the store takes writes again (%s) after %.0f s "
                       "of %s", how, monotonic() - self._since, reason,
                       extra={"consumption": "resumed", "reason": reason})
        self._tell()
        for waker in self._wakers:
            wake = waker()
            if wake is not None:
                wake()

    def _schedule_probe(self):
        if self._timer is not None and self._probe is not None:
            self._timer.call_after(PROBE_SECONDS, self._run_probe)

    def _run_probe(self):
        if not self.closed:
            return
        try:
            refused = self._probe()
        except Exception as exc:  # noqa: BLE001 - nothing may raise into the event loop
            refused = repr(exc)
        if refused is None:
            self.open("a probe write went through")
        else:
            self._tell()  # again at each probe: a listener that started late learns it too
            self._schedule_probe()

    def _tell(self):
        if self._announce is not None:
            try:
                self._announce(self.reason)
            except Exception as exc:  # noqa: BLE001 - the control plane is only told
                logger.warning("consumption state not announced: %r", exc)


# The worker's one gate: its consumer, its requests and its receive chains share it.
gate = Gate()


class StoreProbe:
    """The probe write on the store, with a client made on first use."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self._client = None

    def __call__(self) -> str | None:
        """None if a small write went through, else why not."""
        if self._client is None:
            self._client = connect(self.redis_url, socket_timeout=PROBE_TIMEOUT,
                                   socket_connect_timeout=PROBE_TIMEOUT)
        return refused_write(self._client, WRITE_PROBE_KEY)


class StoreRequest(Request):
    """Request of the orders tasks: a refused write closes the gate, a success opens it.

    Runs in the worker's main process, where the receive side is.
    """

    def on_retry(self, exc_info):
        """A retry because the store refused a write pauses consumption."""
        refused = getattr(exc_info.exception, "exc", None)
        if isinstance(refused, StoreRefused):
            gate.close(refused.reason, refused.detail)
        return super().on_retry(exc_info)

    def on_success(self, failed__retval__runtime, **kwargs):
        """A task that went through wrote to the store: consumption may resume."""
        if not failed__retval__runtime[0]:
            gate.open("an orders task succeeded")
        return super().on_success(failed__retval__runtime, **kwargs)
