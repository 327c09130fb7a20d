"""The real local services (redis-server, LocalStack SQS), Process and `orders-stack run`."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import redis
import requests

from conftest import ephemeral_ports
from stack.services import (PROJECT_ROOT, Process, RedisServer, ServiceError, SqsServer,
                            free_port, live_processes, port_is_free, wait_for)



def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def processes_with_env(marker: str) -> list[int]:
    """Live processes whose environment contains marker (NAME=value)."""
    return live_processes(lambda entry: marker.encode() in (entry / "environ").read_bytes()
                          .split(b"\0"))


def test_redis_restart_keeps_appendonly_data(tmp_path):
    server = RedisServer(free_port(), data_dir=tmp_path / "data", log_dir=tmp_path / "log")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.hset("global:stats", mapping={"total_orders": 3, "total_revenue": "12.50"})
        server.stop()
        assert port_is_free(server.port)
        assert not server.process.members()

        server.start()
        assert redis.Redis.from_url(server.url).hgetall("global:stats") == {
            b"total_orders": b"3", b"total_revenue": b"12.50"}
    finally:
        server.stop()
    assert (tmp_path / "data" / "appendonlydir").is_dir()
    assert "Ready to accept connections" in (tmp_path / "log" / "redis.log").read_text()


def test_redis_with_a_data_dir_fsyncs_every_write_unless_told_otherwise(tmp_path):
    # An acknowledged write must survive a crash of the host, not only of redis-server.
    with RedisServer(free_port(), data_dir=tmp_path / "data", log_dir=tmp_path) as server:
        config = redis.Redis.from_url(server.url).config_get("append*")
        assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")
    # extra_args come last, so a benchmark can still choose another level.
    with RedisServer(free_port(), data_dir=tmp_path / "other", log_dir=tmp_path,
                     extra_args=["--appendfsync", "everysec"]) as server:
        assert redis.Redis.from_url(server.url).config_get("appendfsync") == {
            "appendfsync": "everysec"}


def test_redis_without_data_dir_keeps_nothing(tmp_path):
    with RedisServer(free_port(), log_dir=tmp_path) as server:
        temp_dir = Path(server._temp_dir.name)
        redis.Redis.from_url(server.url).set("k", "v")
        server.stop()
        server.start()
        assert redis.Redis.from_url(server.url).get("k") is None
        assert not list(temp_dir.iterdir())  # no RDB snapshot, no append-only file
    assert not temp_dir.exists()
    assert port_is_free(server.port)


def test_free_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice():
    """No outgoing connection, and no other pick, can take a port before its server binds it."""
    picked = [free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked)
    assert not set(picked) & set(ephemeral_ports())


def test_redis_refuses_a_taken_port_naming_it(tmp_path):
    with RedisServer(free_port(), log_dir=tmp_path / "first") as server:
        with pytest.raises(ServiceError, match=f"port {server.port} is already in use"):
            RedisServer(server.port, log_dir=tmp_path / "second").start()


def test_sqs_server_serves_sqs_and_restarts_on_the_same_port(tmp_path):
    server = SqsServer(free_port(), data_dir=tmp_path / "sqs", log_dir=tmp_path / "log")
    client = boto3.client("sqs", endpoint_url=server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")

    def round_trip(queue: str) -> str:
        url = client.create_queue(QueueName=queue)["QueueUrl"]
        client.send_message(QueueUrl=url, MessageBody='{"order_id": "o-1"}')
        message = client.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"][0]
        client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return message["Body"]

    server.start()
    try:
        assert round_trip("orders-queue") == '{"order_id": "o-1"}'
        server.stop()
        assert port_is_free(server.port)
        assert not server.process.members()

        server.start()
        # LocalStack's community edition keeps queues in memory: a restart empties it.
        assert "QueueUrls" not in client.list_queues()
        assert round_trip("orders-queue") == '{"order_id": "o-1"}'
    finally:
        server.stop()


def test_sqs_server_without_localstack_says_how_to_get_it(tmp_path):
    server = SqsServer(free_port(), data_dir=tmp_path, python=tmp_path / "no-python")
    with pytest.raises(ServiceError, match="make .venv-sqs"):
        server.start()


def test_process_stop_ends_the_whole_group(tmp_path):
    # The shell ignores SIGTERM and its background sleep is a grandchild: both must go.
    process = Process("stubborn", ["bash", "-c", "trap '' TERM; sleep 300 & wait"],
                      log_dir=tmp_path).start()
    wait_for(lambda: len(process.members()) == 2, 5, message="bash and its sleep started")
    members = process.members()
    started = time.monotonic()
    assert process.stop(timeout=1) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert not any(pid_alive(pid) for pid in members)
    assert "starting: bash -c" in process.log_tail()


def test_children_die_with_a_killed_supervisor(tmp_path):
    script = ("import sys, time; from stack.services import Process; "
              f"p = Process('sleeper', ['sleep', '300'], log_dir={str(tmp_path)!r}).start(); "
              "print(p.pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert pid_alive(child)
    parent.kill()
    parent.wait()
    wait_for(lambda: not pid_alive(child), 5, message=f"child {child} exited after its parent died")


def check_locked_doors(output: str, ports: dict, var_dir: Path, marker: str) -> None:
    """Flower wants the password printed; Redis wants a user; the API holds only its own."""
    flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}"
    password = re.search(r"Flower: \S+ \(user (\S+), password (\S+)\)", output)
    assert password, output
    assert requests.get(f"{flower}/", timeout=5).status_code == 401
    assert requests.post(f"{flower}/api/worker/shutdown/worker1@x", timeout=5).status_code == 401
    assert requests.get(f"{flower}/", auth=password.groups(), timeout=5).status_code == 200
    # It reaches the workers through the control plane (BROKER_URL), not through SQS.
    wait_for(lambda: any(name.startswith("worker1@") for name in requests.get(
        f"{flower}/api/workers", params={"refresh": 1}, auth=password.groups(),
        timeout=10).json()), 60, message="Flower listing worker1")

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=ports["REDIS_PORT"]).ping()
    credentials = var_dir / "redis.env"
    assert credentials.stat().st_mode & 0o777 == 0o600
    worker_url = dict(line.split("=", 1) for line in credentials.read_text().split())["REDIS_URL"]
    assert redis.Redis.from_url(worker_url).config_get("appendfsync") == {
        "appendfsync": "always"}
    worker_password = worker_url.split("@")[0].rsplit(":", 1)[1]
    gunicorns = [pid for pid in processes_with_env(marker)
                 if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert gunicorns
    for pid in gunicorns:
        assert worker_password.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    # Nor does any command line show a password (redis-server gets hashes).
    for pid in processes_with_env(marker):
        assert worker_password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.slow
def test_orders_stack_run_stops_everything_on_sigint(orders_stack, tmp_path):
    # Every process of the run inherits this variable: that is how leftovers are found.
    run_id = uuid.uuid4().hex
    marker = f"ORDERS_STACK_TEST_RUN={run_id}"
    run = orders_stack(ORDERS_STACK_TEST_RUN=run_id)
    ports = run.ports

    def healthy() -> bool:
        run.assert_running()
        try:
            return requests.get(f"{run.api}/health", timeout=10).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, 120, message="the API's /health answering 200")
    wait_for(lambda: "running; Ctrl-C" in run.text(), 30, message="the stack running")
    check_locked_doors(run.text(), ports, tmp_path / "var", marker)
    # The orders and files workers, their pools, beat, gunicorn and its workers, Flower,
    # redis-server, LocalStack.
    assert len(processes_with_env(marker)) >= 11
    # Beat runs, its schedule file under var/.
    wait_for(lambda: list((tmp_path / "var").glob("celerybeat-schedule*")), 30,
             message="beat's schedule file")
    assert run.stop() == 0, run.text()
    text = run.text()
    assert "SIGINT received" in text and "stopped" in text
    assert processes_with_env(marker) == [], text
    for name, port in ports.items():
        assert port_is_free(port), f"{name} {port} still taken"
    for log in ("worker", "files-worker", "beat", "web", "flower", "redis", "sqs"):
        assert (tmp_path / "var" / "log" / f"{log}.log").exists()
