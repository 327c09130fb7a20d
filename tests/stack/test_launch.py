"""stack/launch.py and the HTTP readiness wait: the project's processes as the stack, the
bench and the tests start them."""
from __future__ import annotations

import sys

import pytest
import requests

from stack.launch import (Worker, api_command, beat_command, flower_command, start_api,
                          worker_command)
from stack.services import Process, ServiceError, free_port, wait_http

# A server that answers every GET with the status in its path (/status/503 -> 503).
STATUS_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(int(self.path.rsplit('/', 1)[1]))
        self.end_headers()
        self.wfile.write(b'status body')
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), Handler).serve_forever()
"""


def status_server(tmp_path, port: int) -> Process:
    return Process("status-server", [sys.executable, "-c", STATUS_SERVER, port],
                   log_dir=tmp_path)


def test_the_commands_name_the_project_apps():
    assert worker_command("n1", 3, "WARNING")[1:] == [
        "-A", "tasks", "worker", "--loglevel", "WARNING", "--concurrency", "3", "-n", "n1@%h"]
    assert api_command("127.0.0.1:9")[1:] == ["-c", "web/gunicorn.conf.py", "--bind",
                                              "127.0.0.1:9", "web:create_app()"]
    assert api_command()[-1] == "web:create_app()" and "--bind" not in api_command()
    assert flower_command(5555)[1:] == ["-A", "tasks", "flower", "--port=5555",
                                        "--address=127.0.0.1"]
    assert beat_command("var/celerybeat-schedule", "DEBUG")[1:] == [
        "-A", "tasks", "beat", "--loglevel", "DEBUG", "--schedule", "var/celerybeat-schedule"]


def test_any_answer_is_ready_unless_a_status_is_asked_for(tmp_path):
    port = free_port()
    server = status_server(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        server.start_http(f"{base}/status/503", timeout=30)
        with pytest.raises(ServiceError, match=r"HTTP 503: status body"):
            wait_http(f"{base}/status/503", server, timeout=1.5, status=200)
        wait_http(f"{base}/status/200", server, timeout=5, status=200)
    finally:
        server.stop()


def test_the_wait_fails_early_with_the_log_of_a_watched_process_that_exits(tmp_path):
    port = free_port()
    server = status_server(tmp_path, port).start()
    crashing = Process("crashing", [sys.executable, "-c", "print('cannot go on'); exit(3)"],
                       log_dir=tmp_path).start()
    try:
        # Nothing answers at this path's port: only the crash can end the wait early.
        with pytest.raises(ServiceError, match=r"(?s)crashing exited with 3.*cannot go on"):
            wait_http(f"http://127.0.0.1:{free_port()}/", server, timeout=60,
                      watched=[crashing])
    finally:
        server.stop()


def test_a_server_that_never_answers_is_stopped_again(tmp_path):
    sleeper = Process("sleeper", ["sleep", "300"], log_dir=tmp_path)
    with pytest.raises(ServiceError, match="timed out"):
        sleeper.start_http(f"http://127.0.0.1:{free_port()}/", timeout=1)
    assert not sleeper.running and sleeper.members() == []


def test_the_api_answers_once_started_and_a_worker_once_ready(settings, tmp_path):
    process, url = start_api(settings, tmp_path)
    try:
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        process.stop(timeout=15)
    worker = Worker(settings, tmp_path, concurrency=1, name="launch").start()
    try:
        assert worker.process.poll() is None
        assert b" ready." in worker.log_path.read_bytes()
    finally:
        worker.stop()
    assert worker.process.poll() is not None
