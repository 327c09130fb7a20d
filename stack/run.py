"""orders-stack: start the whole local pipeline, supervise it, stop it cleanly."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import click
import redis
from botocore.exceptions import BotoCoreError, ClientError

from app import settings as app_settings
from app import aws, sqs
from app.redis_client import is_cluster, without_password
from app.store import Store
from app.store.lua import install_read_functions
from stack import redis_users
from stack.cluster import BUS_OFFSET, LocalRedisCluster
from stack.launch import (SCRIPTS, api_command, beat_command, files_queues, flower_command,
                          orders_queues, worker_command)
from stack.prometheus import RULES, PrometheusServer
from stack.services import (PROJECT_ROOT, Process, RedisServer, ServiceError, SqsServer,
                            require_free_port, wait_http)

HEALTH_TIMEOUT = 60.0
# Seconds the worker gets to finish its tasks (warm shutdown) before SIGKILL; a killed
# task's message comes back after the visibility timeout, so nothing is lost either way.
WORKER_STOP_TIMEOUT = 30.0
FLOWER_USER = "admin"


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived."""


def say(message: str) -> None:
    """One line of the supervisor's own output."""
    click.echo(f"[stack] {message}", err=True)


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
        """Workers first (they finish or return their messages), then web, Flower, servers."""
        for process in self.processes:
            if process.popen:
                say(f"stopping {process.name}")
                timeout = WORKER_STOP_TIMEOUT if process.name.endswith("worker") else 10.0
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
        env.update(start_redis(stack))
    elif "CONTROL_URL" not in os.environ and names_a_cluster(os.environ["REDIS_URL"]):
        # Derived from a cluster node, the control plane could not work (kombu's Redis
        # transport speaks no cluster): a standalone one of the stack's own.
        env["CONTROL_URL"] = start_control_plane(stack)

    # An existing producer sends to OrderQueue: it works unchanged against the local stack.
    env.setdefault("EXTRA_ORDERS_QUEUES", "OrderQueue")
    api_port, flower_port = stack.settings.api_port, stack.settings.flower_port
    env["API_BIND"] = f"127.0.0.1:{api_port}"
    env.setdefault("FLOWER_URL", f"http://127.0.0.1:{flower_port}")  # the live page's link
    settings = app_settings.from_env(env)
    # Every resolved setting goes to the children, so worker, API and Flower agree.
    env.update(app_settings.to_env(settings), CONTROL_URL=settings.control_plane_url)
    env["PYTHONUNBUFFERED"] = "1"
    require_free_port(api_port, "the API (gunicorn)")
    require_free_port(flower_port, "Flower")
    if stack.settings.monitoring:
        require_free_port(stack.settings.prometheus_port, "Prometheus")

    say(f"creating queues {', '.join(settings.consumed_queue_urls)} and {settings.dlq_name}")
    try:
        sqs.ensure_queues(settings)
    except (BotoCoreError, ClientError) as exc:
        raise ServiceError(f"cannot create the queues on {settings.sqs_endpoint_url or 'AWS'}: "
                           f"{exc}")

    write_credentials(stack.var_dir / "redis.env", settings)

    if settings.files_enabled:
        say(f"creating bucket {settings.files_bucket}, queue {settings.files_queue} and the "
            "topics")
        try:
            aws.ensure_files_resources(settings)
        except (BotoCoreError, ClientError) as exc:
            raise ServiceError(f"cannot create the files resources on "
                               f"{settings.files_endpoint}: {exc}")

    # The API's read functions, before it serves: its Redis user may not install them.
    install_read_functions(Store.from_settings(settings).redis)
    worker = stack.start_process("worker", worker_command(
        "worker1", 2, settings.log_level, orders_queues(settings)), env)
    watched = [worker]
    if settings.files_enabled:
        # File steps on a worker of their own: they never hold the pool that counts orders.
        watched.append(stack.start_process("files-worker", worker_command(
            "files1", 2, settings.log_level, files_queues(settings)), env))
        # One beat for the stack: the files path's upkeep (files.sweep, files.maintain).
        watched.append(stack.start_process("beat", beat_command(
            stack.var_dir / "celerybeat-schedule", settings.log_level), env))
    web = stack.start_process("web", api_command(env["API_BIND"]),
                              api_environment(env, settings))
    # Loopback only, and a password even there: any local process could otherwise read
    # every order in the task list, revoke tasks or shut the worker down.
    flower_password = secrets.token_urlsafe(18)
    flower = stack.start_process("flower", flower_command(flower_port),
                                 flower_environment(env, settings, flower_password))
    api_url = f"http://127.0.0.1:{api_port}"
    say(f"waiting for {api_url}/health")
    wait_http(f"{api_url}/health", web, HEALTH_TIMEOUT, status=200, watched=(*watched, flower))
    flower_url = (f"http://127.0.0.1:{flower_port} (user {FLOWER_USER}, "
                  f"password {flower_password})")
    if stack.settings.monitoring:
        start_prometheus(stack, f"127.0.0.1:{api_port}")
    return settings, env, api_url, flower_url


def start_prometheus(stack: Stack, api_target: str) -> PrometheusServer:
    """Prometheus on loopback with the shipped rules, scraping the API at api_target."""
    port = stack.settings.prometheus_port
    say(f"starting Prometheus on 127.0.0.1:{port} with {RULES.relative_to(PROJECT_ROOT)}, "
        f"data in {stack.var_dir}/prometheus")
    server = PrometheusServer(stack.var_dir / "prometheus", [api_target], port=port,
                              log_dir=stack.log_dir)
    stack.servers.append(server)
    return server.start()


def start_redis(stack: Stack) -> dict[str, str]:
    """Start the store's Redis (standalone or a local cluster); return its URLs."""
    # New passwords every start: the users live in redis-server's options, not its data.
    passwords = redis_users.new_passwords()
    port = stack.settings.redis_port
    say(f"starting redis-server on 127.0.0.1:{port}, data in {stack.var_dir}/redis")
    server = stack.start_server(
        RedisServer(port, stack.var_dir / "redis", log_dir=stack.log_dir,
                    extra_args=redis_users.server_args(passwords)))
    store_url = server.url
    urls = {}
    if stack.settings.redis_cluster:
        # kombu's Redis transport speaks no cluster: the standalone one is the control plane.
        urls["CONTROL_URL"] = redis_users.url_for(server.url, redis_users.WORKER_USER,
                                                  passwords[redis_users.WORKER_USER])
        store_url = start_cluster(stack, passwords).url
    for variable, user in (("REDIS_URL", redis_users.WORKER_USER),
                           ("API_REDIS_URL", redis_users.API_USER)):
        urls[variable] = redis_users.url_for(store_url, user, passwords[user])
    return urls


def names_a_cluster(url: str) -> bool:
    """Whether url is a node of a Redis Cluster (False when it does not answer)."""
    try:
        return is_cluster(url)
    except redis.RedisError as exc:
        say(f"could not ask {without_password(url)} whether it is a cluster: {exc}")
        return False


def start_control_plane(stack: Stack) -> str:
    """Start a standalone Redis for worker events and remote control; the workers' URL."""
    passwords = redis_users.new_passwords()
    port = stack.settings.redis_port
    say(f"REDIS_URL names a Redis Cluster: starting redis-server on 127.0.0.1:{port} for the "
        f"control plane (CONTROL_URL), data in {stack.var_dir}/redis-control")
    server = stack.start_server(
        RedisServer(port, stack.var_dir / "redis-control", log_dir=stack.log_dir,
                    name="redis-control", extra_args=redis_users.server_args(passwords)))
    return redis_users.url_for(server.url, redis_users.WORKER_USER,
                               passwords[redis_users.WORKER_USER])


def start_cluster(stack: Stack, passwords: dict[str, str]) -> LocalRedisCluster:
    """Start the local Redis Cluster of REDIS_CLUSTER primaries and print its nodes."""
    primaries, replicas = stack.settings.redis_cluster, stack.settings.redis_replicas
    first = stack.settings.redis_cluster_port
    ports = list(range(first, first + primaries * (1 + replicas)))
    for port in ports:
        require_free_port(port, "a Redis Cluster node")
        require_free_port(port + BUS_OFFSET, "a Redis Cluster node's bus")
    say(f"starting a Redis Cluster of {primaries} primaries with {replicas} replica(s) each "
        f"on 127.0.0.1:{ports[0]}-{ports[-1]} (data discarded at stop)")
    cluster = LocalRedisCluster(primaries, replicas, ports, log_dir=stack.log_dir,
                                server_args=redis_users.server_args(passwords),
                                admin=(redis_users.WORKER_USER,
                                       passwords[redis_users.WORKER_USER]))
    # Each node is watched and stopped like any server of the stack.
    stack.servers.extend(cluster.nodes)
    cluster.start()
    for line in cluster.describe():
        say(f"  {line}")
    return cluster


def api_environment(env: dict[str, str], settings: app_settings.Settings) -> dict[str, str]:
    """The API's environment: its own Redis credentials only (read-only under make run)."""
    url = settings.api_store_url
    # CONTROL_URL with the API's own credentials (it hears the workers' heartbeats there),
    # so no URL of the workers' user is left.
    api = urlsplit(url)
    control = (redis_users.url_for(settings.control_plane_url, unquote(api.username or ""),
                                   unquote(api.password)) if api.password else "")
    return {**env, "REDIS_URL": url, "API_REDIS_URL": url, "CONTROL_URL": control}


def flower_environment(env: dict[str, str], settings: app_settings.Settings,
                       password: str) -> dict[str, str]:
    """Flower's environment: the control plane as its broker, basic auth with password.

    Both travel in the environment (celery's --broker option reads BROKER_URL), so the
    process list shows no password.
    """
    return {**env, "BROKER_URL": settings.control_plane_url,
            "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{password}"}


def write_credentials(path: Path, settings: app_settings.Settings) -> None:
    """Write the workers' Redis URLs for operators' shells (`set -a; . var/redis.env`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created unreadable to others before anything is written into it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"REDIS_URL={settings.redis_url}\nCONTROL_URL={settings.control_plane_url}\n")


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
    """Run the local order pipeline: SQS, Redis, Celery worker and beat, API and Flower."""


@main.command()
def run():
    """Start everything, send demo orders, supervise until Ctrl-C or SIGTERM."""
    stack_settings = app_settings.from_env_or_exit(cls=app_settings.StackSettings)
    app_settings.from_env_or_exit()  # a bad setting stops it before any server starts
    stack = Stack(stack_settings)
    signal.signal(signal.SIGINT, raise_stop)
    signal.signal(signal.SIGTERM, raise_stop)
    exit_code = 0
    try:
        settings, env, api_url, flower_url = start_stack(stack)
        send_demo_orders(env, stack.settings.demo_orders)
        if settings.files_enabled:
            upload_demo_files(stack, env, stack.settings.demo_file_orders)
        say(f"API:    {api_url}/stats/global")
        say(f"KPIs:   {api_url}/kpis/orders?from=2024-01-01&to=2024-01-31 (docs {api_url}/docs)")
        say(f"Dashboard: {api_url}/dashboard")
        say(f"Flower: {flower_url}")
        if stack.settings.monitoring:
            say(f"Prometheus: http://127.0.0.1:{stack.settings.prometheus_port}/alerts "
                f"(rules {RULES.relative_to(PROJECT_ROOT)})")
        say(f"SQS:    {settings.sqs_endpoint_url} (queue {settings.orders_url})")
        say(f"Redis:  {without_password(settings.redis_url)} (URLs for the CLI: "
            f"set -a; . {stack.var_dir}/redis.env; set +a)")
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
