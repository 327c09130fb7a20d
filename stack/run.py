"""orders-stack: start the whole local pipeline, supervise it, stop it cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
from botocore.exceptions import BotoCoreError, ClientError

from app import settings as app_settings
from app import aws, sqs
from stack.services import (PROJECT_ROOT, Process, RedisServer, ServiceError, SqsServer,
                            require_free_port)

SCRIPTS = Path(sysconfig.get_path("scripts"))
HEALTH_TIMEOUT = 60.0
# Seconds the worker gets to finish its tasks (warm shutdown) before SIGKILL; a killed
# task's message comes back after the visibility timeout, so nothing is lost either way.
WORKER_STOP_TIMEOUT = 30.0


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived."""


def say(message: str) -> None:
    """One line of the supervisor's own output."""
    click.echo(f"[stack] {message}", err=True)


def wait_for_health(url: str, processes: list[Process], timeout: float) -> None:
    """Wait until url answers 200, failing early if a child dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for process in processes:
            if not process.running:
                raise process.failure(f"{process.name} exited with {process.returncode} "
                                      "while the API was starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    web = next(p for p in processes if p.name == "web")
    raise web.failure(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})")


class Stack:
    """The servers and processes of one run, stopped in a safe order."""

    def __init__(self, settings: app_settings.StackSettings):
        self.settings = settings
        self.var_dir = Path(settings.stack_var_dir or PROJECT_ROOT / "var").resolve()
        self.log_dir = self.var_dir / "log"
        self.servers: list[RedisServer | SqsServer] = []
        self.processes: list[Process] = []

    def start_server(self, server):
        """Start a server and remember it for shutdown."""
        self.servers.append(server)
        return server.start()

    def start_process(self, name: str, command: list[str], env: dict[str, str]) -> Process:
        """Start a child process and remember it for shutdown."""
        process = Process(name, command, env=env, log_dir=self.log_dir, cwd=PROJECT_ROOT)
        self.processes.append(process)
        say(f"starting {name}: {' '.join(command)}")
        return process.start()

    def dead(self) -> tuple[str, int | None] | None:
        """Name and status of the first child or server that exited, if any."""
        for process in self.processes + [s.process for s in self.servers if s.process]:
            if not process.running:
                return process.name, process.returncode
        return None

    def stop(self) -> None:
        """Worker first (finishes or returns its messages), then web, flower, then the servers."""
        for process in self.processes:
            if process.popen:
                say(f"stopping {process.name}")
                timeout = WORKER_STOP_TIMEOUT if process.name == "worker" else 10.0
                process.stop(timeout)
        for server in reversed(self.servers):
            if server.process:
                say(f"stopping {server.process.name}")
                server.stop()


def raise_stop(signum, _frame):
    """Signal handler: unwind the supervisor into its shutdown path."""
    # Further signals during shutdown are ignored so cleanup is not interrupted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise StopRequested(signal.Signals(signum).name)


def start_stack(stack: Stack) -> tuple[app_settings.Settings, dict[str, str], str, str]:
    """Start everything; return settings, children's env, API and Flower URLs."""
    env = dict(os.environ)
    if "SQS_ENDPOINT_URL" not in os.environ:
        port = stack.settings.sqs_port
        say(f"starting SQS server (LocalStack) on 127.0.0.1:{port}, log {stack.log_dir}/sqs.log")
        server = stack.start_server(SqsServer(port, stack.var_dir / "sqs", log_dir=stack.log_dir,
                                              python=stack.settings.sqs_server_python or None))
        env["SQS_ENDPOINT_URL"] = server.endpoint_url
    if "REDIS_URL" not in os.environ:
        port = stack.settings.redis_port
        say(f"starting redis-server on 127.0.0.1:{port}, data in {stack.var_dir}/redis")
        server = stack.start_server(
            RedisServer(port, stack.var_dir / "redis", log_dir=stack.log_dir))
        env["REDIS_URL"] = server.url

    # An existing producer sends to OrderQueue: it works unchanged against the local stack.
    env.setdefault("EXTRA_ORDERS_QUEUES", "OrderQueue")
    api_port, flower_port = stack.settings.api_port, stack.settings.flower_port
    env["API_BIND"] = f"127.0.0.1:{api_port}"
    settings = app_settings.from_env(env)
    # Every resolved setting goes to the children, so worker, API and Flower agree.
    env.update(app_settings.to_env(settings), CONTROL_URL=settings.control_plane_url)
    env["PYTHONUNBUFFERED"] = "1"
    require_free_port(api_port, "the API (gunicorn)")
    require_free_port(flower_port, "Flower")

    say(f"creating queues {', '.join(settings.consumed_queue_urls)} and {settings.dlq_name}")
    try:
        sqs.ensure_queues(settings)
    except (BotoCoreError, ClientError) as exc:
        raise ServiceError(f"cannot create the queues on {settings.sqs_endpoint_url or 'AWS'}: "
                           f"{exc}")

    say(f"creating bucket {settings.files_bucket}, queue {settings.files_queue} and the topics")
    try:
        aws.ensure_files_resources(settings)
    except (BotoCoreError, ClientError) as exc:
        raise ServiceError(f"cannot create the files resources on {settings.files_endpoint}: {exc}")

    celery = str(SCRIPTS / "celery")
    stack.start_process("worker", [celery, "-A", "tasks", "worker", "--loglevel", settings.log_level,
                                   "--concurrency", "2", "-n", "worker1@%h"], env)
    stack.start_process("web", [str(SCRIPTS / "gunicorn"), "-c", "web/gunicorn.conf.py",
                                "--bind", env["API_BIND"], "web:create_app()"], env)
    # Bound to loopback: its JSON API may go without a password here (compose sets one).
    stack.start_process("flower", [celery, "-A", "tasks", "--broker", settings.control_plane_url,
                                   "flower", f"--port={flower_port}", "--address=127.0.0.1"],
                        {**env, "FLOWER_UNAUTHENTICATED_API": "true"})
    api_url = f"http://127.0.0.1:{api_port}"
    say(f"waiting for {api_url}/health")
    wait_for_health(f"{api_url}/health", stack.processes, HEALTH_TIMEOUT)
    return settings, env, api_url, f"http://127.0.0.1:{flower_port}"


def send_demo_orders(env: dict[str, str], count: int) -> None:
    """Send DEMO_ORDERS sample orders with orders-produce (its progress bar on this terminal)."""
    if count <= 0:
        return
    say(f"sending {count} demo orders")
    # A few percent of bad and re-sent orders, as a real shop platform sends.
    command = [str(SCRIPTS / "orders-produce"), "--count", str(count),
               "--invalid-share", "0.03", "--duplicate-share", "0.02", "--legacy-share", "0.01"]
    try:
        status = subprocess.run(command, env=env, cwd=PROJECT_ROOT).returncode
    except FileNotFoundError:
        status = "not installed"
    if status != 0:
        # The stack itself is fine; only the sample data are missing.
        say(f"demo orders failed ({status}); the stack keeps running")


def upload_demo_files(stack: Stack, env: dict[str, str], orders: int) -> None:
    """Write sample files and upload all but the returns (they are for trying an update)."""
    if orders <= 0:
        return
    out = stack.var_dir / "sample-files"
    say(f"writing sample files ({orders} orders) to {out} and uploading them")
    command = [str(SCRIPTS / "orders-files"), "sample", "--out", str(out), "--orders", str(orders)]
    uploads = [str(out / n) for n in ("products.csv", "orders_part1.csv", "order_items_part1.csv")]
    try:
        status = (subprocess.run(command, env=env, cwd=PROJECT_ROOT).returncode or
                  subprocess.run([str(SCRIPTS / "orders-files"), "upload", *uploads], env=env,
                                 cwd=PROJECT_ROOT).returncode)
    except FileNotFoundError:
        status = "not installed"
    if status != 0:
        say(f"demo files failed ({status}); the stack keeps running")
        return
    say(f"returns to try later: orders-files upload {out}/orders_returns.csv "
        f"{out}/order_items_returns.csv")


@click.group()
def main():
    """Run the local order pipeline: SQS, Redis, Celery worker, API and Flower."""


@main.command()
def run():
    """Start everything, send demo orders, supervise until Ctrl-C or SIGTERM."""
    stack_settings = app_settings.from_env(cls=app_settings.StackSettings)
    stack = Stack(stack_settings)
    signal.signal(signal.SIGINT, raise_stop)
    signal.signal(signal.SIGTERM, raise_stop)
    exit_code = 0
    try:
        settings, env, api_url, flower_url = start_stack(stack)
        send_demo_orders(env, stack.settings.demo_orders)
        upload_demo_files(stack, env, stack.settings.demo_file_orders)
        say(f"API:    {api_url}/stats/global")
        say(f"KPIs:   {api_url}/kpis/orders?from=2024-01-01&to=2024-01-31 (docs {api_url}/docs)")
        say(f"Flower: {flower_url}")
        say(f"SQS:    {settings.sqs_endpoint_url} (queue {settings.orders_url})")
        say(f"Redis:  {settings.redis_url}")
        say(f"Logs:   {stack.log_dir}")
        say("running; Ctrl-C stops everything")
        while not (dead := stack.dead()):
            time.sleep(0.5)
        name, status = dead
        say(f"{name} exited with {status}; see {stack.log_dir}/{name}.log; shutting down")
        exit_code = 1
    except StopRequested as stop:
        say(f"{stop} received; shutting down")
    except (ServiceError, click.UsageError, ValueError) as exc:
        say(f"error: {exc}")
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    say("stopped")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
