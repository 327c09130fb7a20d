"""Every setting of the pipeline, read from the environment in this one place."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

MISMATCH_POLICIES = ("reject", "correct")


@dataclass(frozen=True)
class Settings:
    """Typed settings; field name upper-cased is the environment variable."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis URL the API reads with, e.g. a read-only ACL user's; empty means REDIS_URL.
    api_redis_url: str = ""
    # Redis for worker events and remote control (Celery's control plane); empty means
    # the aggregates' Redis with the next database number.
    control_url: str = ""
    # Empty means real AWS (boto3's default endpoint for the region).
    sqs_endpoint_url: str = "http://127.0.0.1:4566"
    aws_region: str = "us-east-1"
    orders_queue: str = "orders-queue"
    # Empty means the local server's URL for ORDERS_QUEUE; required with real AWS.
    orders_queue_url: str = ""
    # More queues of raw orders, comma-separated names beside ORDERS_QUEUE in the same
    # account (make run and docker-compose consume OrderQueue, an existing producer's).
    extra_orders_queues: str = ""
    # Empty means "<orders_queue>-dlq".
    orders_dlq: str = ""
    max_receive_count: int = 5
    # Seconds a failed delivery stays hidden before its next try, doubled per receive.
    failure_backoff: int = 5
    visibility_timeout: int = 300
    # How long the orders queues keep a message (SQS allows 60 s to 14 days; the
    # dead-letter queue always keeps 14 days, see app/sqs.py).
    orders_retention_seconds: int = 4 * 86400
    order_value_mismatch: str = "reject"
    # Raw messages run as one task per batch of up to this many (SQS returns at most 10
    # per receive); 1 runs every order as its own orders.process task.
    consume_batch_size: int = 10
    max_order_bytes: int = 131072
    max_items: int = 1000
    max_future_seconds: int = 86400
    # The earliest order_timestamp accepted (ISO-8601 with a zone): older is a data error
    # (a default or zero date upstream), not a first_order_at.
    min_order_timestamp: str = "2000-01-01T00:00:00+00:00"
    task_max_retries: int = 5
    # Days a rejected message's record (body, reasons) stays in Redis.
    rejected_retention_days: int = 30
    # Replicas that must confirm each batch (Redis WAIT) before its messages are deleted
    # from SQS; fewer in time and the batch is retried. 0 trusts the primary alone.
    redis_wait_replicas: int = 0
    # Shard keys the global, day and month totals and the rankings are spread over (each
    # its own hash slot, summed or merged on read). Changing it needs a migration.
    redis_shards: int = 8
    # Days an order id stays claimed: a redelivery within them is a duplicate, after them
    # it is counted again. Longer than SQS keeps a message (14 days) plus its DLQ's 14.
    dedup_window_days: int = 30
    retry_backoff_max: int = 60
    api_bind: str = "127.0.0.1:8000"
    # gunicorn sync workers; 0 means CPU cores + 1 (on 2 cores, 3 kept p99 lowest).
    api_workers: int = 0
    # Seconds between two reads of the SQS queue depths by each API process, in the
    # background: /metrics and /health serve the last figures and never wait on SQS.
    metrics_sqs_interval: int = 5
    log_format: str = "text"
    log_level: str = "INFO"
    # Batch files (app/files): the bucket with input/, archive/, rejected/, staging/, results/.
    files_bucket: str = "orders-files"
    # S3 and SNS endpoint; empty means SQS_ENDPOINT_URL (LocalStack serves all three).
    files_endpoint_url: str = ""
    # The queue of the bucket's ObjectCreated events; its DLQ is "<files_queue>-dlq".
    files_queue: str = "file-processing-queue"
    # Empty means the local server's URL for FILES_QUEUE; required with real AWS.
    files_queue_url: str = ""
    # File events arriving within this many seconds form one execution.
    files_batch_window: float = 10.0
    # Seconds an execution keeps its file events hidden (the files queue's visibility
    # timeout; each step's time limit is half of it): after a lost worker they come back.
    files_execution_timeout: int = 900
    files_success_topic: str = "PipelineSuccessNotifications"
    files_failure_topic: str = "PipelineFailureNotifications"

    def __post_init__(self):
        if self.order_value_mismatch not in MISMATCH_POLICIES:
            raise ValueError(
                f"ORDER_VALUE_MISMATCH must be one of {MISMATCH_POLICIES}, "
                f"not {self.order_value_mismatch!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ValueError(f"LOG_FORMAT must be text or json, not {self.log_format!r}")
        # SQS caps maxReceiveCount at 1000; a retry countdown must end before the
        # message becomes visible again, or SQS hands it to a second worker.
        if not 1 <= self.max_receive_count <= 1000:
            raise ValueError("MAX_RECEIVE_COUNT must be between 1 and 1000")
        if not 1 <= self.consume_batch_size <= 10:
            raise ValueError("CONSUME_BATCH_SIZE must be between 1 and 10")
        if self.dlq_name in self.extra_queue_names or self.dlq_name == self.orders_queue:
            # Its RedrivePolicy would point at itself and it would be consumed as orders.
            raise ValueError(f"the dead-letter queue {self.dlq_name!r} cannot be an orders queue")
        if self.metrics_sqs_interval < 1:
            raise ValueError("METRICS_SQS_INTERVAL must be at least 1 second")
        if not 60 <= self.orders_retention_seconds <= 14 * 86400:
            raise ValueError("ORDERS_RETENTION_SECONDS must be between 60 and 1209600 (14 days)")
        if self.rejected_retention_days < 1:
            raise ValueError("REJECTED_RETENTION_DAYS must be at least 1")
        if self.redis_wait_replicas < 0:
            raise ValueError("REDIS_WAIT_REPLICAS must not be negative")
        if self.redis_shards < 1:
            raise ValueError("REDIS_SHARDS must be at least 1")
        if self.dedup_window_days < 1:
            raise ValueError("DEDUP_WINDOW_DAYS must be at least 1")
        if self.files_queue in {*self.consumed_queue_urls, self.dlq_name, self.files_dlq}:
            raise ValueError(f"FILES_QUEUE {self.files_queue!r} cannot be an orders queue or a DLQ")
        if not 60 <= self.files_execution_timeout <= 43200:
            # SQS caps a visibility timeout at 12 hours; each step gets half of it, less 10 s.
            raise ValueError("FILES_EXECUTION_TIMEOUT must be between 60 and 43200 seconds")
        if not 0 < self.files_batch_window < self.files_execution_timeout:
            # The events must still be hidden when their execution takes them over.
            raise ValueError("FILES_BATCH_WINDOW must be above 0 and below FILES_EXECUTION_TIMEOUT")
        if self.retry_backoff_max >= self.visibility_timeout:
            raise ValueError("RETRY_BACKOFF_MAX must be shorter than VISIBILITY_TIMEOUT")
        self.earliest_order_at  # raises ValueError when unusable

    @property
    def earliest_order_at(self) -> datetime:
        """MIN_ORDER_TIMESTAMP as an aware datetime."""
        try:
            moment = datetime.fromisoformat(self.min_order_timestamp)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise ValueError("MIN_ORDER_TIMESTAMP must be an ISO-8601 date-time with a zone, "
                             f"not {self.min_order_timestamp!r}")
        return moment

    @property
    def dlq_name(self) -> str:
        """Name of the dead-letter queue of the orders queue."""
        return self.orders_dlq or f"{self.orders_queue}-dlq"

    @property
    def files_dlq(self) -> str:
        """Name of the dead-letter queue of the file events queue."""
        return f"{self.files_queue}-dlq"

    @property
    def files_url(self) -> str:
        """URL of the file events queue."""
        return self.files_queue_url or self.url_of(self.files_queue)

    @property
    def files_endpoint(self) -> str:
        """S3 and SNS endpoint ('' for real AWS)."""
        return self.files_endpoint_url or self.sqs_endpoint_url

    @property
    def orders_url(self) -> str:
        """URL of the orders queue."""
        return self.url_of(self.orders_queue) if not self.orders_queue_url else self.orders_queue_url

    @property
    def extra_queue_names(self) -> list[str]:
        """EXTRA_ORDERS_QUEUES as names, without blanks, repeats or ORDERS_QUEUE."""
        names = (name.strip() for name in self.extra_orders_queues.split(","))
        return list(dict.fromkeys(n for n in names if n and n != self.orders_queue))

    @property
    def extra_queue_urls(self) -> dict[str, str]:
        """Name -> URL of each extra orders queue: the orders queue's URL with its name."""
        base = self.orders_url.rsplit("/", 1)[0]
        return {name: f"{base}/{name}" for name in self.extra_queue_names}

    @property
    def consumed_queue_urls(self) -> dict[str, str]:
        """Name -> URL of every queue the workers take orders from."""
        return {self.orders_queue: self.orders_url, **self.extra_queue_urls}

    def url_of(self, queue: str) -> str:
        """URL of a queue on the local SQS server (LocalStack's path-style URLs)."""
        if not self.sqs_endpoint_url:
            raise ValueError("ORDERS_QUEUE_URL is required when SQS_ENDPOINT_URL is empty (real AWS)")
        return f"{self.sqs_endpoint_url.rstrip('/')}/000000000000/{queue}"

    @property
    def failure_backoff_policy(self) -> dict[int, int]:
        """Seconds hidden after the n-th failed receive: base, 2x base, 4x base..."""
        return {n: min(self.failure_backoff * 2 ** (n - 1), self.visibility_timeout)
                for n in range(1, self.max_receive_count + 1)}

    @property
    def api_store_url(self) -> str:
        """Redis URL of the API: API_REDIS_URL, else REDIS_URL."""
        return self.api_redis_url or self.redis_url

    @property
    def control_plane_url(self) -> str:
        """Redis URL for Celery events and remote control."""
        if self.control_url:
            return self.control_url
        parts = urlsplit(self.redis_url)
        db = int(parts.path.lstrip("/") or 0)
        return urlunsplit(parts._replace(path=f"/{db + 1}"))


@dataclass(frozen=True)
class StackSettings:
    """Settings of the local stack that `make run` starts (stack/run.py) and nothing else."""

    sqs_port: int = 4566
    redis_port: int = 6379
    # Primaries of a local Redis Cluster for the store (0: one standalone Redis); Redis on
    # redis_port then serves only the control plane.
    redis_cluster: int = 0
    # Replicas of each cluster primary.
    redis_replicas: int = 0
    # First port of the cluster's nodes (each also uses its port + 10000 for the bus).
    redis_cluster_port: int = 7001
    api_port: int = 8000
    flower_port: int = 5555
    demo_orders: int = 3000
    # Orders in the sample files make run uploads to the files bucket (0: none).
    demo_file_orders: int = 500
    # Empty means var/ in the project.
    stack_var_dir: str = ""
    # Empty means .venv-sqs/bin/python in the project (LocalStack needs Python 3.13).
    sqs_server_python: str = ""


def from_env(environ: Mapping[str, str] | None = None, cls=Settings):
    """Build Settings (or StackSettings) from environment variables and the defaults."""
    environ = os.environ if environ is None else environ
    values = {}
    for field in fields(cls):
        raw = environ.get(field.name.upper())
        if raw is None:
            continue
        try:
            values[field.name] = _cast(raw.strip(), type(field.default))
        except ValueError:
            raise ValueError(f"{field.name.upper()} must be {type(field.default).__name__}, "
                             f"not {raw!r}") from None
    return cls(**values)


BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True,
                 "0": False, "false": False, "no": False, "off": False}


def _cast(text: str, kind: type):
    # bool("false") is True: booleans are read from words, not by calling the type.
    if kind is bool:
        if text.lower() not in BOOLEAN_WORDS:
            raise ValueError(text)
        return BOOLEAN_WORDS[text.lower()]
    return kind(text)


def to_env(settings: Settings) -> dict[str, str]:
    """The environment variables that make from_env() rebuild these settings."""
    return {f.name.upper(): str(getattr(settings, f.name)) for f in fields(Settings)}


def variables(cls=Settings) -> list[tuple[str, object]]:
    """Every environment variable with its default, for docs and checks."""
    return [(f.name.upper(), f.default) for f in fields(cls)]
