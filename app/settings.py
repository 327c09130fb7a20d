"""Every setting of the pipeline, read from the environment in this one place."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

MISMATCH_POLICIES = ("reject", "correct")
# The URL settings and the kind of URL each takes (empty leaves a setting unset).
URL_KINDS = {"redis_url": "redis", "api_redis_url": "redis", "control_url": "redis",
             "sqs_endpoint_url": "http", "orders_queue_url": "http",
             "files_endpoint_url": "http", "files_queue_url": "http", "flower_url": "http"}
URL_KIND_TEXT = {"redis": "a redis://host:port/db, rediss://host:port/db or unix:///path URL",
                 "http": "an http:// or https:// URL with a host"}
# SQS names every FIFO queue so, and only FIFO queues.
FIFO_SUFFIX = ".fifo"


def is_fifo(queue: str) -> bool:
    """Whether a queue name or URL is a FIFO queue's."""
    return queue.endswith(FIFO_SUFFIX)


def setting(default, doc: str):
    """A settings field with the text the configuration page shows for it."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """Typed settings; field name upper-cased is the environment variable."""

    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis of the aggregates (a standalone server, or any node of a Redis Cluster: "
        "every process asks it `INFO cluster` and switches to a cluster client by itself).")
    api_redis_url: str = setting(
        "", "Redis URL the API reads with, e.g. a read-only ACL user's "
        "(`redis://api:PASSWORD@host:6379/0`); empty means `REDIS_URL`.")
    control_url: str = setting(
        "", "Redis for worker events and remote control (Celery's control plane: Flower, "
        "`celery inspect`); empty means the aggregates' Redis with the next database number. "
        "Must be a standalone Redis: kombu's Redis transport speaks no cluster.")
    sqs_endpoint_url: str = setting(
        "http://127.0.0.1:4566",
        "SQS endpoint; empty means real AWS (boto3's default endpoint for the region and "
        "its credential chain).")
    aws_region: str = setting("us-east-1", "AWS region of the queues, the bucket and the topics.")
    sqs_sts_role_arn: str = setting(
        "", "A role the worker's SQS transport assumes (kombu's `sts_role_arn`, "
        "celery/kombu#1321) for the queues it consumes, e.g. an orders queue in a shop "
        "platform's account; empty: the process's own credentials.")
    orders_queue: str = setting("orders-queue", "Queue the orders arrive on.")
    orders_queue_url: str = setting(
        "", "URL of `ORDERS_QUEUE`; empty means the local server's URL. Required with real AWS.")
    extra_orders_queues: str = setting(
        "", "More queues of raw orders, comma-separated names beside `ORDERS_QUEUE` in the same "
        "account, with the same RedrivePolicy and dead-letter queue (`make run` and "
        "docker-compose consume `OrderQueue`, an existing producer's).")
    orders_dlq: str = setting("", "Dead-letter queue of the orders queues; empty means "
                                  "`<ORDERS_QUEUE>-dlq`, or `<name>-dlq.fifo` for a FIFO "
                                  "`<name>.fifo` (a FIFO queue's DLQ must be FIFO too).")
    require_noeviction: bool = setting(
        False, "Refuse to start a worker when the store does not tell its `maxmemory-policy` "
        "(some managed services refuse `CONFIG GET`). A policy other than `noeviction` is "
        "always refused: eviction drops the claims that keep orders from counting twice.")
    max_receive_count: int = setting(
        5, "Receives before SQS dead-letters a failing message (1 to 1000).")
    failure_backoff: int = setting(
        5, "Seconds a failed delivery stays hidden before its next try, doubled per receive.")
    visibility_timeout: int = setting(
        300, "Visibility timeout of the orders queues (set when a queue is created).")
    orders_retention_seconds: int = setting(
        4 * 86400, "How long the orders queues keep a message, 60 to 1,209,600 (14 days); set by "
        "`ensure_queues` on new and existing queues. The dead-letter queue always keeps 14 days.")
    order_value_mismatch: str = setting(
        "reject", "`reject` an order whose `order_value` differs from the item total by more "
        "than 0.01, or `correct` it: count the item total and record the correction.")
    consume_batch_size: int = setting(
        10, "Raw messages run as one `orders.process_batch` task per batch of up to this many "
        "(SQS returns at most 10 per receive); `1` runs every order as its own "
        "`orders.process` task.")
    max_order_bytes: int = setting(
        131072, "Larger bodies are rejected unread (their record keeps the first 4 KiB, the "
        "size and the SHA-256).")
    max_items: int = setting(1000, "Most items in one order.")
    max_future_seconds: int = setting(
        86400, "How far in the future an `order_timestamp` may be.")
    min_order_timestamp: str = setting(
        "2000-01-01T00:00:00+00:00",
        "The earliest `order_timestamp` accepted (ISO-8601 with a zone): an older one is a "
        "data error (a default or zero date upstream), rejected, not counted as a first order.")
    task_max_retries: int = setting(
        5, "Retries of a transient failure (Redis down or stalled) before the task fails.")
    rejected_retention_days: int = setting(
        30, "Days a rejected message's record (body, reasons) stays in Redis.")
    rejected_max_records: int = setting(
        100_000, "Most rejection records kept; beyond it the oldest are dropped first "
        "(counted in `/metrics` as `orders_rejected_dropped_total`), the rejected count stays.")
    rejected_max_bytes: int = setting(
        64 * 1024 * 1024, "Most bytes of bodies, reasons and ids the rejection records keep "
        "together; beyond it the oldest are dropped first, like past "
        "`REJECTED_MAX_RECORDS`.")
    redis_wait_replicas: int = setting(
        0, "Replicas that must confirm each batch (Redis `WAIT`, 1 s) before its messages are "
        "deleted from SQS; fewer in time and the batch is retried. 0 trusts the primary alone.")
    redis_shards: int = setting(
        8, "Shard keys (each its own hash slot) the global, day and month totals and the "
        "rankings are spread over, summed or merged on read. Changing it needs a migration "
        "of the data.")
    dedup_window_days: int = setting(
        30, "Days an order id stays claimed (its claim and its parts' markers): a redelivery "
        "within them is a duplicate, after them it is counted again. Longer than SQS keeps "
        "a message (14 days) plus its dead-letter queue's 14.")
    retry_backoff_max: int = setting(
        60, "Cap of the retry backoff in seconds; must be below `VISIBILITY_TIMEOUT`.")
    api_bind: str = setting("127.0.0.1:8000", "gunicorn's bind address for the API.")
    api_workers: int = setting(
        0, "gunicorn gevent workers of the API; 0 means one per CPU core.")
    api_worker_connections: int = setting(
        1000, "Connections each API worker serves at once (greenlets); its Redis pool may open "
        "as many, one for each request in flight.")
    flower_url: str = setting(
        "", "Flower's address, linked from the API's live page (`/dashboard`); empty: no link. "
        "`make run` sets it to its own Flower.")
    metrics_sqs_interval: int = setting(
        5, "Seconds between two reads of the SQS queue depths by each API process, in the "
        "background: `/metrics` and `/health` serve the last figures and never wait on SQS.")
    log_format: str = setting(
        "text", "`text`, or `json` for one JSON object per line (for log shippers).")
    log_level: str = setting("INFO", "Log level of the worker (`make run`) and of gunicorn.")
    files_bucket: str = setting(
        "orders-files", "Bucket of the batch files, with `input/`, `archive/`, `rejected/`, "
        "`staging/` and `results/`.")
    files_endpoint_url: str = setting(
        "", "S3 and SNS endpoint; empty means `SQS_ENDPOINT_URL` (LocalStack serves all three; "
        "both empty: real AWS).")
    files_queue: str = setting(
        "file-processing-queue", "Queue of the bucket's `ObjectCreated` events (its DLQ is "
        "`<FILES_QUEUE>-dlq`); the files tasks ride on it too.")
    files_queue_url: str = setting(
        "", "URL of `FILES_QUEUE`; empty means the local server's URL. Required with real AWS.")
    files_enabled: bool = setting(
        True, "Whether this deployment has the batch files path: workers then declare "
        "`FILES_QUEUE` (a worker started with `-Q` consumes only the queues it names) and "
        "`make run` and compose start a files worker. `false`: orders only, and no files "
        "resource (bucket, queue, topics) is needed or touched.")
    files_batch_window: float = setting(
        10.0, "File events arriving within this many seconds form one execution.")
    files_execution_timeout: int = setting(
        900, "Seconds an execution keeps its file events hidden (the files queue's visibility "
        "timeout, 60 s to 12 h; each step's time limit is half of it): after a lost worker "
        "they come back.")
    files_max_bytes: int = setting(
        2 << 30, "Largest file staged, in bytes (2 GiB by default): a larger one is rejected "
        "with its size as the reason, before any of it is read. A file is streamed to a "
        "temporary file (TMPDIR) and parsed from there, so each files step needs this much "
        "disk.")
    files_merge_batch_rows: int = setting(
        1_000_000, "Rows of a cleaned file merged into its Delta table per commit: cleaning "
        "splits the kept rows into ranges of keys (in text order) of about this many, finds "
        "the last row of each key a range at a time and the merge commits one range at a "
        "time, so neither holds the whole file, and each commit reads only the table's files "
        "its range of keys meets (docs/batch-files.md, Reading). The KPI step computes from "
        "buckets of about this many rows too (docs/batch-files.md, KPIs).")
    files_vacuum_retention_hours: int = setting(
        168, "Hours `files.maintain` keeps a file that a merge or a compaction removed from a "
        "Delta table before it vacuums it: a reader pinned to an older version (a running "
        "execution's) still finds its files. Must be longer than `FILES_EXECUTION_TIMEOUT`.")
    files_maintain_interval: int = setting(
        3600, "Seconds between two `files.maintain` runs (compaction, vacuum and checkpoint of "
        "each Delta table) that `celery beat` sends.")
    files_sweep_interval: int = setting(
        60, "Seconds between two `files.sweep` runs that `celery beat` sends: each fails, and "
        "announces, every execution still running after `FILES_EXECUTION_TIMEOUT`.")
    files_execution_record_days: int = setting(
        30, "Days an execution's record stays in Redis after its last change (the API's "
        "`/files/executions`); the copy in the bucket's `results/` stays.")
    files_success_topic: str = setting(
        "PipelineSuccessNotifications", "SNS topic of the executions that succeeded.")
    files_failure_topic: str = setting(
        "PipelineFailureNotifications", "SNS topic of the executions that failed.")
    # The API's guard against a store that stalls or refuses writes (web/health.py).
    api_store_check_timeout: float = setting(
        0.5, "Seconds `/health` and `/metrics` wait for the store's `INFO` before they report "
        "it unavailable: a stalled Redis then delays them by at most this.")

    def __post_init__(self):
        for name, kind in URL_KINDS.items():
            url = getattr(self, name)
            if url and not _is_url(url, kind):
                # Not the value itself: a Redis URL may hold a password.
                raise ValueError(f"{name.upper()} must be {URL_KIND_TEXT[kind]}")
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
        if self.api_worker_connections < 1:
            raise ValueError("API_WORKER_CONNECTIONS must be at least 1")
        if self.metrics_sqs_interval < 1:
            raise ValueError("METRICS_SQS_INTERVAL must be at least 1 second")
        if not 60 <= self.orders_retention_seconds <= 14 * 86400:
            raise ValueError("ORDERS_RETENTION_SECONDS must be between 60 and 1209600 (14 days)")
        if self.rejected_retention_days < 1:
            raise ValueError("REJECTED_RETENTION_DAYS must be at least 1")
        if self.rejected_max_records < 1 or self.rejected_max_bytes < 1:
            raise ValueError("REJECTED_MAX_RECORDS and REJECTED_MAX_BYTES must be at least 1")
        if self.redis_wait_replicas < 0:
            raise ValueError("REDIS_WAIT_REPLICAS must not be negative")
        if self.redis_shards < 1:
            raise ValueError("REDIS_SHARDS must be at least 1")
        if self.dedup_window_days < 1:
            raise ValueError("DEDUP_WINDOW_DAYS must be at least 1")
        if len({is_fifo(name) for name in [*self.consumed_queue_urls, self.dlq_name]}) > 1:
            # SQS: a FIFO queue's dead-letter queue is FIFO, a standard queue's standard.
            raise ValueError(f"the orders queues and their dead-letter queue {self.dlq_name!r} "
                             "must be all FIFO (names ending in .fifo) or all standard")
        if is_fifo(self.files_queue):
            raise ValueError(f"FILES_QUEUE {self.files_queue!r} cannot be FIFO: S3 event "
                             "notifications go to standard queues only")
        if self.files_queue in {*self.consumed_queue_urls, self.dlq_name, self.files_dlq}:
            raise ValueError(f"FILES_QUEUE {self.files_queue!r} cannot be an orders queue or a DLQ")
        if not 60 <= self.files_execution_timeout <= 43200:
            # SQS caps a visibility timeout at 12 hours; each step gets half of it, less 10 s.
            raise ValueError("FILES_EXECUTION_TIMEOUT must be between 60 and 43200 seconds")
        if not 0 < self.files_batch_window < self.files_execution_timeout:
            # The events must still be hidden when their execution takes them over.
            raise ValueError("FILES_BATCH_WINDOW must be above 0 and below FILES_EXECUTION_TIMEOUT")
        if self.files_merge_batch_rows < 1:
            raise ValueError("FILES_MERGE_BATCH_ROWS must be at least 1")
        if self.files_max_bytes < 1:
            raise ValueError("FILES_MAX_BYTES must be at least 1")
        if self.files_vacuum_retention_hours * 3600 <= self.files_execution_timeout:
            # A vacuum would delete files that a running execution's pinned reads still need.
            raise ValueError(
                f"FILES_VACUUM_RETENTION_HOURS ({self.files_vacuum_retention_hours} h) must be "
                f"longer than FILES_EXECUTION_TIMEOUT ({self.files_execution_timeout} s)")
        if self.files_maintain_interval < 1 or self.files_sweep_interval < 1:
            raise ValueError("FILES_MAINTAIN_INTERVAL and FILES_SWEEP_INTERVAL must be at least "
                             "1 second")
        if self.files_execution_record_days < 1:
            raise ValueError("FILES_EXECUTION_RECORD_DAYS must be at least 1")
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
        if self.orders_dlq:
            return self.orders_dlq
        if is_fifo(self.orders_queue):
            return f"{self.orders_queue.removesuffix(FIFO_SUFFIX)}-dlq{FIFO_SUFFIX}"
        return f"{self.orders_queue}-dlq"

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
        return self.control_url or next_database(self.redis_url)

    @property
    def api_control_url(self) -> str:
        """Redis URL the API hears the workers' heartbeats on, with the API's credentials
        when CONTROL_URL is not given."""
        return self.control_url or next_database(self.api_store_url)


def _is_url(url: str, kind: str) -> bool:
    """Whether url is of this kind: a scheme of it, a host, and a Redis database a number."""
    parts = urlsplit(url)
    if kind == "redis":
        if parts.scheme == "unix":
            return bool(parts.path)
        database = parts.path.removeprefix("/")
        return (parts.scheme in ("redis", "rediss") and bool(parts.hostname)
                and (database == "" or (database.isascii() and database.isdigit())))
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def next_database(url: str) -> str:
    """url with the next database number (the control plane beside the store)."""
    parts = urlsplit(url)
    db = int(parts.path.lstrip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{db + 1}"))


@dataclass(frozen=True)
class StackSettings:
    """Settings of the local stack that `make run` starts (stack/run.py) and nothing else."""

    sqs_port: int = setting(4566, "Port of the SQS server (LocalStack) `make run` starts when "
                                  "`SQS_ENDPOINT_URL` is unset.")
    redis_port: int = setting(
        6379, "Port of the Redis `make run` starts when `REDIS_URL` is unset.")
    redis_cluster: int = setting(
        0, "Primaries (at least 3) of a local Redis Cluster `make run` starts for the store; "
        "0: one standalone Redis. The Redis on `REDIS_PORT` then serves only the control plane.")
    redis_replicas: int = setting(
        0, "Replicas of each local cluster primary (`REDIS_CLUSTER=3 REDIS_REPLICAS=1 make run`: "
        "six nodes).")
    redis_cluster_port: int = setting(
        7001, "First port of the local cluster's nodes; each also uses its port + 10000 for the "
        "cluster bus.")
    api_port: int = setting(8000, "Port of the API under `make run`.")
    flower_port: int = setting(5555, "Port of Flower under `make run`.")
    monitoring: bool = setting(
        False, "`MONITORING=1 make run` also starts Prometheus (Debian's package) on loopback "
        "with `deploy/monitoring/rules.yml`, scraping the API.")
    prometheus_port: int = setting(9090, "Port of Prometheus under `MONITORING=1 make run`.")
    demo_orders: int = setting(3000, "Sample orders `make run` sends; 0 for none.")
    demo_file_orders: int = setting(
        500, "Orders in the sample files `make run` uploads to the files bucket's `input/`; "
        "0 for none.")
    stack_var_dir: str = setting("", "Data and logs of `make run`; empty means `var/` in the "
                                     "project.")
    sqs_server_python: str = setting(
        "", "A Python with `localstack-core` installed; empty means `.venv-sqs/bin/python` in "
        "the project (LocalStack needs Python 3.13).")

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


def from_env_or_exit(environ: Mapping[str, str] | None = None, cls=Settings):
    """from_env() for a process's entry point: a variable that cannot be a setting stops the
    process with its reason on one line, not a traceback."""
    try:
        return from_env(environ, cls)
    except ValueError as exc:
        raise SystemExit(f"configuration error: {exc}") from None


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
