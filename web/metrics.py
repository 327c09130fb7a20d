"""Prometheus metrics: pipeline state read at scrape time, API latency per route."""
from __future__ import annotations

import logging
import os
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app import sqs

logger = logging.getLogger(__name__)
blp = Blueprint("metrics", __name__)

REQUESTS = Counter("api_requests_total", "API requests", ["method", "route", "status"])
LATENCY = Histogram("api_request_duration_seconds", "API request latency", ["method", "route"],
                    buckets=(.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 2.5))


class PipelineCollector:
    """Reads the pipeline's counters (Redis) and queue depths (SQS) on every scrape."""

    def __init__(self, settings, store, sqs_client):
        self.settings, self.store, self.sqs = settings, store, sqs_client

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
        try:
            depth = GaugeMetricFamily("orders_queue_messages", "Approximate SQS queue depth",
                                      labels=["queue", "state"])
            for queue in (*self.settings.consumed_queue_urls, self.settings.dlq_name):
                for state, count in sqs.depth(self.settings, queue, self.sqs).items():
                    depth.add_metric([queue, state], count)
            yield depth
            up.add_metric(["sqs"], 1)
        except Exception as exc:
            logger.warning("metrics: SQS unavailable: %s", exc)
            up.add_metric(["sqs"], 0)
        yield up


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
        families = [outcomes, by_field, events]
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


def init_app(flask_app, settings, store, sqs_client):
    """Register /metrics and time every request by its route template."""
    flask_app.extensions["pipeline_collector"] = PipelineCollector(settings, store, sqs_client)
    flask_app.register_blueprint(blp)

    @flask_app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @flask_app.after_request
    def record(response):
        # The route template, not the path: one series per endpoint, not per user id.
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("request_started", time.perf_counter())
        LATENCY.labels(request.method, route).observe(elapsed)
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response
