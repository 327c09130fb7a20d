"""The project's own processes (Celery worker and beat, API under gunicorn, Flower): their command
lines, and a worker or an API started and waited for until it is ready.

`orders-stack run`, the bench and the tests start them through here, so all three run
the same commands.
"""
from __future__ import annotations

import os
import signal
import sysconfig
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from app.settings import Settings, to_env
from stack.services import PROJECT_ROOT, Process, free_port

# The console scripts of this Python's environment (celery, gunicorn, orders-*).
SCRIPTS = Path(sysconfig.get_path("scripts"))
# What a Celery worker logs once it consumes.
WORKER_READY = b" ready."


def worker_command(node: str, concurrency: int = 2, loglevel: str = "INFO",
                   queues: list[str] | None = None) -> list[str]:
    """`celery -A tasks worker` with `concurrency` pool processes, node name node@host,
    consuming the given queues (-Q), or every queue of the configuration."""
    only = ["-Q", ",".join(queues)] if queues else []
    return [str(SCRIPTS / "celery"), "-A", "tasks", "worker", "--loglevel", loglevel,
            "--concurrency", str(concurrency), "-n", f"{node}@%h", *only]


def orders_queues(settings: Settings) -> list[str]:
    """What an orders worker consumes: the orders queues, never the files queue, so file
    steps cannot take the pool that counts orders."""
    return list(settings.consumed_queue_urls)


def files_queues(settings: Settings) -> list[str]:
    """What a files worker consumes: the files queue (S3 events and the files tasks)."""
    return [settings.files_queue]


def beat_command(schedule: Path | str, loglevel: str = "INFO") -> list[str]:
    """`celery -A tasks beat`, which sends the scheduled tasks (celeryconfig's beat_schedule)
    and keeps their last run times in the file schedule."""
    return [str(SCRIPTS / "celery"), "-A", "tasks", "beat", "--loglevel", loglevel,
            "--schedule", str(schedule)]


def api_command(bind: str | None = None) -> list[str]:
    """gunicorn serving web:create_app() with web/gunicorn.conf.py (which reads API_BIND)."""
    options = ["--bind", bind] if bind else []
    return [str(SCRIPTS / "gunicorn"), "-c", "web/gunicorn.conf.py", *options,
            "web:create_app()"]


def flower_command(port: int) -> list[str]:
    """Flower on 127.0.0.1:port; its broker and basic auth come from the environment."""
    return [str(SCRIPTS / "celery"), "-A", "tasks", "flower", f"--port={port}",
            "--address=127.0.0.1"]


def environment(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with every setting of settings, unbuffered output, extra."""
    return {**os.environ, **to_env(settings), "PYTHONUNBUFFERED": "1", **(extra or {})}


class Worker:
    """A real `celery -A tasks worker` process on given settings."""

    def __init__(self, settings: Settings, log_dir: Path | str, concurrency: int = 2,
                 name: str = "w1", loglevel: str = "INFO",
                 env: Mapping[str, str] | None = None, queues: list[str] | None = None):
        self.settings = settings
        self.service = Process(f"worker-{name}",
                               worker_command(name, concurrency, loglevel, queues),
                               env=environment(settings, env), log_dir=log_dir,
                               cwd=PROJECT_ROOT)
        self.log_path = self.service.log_path

    @property
    def process(self):
        """The worker's Popen (poll() tells whether it still runs)."""
        return self.service.popen

    def start(self, timeout: float = 60) -> "Worker":
        """Start the worker and wait until it says it is ready."""
        # The log appends: only a ready line written after this start counts.
        already = self._ready_lines()
        self.service.start()
        self.service.wait_ready(lambda: self._ready_lines() > already, timeout,
                                "the worker to say it is ready")
        return self

    def _ready_lines(self) -> int:
        return self.log_path.read_bytes().count(WORKER_READY) if self.log_path.exists() else 0

    def stop(self, sig=signal.SIGTERM, timeout: float = 30):
        """Stop the worker and its pool (warm shutdown by default) and wait for them."""
        self.service.stop(timeout=timeout, signum=sig)

    def tail(self, lines: int = 60) -> str:
        """The end of the worker's log."""
        return self.service.log_tail(lines)


def start_api(settings: Settings, log_dir: Path | str, name: str = "api",
              env: Mapping[str, str] | None = None, ready_path: str = "/health",
              timeout: float = 60) -> tuple[Process, str]:
    """The API under gunicorn on settings, on a free port, once ready_path answers;
    its process and base URL."""
    port = free_port()
    settings = replace(settings, api_bind=f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    process = Process(name, api_command(), env=environment(settings, env), log_dir=log_dir,
                      cwd=PROJECT_ROOT).start_http(url + ready_path, timeout)
    return process, url
