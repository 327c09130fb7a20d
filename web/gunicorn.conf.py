"""gunicorn settings for the API, from the same environment as everything else."""
import gc
import logging
import os
import shutil
import tempfile

from app.settings import from_env_or_exit

_settings = from_env_or_exit()

bind = _settings.api_bind
# gevent workers: each connection is a greenlet, so a client that sends half a request, or
# a request waiting on a stalled Redis, holds a greenlet, not a worker (a sync worker is held
# until its timeout; a gthread worker's thread blocks in the read of a half-sent request
# line). One worker per core: with each connection closed after its response, a third
# worker on 2 cores served fewer requests/s (docs/benchmarks.md, "API").
workers = _settings.api_workers or os.cpu_count() or 1
# gevent's worker, closing each connection after one response (web/gunicorn_worker.py).
worker_class = "web.gunicorn_worker.OneRequestGeventWorker"
# Connections (greenlets) per worker; each request in flight may hold one Redis connection,
# so the app's Redis pool has as many (create_app).
worker_connections = _settings.api_worker_connections
timeout = 30
# A connection that has not sent a whole request within this many seconds is closed
# (the gevent worker reads every request, the first one too, under this timeout).
keepalive = 2
# Requests are tiny and read-only; refuse oversized request lines and headers early.
limit_request_line = 4094
limit_request_fields = 50
accesslog = "-"
# gunicorn's access line, built without the ~40 header and environ atoms the format does not
# name (web/access_log.py).
logger_class = "web.access_log.AccessLogger"
loglevel = _settings.log_level.lower()
# No log format here names a thread, and under gevent each request's greenlet would get a
# new dummy Thread for its access log record's thread name (docs/benchmarks.md, "API").
logging.logThreads = False

# Each worker process counts its own requests; prometheus_client's multiprocess mode
# merges them at /metrics. The directory must be set before the workers import the app,
# and be empty at start, or counts from a previous run would be summed in.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="orders-api-metrics-")


def post_worker_init(worker):
    """Keep the loaded app out of the garbage collector's passes (gc.freeze): a full
    collection no longer walks its 130,000 objects, about 60 ms, every few thousand requests."""
    gc.freeze()


def on_exit(server):
    """Remove the metrics files this server created."""
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (its counters stay summed in)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
