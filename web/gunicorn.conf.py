"""gunicorn settings for the API, from the same environment as everything else."""
from app.settings import from_env

_settings = from_env()

bind = _settings.api_bind
# Sync workers: the views are one Redis read each; measured here, 4 sync workers beat
# gthread and kept p99 lowest (see README, benchmarks).
workers = _settings.api_workers
worker_class = "sync"
timeout = 30
# Requests are tiny and read-only; refuse oversized request lines and headers early.
limit_request_line = 4094
limit_request_fields = 50
accesslog = "-"
