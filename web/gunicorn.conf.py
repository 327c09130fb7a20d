"""gunicorn settings for the API, from the same environment as everything else."""
import os
import shutil
import tempfile

from app.settings import from_env

_settings = from_env()

bind = _settings.api_bind
# Sync workers: the views are one Redis read each, CPU-bound in Flask. Measured with wrk at
# 32 connections on 2 cores: 3 sync workers beat 2 and 4, and gthread (more requests/s,
# but twice the p99). One more worker than cores keeps a core busy while one waits on Redis.
workers = _settings.api_workers or (os.cpu_count() or 1) + 1
worker_class = "sync"
timeout = 30
# Requests are tiny and read-only; refuse oversized request lines and headers early.
limit_request_line = 4094
limit_request_fields = 50
accesslog = "-"
loglevel = _settings.log_level.lower()

# Each worker process counts its own requests; prometheus_client's multiprocess mode
# merges them at /metrics. The directory must be set before the workers import the app,
# and be empty at start, or counts from a previous run would be summed in.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="orders-api-metrics-")


def on_exit(server):
    """Remove the metrics files this server created."""
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (its counters stay summed in)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
