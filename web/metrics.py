"""Prometheus metrics: pipeline state (Redis at scrape time, SQS from a cache, workers'
heartbeats from the control plane), API latency."""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app import sqs
from app.store_health import StoreHealth
from web.worker_events import WorkerHeartbeats, WorkersSnapshot

logger = logging.getLogger(__name__)
blp = Blueprint("metrics", __name__)

REQUESTS = Counter("api_requests_total", "API requests", ["method", "route", "status"])
LATENCY = Histogram("api_request_duration_seconds", "API request latency", ["method", "route"],
                    buckets=(.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 2.5))


# gunicorn passes any upper-case token as a method: others share one label value, so a
# client cannot add series (and memory in every API process) by inventing methods.
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                              "TRACE", "PATCH"})
OTHER_METHOD = "other"


def method_label(method: str) -> str:
    """The method as a label value: itself when standard, else "other"."""
    return method if method in STANDARD_METHODS else OTHER_METHOD


# A refresher's SQS calls give up after this many seconds (one attempt, no retries).
SQS_TIMEOUT = 2
# The first /metrics or /health of a process waits at most this long for the first figures.
FIRST_READ_WAIT = 1.0
# The files executions' figures come from this many latest records (one MGET per scrape).
FILES_EXECUTIONS_READ = 20


@dataclass(frozen=True)
class SqsSnapshot:
    """The last queue depths read, how old they are, and whether they are current."""

    depths: dict[str, dict[str, int]] | None
    age: float | None
    error: str | None
    current: bool


class SqsFigures:
    """Queue depths read by a background thread of this process, never by a request.

    A slow or unreachable SQS then costs one thread's time, not an API worker's: a sync
    gunicorn worker that waited on SQS during a scrape could serve nothing else. The
    thread starts on first use in each process (gunicorn forks the workers after the
    app's import) and ends when the app is gone.
    """

    def __init__(self, settings, interval: float):
        self.settings, self.interval = settings, interval
        self._client = sqs.client(settings, timeout=SQS_TIMEOUT, attempts=1)
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._depths: dict[str, dict[str, int]] | None = None
        self._read_at: float | None = None
        self._error: str | None = "not read yet"
        self._pid: int | None = None

    def refresh(self) -> None:
        """Read every queue's depth once; on failure keep the old figures and the error."""
        try:
            depths = {queue: sqs.depth(self.settings, queue, self._client)
                      for queue in (*self.settings.consumed_queue_urls, self.settings.dlq_name)}
            depths.update(self._files_depths())
        except Exception as exc:  # any failure means "down"; the reason helps the operator
            with self._lock:
                changed, self._error = self._error != type(exc).__name__, type(exc).__name__
            if changed:  # once per outage, not every interval
                logger.warning("SQS queue depths unavailable: %s", exc)
        else:
            with self._lock:
                if self._error not in (None, "not read yet"):
                    logger.info("SQS queue depths available again")
                self._depths, self._read_at, self._error = depths, time.monotonic(), None
        self._first.set()

    def _files_depths(self) -> dict[str, dict[str, int]]:
        """The files queue's and its DLQ's depths; none where the files path has no queues."""
        try:
            return {queue: sqs.depth(self.settings, queue, self._client)
                    for queue in (self.settings.files_queue, self.settings.files_dlq)}
        except self._client.exceptions.QueueDoesNotExist:
            return {}

    def snapshot(self) -> SqsSnapshot:
        """The cached figures: current when the last read worked and is recent."""
        self._ensure_running()
        self._first.wait(FIRST_READ_WAIT)
        with self._lock:
            depths, read_at, error = self._depths, self._read_at, self._error
        age = time.monotonic() - read_at if read_at is not None else None
        # A read takes at most SQS_TIMEOUT per call; two missed rounds mean it is stuck.
        current = error is None and age is not None and age <= 2 * self.interval + SQS_TIMEOUT
        return SqsSnapshot(depths, age, error or (None if current else "stale"), current)

    def _ensure_running(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=_refresh_forever, args=(weakref.ref(self), self.interval),
                         name="sqs-figures", daemon=True).start()


def _refresh_forever(figures_ref: "weakref.ref[SqsFigures]", interval: float) -> None:
    """Refresh the figures every interval until nothing holds them any more."""
    while (figures := figures_ref()) is not None:
        figures.refresh()
        del figures  # hold no reference while sleeping
        time.sleep(interval)


def queue_roles(settings) -> dict[str, str]:
    """What each queue is for: orders, orders_dlq, files or files_dlq.

    Rules and dashboards find the DLQs by role: the queues' names are settings.
    """
    return {**{name: "orders" for name in settings.consumed_queue_urls},
            settings.dlq_name: "orders_dlq", settings.files_queue: "files",
            settings.files_dlq: "files_dlq"}


def store_state(store_health: StoreHealth):
    """The store's state from its INFO; None when unreadable (not known to take writes)."""
    try:
        return store_health.state()
    except Exception as exc:  # any failure: the reason goes to the log
        logger.warning("metrics: Redis INFO unavailable: %s", exc)
        return None


class PipelineCollector:
    """Reads the pipeline's counters from Redis on every scrape, queue depths from the cache."""

    def __init__(self, settings, store, sqs_figures: SqsFigures, files_store=None,
                 store_health: StoreHealth | None = None,
                 heartbeats: WorkerHeartbeats | None = None):
        self.settings, self.store, self.sqs_figures = settings, store, sqs_figures
        self.files_store, self.store_health = files_store, store_health
        self.heartbeats = heartbeats

    def collect(self):
        """Yield the metric families; a source that is down is reported, not raised."""
        up = GaugeMetricFamily("orders_dependency_up", "1 when the dependency answered",
                               labels=["dependency"])
        try:
            yield from self._redis_families()
            up.add_metric(["redis"], 1)
        except Exception as exc:  # a scrape must still answer while Redis is down
            logger.warning("metrics: Redis unavailable: %s", exc)
            up.add_metric(["redis"], 0)
        if self.store_health is not None:
            yield from self._store_families()
        yield self._queue_roles()
        snapshot = self.sqs_figures.snapshot()
        if snapshot.age is not None:
            yield GaugeMetricFamily("orders_sqs_figures_age_seconds",
                                    "Age of the cached SQS queue depths",
                                    value=snapshot.age)
        if snapshot.current:
            # Stale depths are left out rather than shown as if they were current.
            depth = GaugeMetricFamily("orders_queue_messages", "Approximate SQS queue depth",
                                      labels=["queue", "state"])
            for queue, states in snapshot.depths.items():
                for state, count in states.items():
                    depth.add_metric([queue, state], count)
            yield depth
        up.add_metric(["sqs"], 1 if snapshot.current else 0)
        if self.heartbeats is not None:
            workers = self.heartbeats.snapshot()
            yield from self._worker_families(workers)
            up.add_metric(["control_plane"], 1 if workers.connected else 0)
        yield up

    @staticmethod
    def _worker_families(snapshot: WorkersSnapshot):
        """Each worker heard of: live or not, its heartbeat's age; the live ones' count."""
        now = time.monotonic()
        worker_up = GaugeMetricFamily("orders_worker_up", "1 while the worker's heartbeats "
                                      "arrive (Celery's rule: two intervals), 0 once it is "
                                      "silent or went offline", labels=["worker"])
        age = GaugeMetricFamily("orders_worker_heartbeat_age_seconds",
                                "Seconds since the worker's last event", labels=["worker"])
        for hostname, seen in sorted(snapshot.workers.items()):
            worker_up.add_metric([hostname], 1 if seen.live(now) else 0)
            age.add_metric([hostname], now - seen.received)
        paused = GaugeMetricFamily("orders_worker_consumption_paused",
                                   "1 while the live worker receives nothing because the "
                                   "store refuses writes (backpressure), else 0",
                                   labels=["worker"])
        for hostname, seen in sorted(snapshot.workers.items()):
            if seen.live(now):
                paused.add_metric([hostname], 1 if seen.paused_by else 0)
        yield worker_up
        yield age
        yield paused
        if (live := snapshot.live(now)) is not None:  # unknown is not 0
            yield GaugeMetricFamily(
                "orders_workers_live", "Workers whose heartbeats arrive over the control plane",
                value=live)

    def _redis_families(self):
        # A gauge: a requeued rejection leaves 'rejected', so the number can go down.
        outcomes = GaugeMetricFamily("orders_messages",
                                     "Messages by outcome (counted, duplicate, rejected, ...)",
                                     labels=["outcome"])
        for outcome, count in self.store.outcomes().items():
            outcomes.add_metric([outcome], count)
        by_field = CounterMetricFamily("orders_rejected_by_field",
                                       "Rejections naming each field (_schema: the whole body)",
                                       labels=["field"])
        for field, count in self.store.rejected_by_field().items():
            by_field.add_metric([field], count)
        events = CounterMetricFamily("orders_task_events", "Task retries and failed runs",
                                     labels=["event"])
        for event, count in self.store.task_events().items():
            events.add_metric([event], count)
        families = [outcomes, by_field, events, *self._rejected_store_families()]
        lag = self.store.lag()
        if lag:
            oldest_sent_ms, applied_ms = lag
            families.append(GaugeMetricFamily(
                "orders_processing_lag_seconds",
                "Applied time minus SQS sent time of the oldest message of the last batch",
                value=(applied_ms - oldest_sent_ms) / 1000))
            families.append(GaugeMetricFamily(
                "orders_last_applied_timestamp_seconds", "When the last batch was applied",
                value=applied_ms / 1000))
        if self.files_store is not None:
            families += self._files_families()
        return families

    def _rejected_store_families(self):
        """The rejected store against its caps, and the records the caps dropped."""
        figures = self.store.rejected_store()
        yield GaugeMetricFamily("orders_rejected_records", "Rejection records kept "
                                "(REJECTED_MAX_RECORDS caps them)", value=figures["records"])
        yield GaugeMetricFamily("orders_rejected_bytes", "Bytes the rejection records keep "
                                "(REJECTED_MAX_BYTES caps them)", value=figures["bytes"])
        yield CounterMetricFamily("orders_rejected_dropped", "Rejection records dropped, "
                                  "oldest first, to keep within the caps",
                                  value=figures["dropped"])

    def _store_families(self):
        """Writability, memory headroom and eviction policy, from the store's INFO."""
        state = store_state(self.store_health)
        yield GaugeMetricFamily("orders_store_writable",
                                "1 when Redis takes writes (a primary, memory below maxmemory, "
                                "persistence ok, noeviction); 0 otherwise or unreadable",
                                value=1 if state is not None and state.writable else 0)
        if state is None:
            return
        policy = GaugeMetricFamily("orders_store_maxmemory_policy_info",
                                   "Redis maxmemory-policy (must be noeviction)",
                                   labels=["policy"])
        policy.add_metric([state.policy], 1)
        yield policy
        if state.maxmemory:  # without maxmemory there is no limit to come near
            yield GaugeMetricFamily("orders_store_memory_headroom_bytes",
                                    "Bytes Redis may still use before maxmemory refuses writes",
                                    value=state.headroom_bytes)
            yield GaugeMetricFamily("orders_store_memory_headroom_ratio",
                                    "Memory headroom as a share of maxmemory (0: full)",
                                    value=state.headroom_ratio)

    def _queue_roles(self):
        info = GaugeMetricFamily("orders_queue_info", "What each queue of orders_queue_messages "
                                 "is for (orders, orders_dlq, files, files_dlq)",
                                 labels=["queue", "role"])
        for queue, role in queue_roles(self.settings).items():
            info.add_metric([queue, role], 1)
        return info

    def _files_families(self):
        records = self.files_store.executions(FILES_EXECUTIONS_READ)
        by_status = GaugeMetricFamily(
            "orders_files_executions",
            f"Files executions by status among the latest {FILES_EXECUTIONS_READ}",
            labels=["status"])
        started = GaugeMetricFamily(
            "orders_files_execution_started_timestamp_seconds",
            f"Start of the newest files execution in each status among the latest "
            f"{FILES_EXECUTIONS_READ}", labels=["status"])
        newest: dict[str, int] = {}
        for record in records:  # newest first
            if record.get("started_at_ms") is not None:
                newest.setdefault(record["status"], record["started_at_ms"])
        for status in sorted({"running", "succeeded", "failed", *newest}):
            by_status.add_metric([status], sum(r["status"] == status for r in records))
            if status in newest:
                started.add_metric([status], newest[status] / 1000)
        families = [by_status, started]
        finished = next((r for r in records if r["status"] != "running"), None)
        if finished is not None:
            rows = GaugeMetricFamily("orders_files_last_execution_rows",
                                     "Rows of the valid files of the newest finished execution: "
                                     "read, and staged (kept after cleaning)", labels=["stage"])
            rows.add_metric(["read"], finished.get("rows_read", 0))
            rows.add_metric(["staged"], finished.get("rows_kept", 0))
            dropped = GaugeMetricFamily("orders_files_last_execution_dropped_rows",
                                        "Rows the newest finished execution dropped, by "
                                        "cleaning rule", labels=["rule"])
            by_rule: dict[str, int] = {}
            for rules in finished.get("rows_dropped", {}).values():
                for rule, count in rules.items():
                    by_rule[rule] = by_rule.get(rule, 0) + count
            for rule, count in sorted(by_rule.items()):
                dropped.add_metric([rule], count)
            families += [rows, dropped]
        return families


def registry() -> CollectorRegistry:
    """A registry merging every gunicorn worker's request metrics with the pipeline's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REQUESTS)
        registry.register(LATENCY)
    registry.register(current_app.extensions["pipeline_collector"])
    return registry


@blp.route("/metrics")
def metrics():
    """Prometheus text exposition."""
    return Response(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


def init_app(flask_app, settings, store):
    """Register /metrics and time every request by its route template."""
    figures = SqsFigures(settings, settings.metrics_sqs_interval)
    flask_app.extensions["sqs_figures"] = figures
    # A client of its own with a short timeout: a stalled Redis delays /health and this
    # part of /metrics by at most API_STORE_CHECK_TIMEOUT.
    store_health = StoreHealth.from_url(settings.api_store_url, settings.api_store_check_timeout)
    flask_app.extensions["store_health"] = store_health
    heartbeats = WorkerHeartbeats(settings.api_control_url, settings.api_store_check_timeout)
    flask_app.extensions["worker_heartbeats"] = heartbeats
    flask_app.extensions["pipeline_collector"] = PipelineCollector(
        settings, store, figures, flask_app.extensions.get("files_store"), store_health,
        heartbeats)
    flask_app.register_blueprint(blp)

    @flask_app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @flask_app.after_request
    def record(response):
        # The route template, not the path: one series per endpoint, not per user id.
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("request_started", time.perf_counter())
        method = method_label(request.method)
        LATENCY.labels(method, route).observe(elapsed)
        REQUESTS.labels(method, route, str(response.status_code)).inc()
        return response
