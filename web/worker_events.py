"""The workers' liveness and consumption state, heard on the control plane by the API.

The API only subscribes (the read-only user needs SUBSCRIBE on the event channels,
stack/redis_users.py): it neither pings the workers nor writes to the control plane.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass

import redis
from celery.events.state import heartbeat_expires

from tasks.names import CONSUMPTION_EVENT

logger = logging.getLogger(__name__)


# The workers' events on the control-plane Redis: kombu's Redis transport publishes the
# "celeryev" fanout exchange on PUB/SUB channel "/{db}.celeryev/{routing key}" (its
# fanout_prefix and fanout_patterns transport options, on by default), each message a
# JSON envelope whose body is base64-encoded JSON (kombu 5.7; tests/web/test_workers_up.py).
WORKER_EVENTS = ("worker.online", "worker.heartbeat", "worker.offline",
                 CONSUMPTION_EVENT.replace("-", "."))
# Celery's heartbeat interval (the worker's Heart step: 2 s): a listener subscribed for less
# than two of them may not have heard a live worker yet.
DEFAULT_HEARTBEAT_FREQ = 2.0
# A worker silent for this long is forgotten: its series leave /metrics.
FORGET_WORKER_AFTER = 600.0


def worker_event_channels(control_url: str) -> list[str]:
    """The PUB/SUB channels of the workers' online, heartbeat and offline events."""
    db = redis.connection.parse_url(control_url).get("db", 0)
    return [f"/{db}.celeryev/{event}" for event in WORKER_EVENTS]


def decode_worker_event(payload: bytes) -> dict:
    """The Celery event a kombu Redis PUB/SUB message carries."""
    envelope = json.loads(payload)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)


@dataclass(frozen=True)
class WorkerSeen:
    """A worker's last event: when it arrived (monotonic), its heartbeat interval, offline;
    why its consumption is paused (the store's refusal), None while it consumes."""

    received: float
    freq: float
    offline: bool
    paused_by: str | None = None

    def live(self, now: float) -> bool:
        """Celery's rule (celery.events.state): live until two intervals without a beat."""
        return not self.offline and now < heartbeat_expires(self.received, self.freq)


@dataclass(frozen=True)
class WorkersSnapshot:
    """The workers heard of; whether the listener is subscribed and has listened long enough
    to count the live ones; the error while it is not."""

    workers: dict[str, WorkerSeen]
    connected: bool
    settled: bool
    error: str | None

    def live(self, now: float) -> int | None:
        """How many workers are live; None before the listener could have heard them all."""
        return sum(seen.live(now) for seen in self.workers.values()) if self.settled else None


class WorkerHeartbeats:
    """The workers' heartbeat events, heard by a background thread of this process.

    The API only subscribes (the read-only user needs SUBSCRIBE on the event channels,
    stack/redis_users.py): it neither pings the workers nor writes to the control plane.
    """

    def __init__(self, control_url: str, timeout: float):
        self.channels = worker_event_channels(control_url)
        self._client = redis.Redis.from_url(control_url, socket_connect_timeout=timeout,
                                            socket_timeout=timeout, health_check_interval=10)
        self._lock = threading.Lock()
        self._workers: dict[str, WorkerSeen] = {}
        self._pubsub = None
        self._subscribed_at: float | None = None
        self._error: str | None = "not connected yet"
        self._pid: int | None = None

    def listen(self, seconds: float = 1.0) -> None:
        """Subscribe if need be, then take the events of the next seconds; on failure,
        drop the connection and keep the error."""
        try:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(*self.channels)
                with self._lock:
                    self._subscribed_at, self._error = time.monotonic(), None
                logger.info("control plane: listening to the workers' heartbeats")
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                message = self._pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "message":
                    self._record(message["data"])
        except redis.RedisError as exc:
            with self._lock:
                changed = self._error != type(exc).__name__
                self._error, self._subscribed_at = type(exc).__name__, None
            if changed:  # once per outage
                logger.warning("control plane: workers' heartbeats unavailable: %s", exc)
            self._close()
            time.sleep(2)

    def _record(self, payload: bytes) -> None:
        try:
            event = decode_worker_event(payload)
            freq = float(event.get("freq") or DEFAULT_HEARTBEAT_FREQ)
            offline = event["type"] == "worker-offline"
            hostname = str(event["hostname"])
            told = event["type"] == CONSUMPTION_EVENT
            paused_by = str(event.get("reason") or "refused") if event.get("paused") else None
        except (ValueError, KeyError, TypeError) as exc:  # not an event of Celery's
            logger.warning("control plane: unreadable worker event: %r", exc)
            return
        with self._lock:
            if not told:  # a heartbeat keeps the last consumption state heard
                earlier = self._workers.get(hostname)
                paused_by = earlier.paused_by if earlier and not offline else None
            self._workers[hostname] = WorkerSeen(time.monotonic(), freq, offline, paused_by)

    def _close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except redis.RedisError:
                pass
            self._pubsub = None

    def snapshot(self) -> WorkersSnapshot:
        """The workers heard of in the last FORGET_WORKER_AFTER seconds."""
        self._ensure_running()
        now = time.monotonic()
        with self._lock:
            for hostname in [h for h, seen in self._workers.items()
                             if now - seen.received > FORGET_WORKER_AFTER]:
                del self._workers[hostname]
            workers, subscribed_at, error = dict(self._workers), self._subscribed_at, self._error
        connected = subscribed_at is not None
        settled = connected and now >= heartbeat_expires(subscribed_at, DEFAULT_HEARTBEAT_FREQ)
        return WorkersSnapshot(workers, connected, settled, error)

    def _ensure_running(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            # A connection inherited from the parent process is not this process's.
            self._pubsub, self._subscribed_at, self._workers = None, None, {}
        threading.Thread(target=_listen_forever, args=(weakref.ref(self),),
                         name="worker-heartbeats", daemon=True).start()


def _listen_forever(heartbeats_ref: "weakref.ref[WorkerHeartbeats]") -> None:
    """Take the workers' events until nothing holds the listener any more."""
    while (heartbeats := heartbeats_ref()) is not None:
        heartbeats.listen()
        del heartbeats
