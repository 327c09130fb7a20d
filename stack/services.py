"""Start and stop the real local services (redis-server, LocalStack SQS/S3/SNS) and other children."""
from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Collection, Mapping, Sequence

import redis

from app.settings import StackSettings, from_env

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOG_DIR = PROJECT_ROOT / "var" / "log"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1
# Loaded once here: the forked child only calls into it.
_LIBC = ctypes.CDLL(None, use_errno=True)


class ServiceError(RuntimeError):
    """A service could not be started or did not become ready."""


def wait_for(condition, timeout: float = 60.0, interval: float = 0.25, message: str = "",
             retry_on: tuple[type[BaseException], ...] = ()):
    """Poll condition() until it returns something truthy, and return that.

    An exception in retry_on counts as "not yet" (the last one is named on timeout); any
    other exception stops the wait, e.g. a check that the child being waited for still
    runs. TimeoutError after timeout seconds.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            value = condition()
            if value:
                return value
        except retry_on as exc:
            last = f" (last: {exc})"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for "
                               f"{message or condition}{last}")
        time.sleep(interval)


def wait_http(url: str, process: "Process", timeout: float = 60.0, status: int | None = None,
              watched: Sequence["Process"] = ()) -> None:
    """Wait until url answers (with status, if given), as a server's readiness.

    Fails with the log of whichever of process and watched exits first, or with process's
    log on timeout (naming the last error answer, whose body often says what is missing).
    """
    def answered() -> bool:
        for child in (process, *watched):
            if not child.running:
                raise child.failure(f"{child.name} exited with {child.returncode} while "
                                    f"waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return status is None or response.status == status
        except urllib.error.HTTPError as exc:
            if status is None:
                return True
            raise OSError(f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}") from None
    wanted = f" {status}" if status else ""
    try:
        wait_for(answered, timeout, interval=0.2, message=f"{url} to answer{wanted}",
                 retry_on=(OSError,))
    except TimeoutError as exc:
        raise process.failure(str(exc)) from None


# The ports free_port picks from lie below the kernel's ephemeral range (ip_local_port_range,
# 32768-60999 by default), where outgoing connections take theirs, so none can take a picked
# port before its server binds it; so do a Redis Cluster node's bus ports (port + 10000).
SERVER_PORTS = range(10000, 22768)
_picked: set[int] = set()  # handed out by this process: two picks never meet


def free_port(count: int = 1, also_free_at: int = 0, taken: Collection[int] = ()) -> int:
    """First of count free consecutive ports (and each + also_free_at), not taken or picked."""
    rng = random.Random()
    for _ in range(1000):
        first = rng.randrange(SERVER_PORTS.start, SERVER_PORTS.stop - count + 1)
        ports = range(first, first + count)
        wanted = [*ports, *(p + also_free_at for p in ports if also_free_at)]
        if not _picked.intersection(wanted) and not set(taken).intersection(wanted) \
                and all(port_is_free(p) for p in wanted):
            _picked.update(wanted)
            return first
    raise ServiceError(f"no {count} free port(s) in {SERVER_PORTS}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could bind host:port now."""
    with socket.socket() as sock:
        # Same option the servers use, so leftover TIME_WAIT connections do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def require_free_port(port: int, what: str) -> None:
    """Raise a clear ServiceError if port is already taken."""
    if not port_is_free(port):
        raise ServiceError(
            f"port {port} is already in use, so {what} cannot start there: a previous run "
            f"may still be running, or another server holds it (see: ss -ltnp 'sport = :{port}')")


def live_processes(matches) -> list[int]:
    """Live (non-zombie) processes whose /proc entry satisfies matches(entry).

    A process that ends while it is read, or whose files cannot be read, is left out.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if stat_fields(entry)[0] != "Z" and matches(entry):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stat_fields(entry: Path) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: state, ppid, group, ..."""
    # The command name may itself contain spaces and parentheses.
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, read from /proc."""
    return live_processes(lambda entry: int(stat_fields(entry)[2]) == pgid)


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a text file, or a note that it is missing."""
    try:
        with open(path, errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except FileNotFoundError:
        return f"(no log at {path})"


def _prepare_child(parent_mask: set, death_signal: int) -> None:
    """In the child before exec: restore the signal mask and die with the parent."""
    signal.pthread_sigmask(signal.SIG_SETMASK, parent_mask)
    # If the supervisor itself is killed (SIGKILL, OOM), its children get death_signal
    # rather than living on as orphans. Linux sends it when the *thread* that started
    # them ends, so start children from a thread that lives as long as they should.
    _LIBC.prctl(PR_SET_PDEATHSIG, death_signal)


class Process:
    """A command in its own session, logging to a file, stopped together with its children."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str] | None = None,
                 log_dir: Path | str | None = None, cwd: Path | str | None = None,
                 death_signal: int = signal.SIGTERM):
        self.name = name
        self.command = [str(part) for part in command]
        self.env = dict(os.environ if env is None else env)
        self.log_path = Path(log_dir or DEFAULT_LOG_DIR) / f"{name}.log"
        self.cwd = str(cwd or PROJECT_ROOT)
        self.death_signal = death_signal
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Process":
        """Start the command; its output is appended to log_path."""
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                      f"{' '.join(self.command)}\n".encode())
            log.flush()
            # Block Ctrl-C/SIGTERM while forking so a signal cannot arrive between the
            # child's birth and self.popen being set, which would leave an orphan.
            parent_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                self.popen = subprocess.Popen(
                    self.command, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=lambda: _prepare_child(parent_mask, self.death_signal))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, parent_mask)
        return self

    def start_http(self, url: str, timeout: float = 60.0) -> "Process":
        """Start the command and wait until url answers; stop it again if it never does."""
        self.start()
        try:
            wait_http(url, self, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        """Process id of the command (also its process group id), once started."""
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        """True while the command itself has not exited."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once the command exited (negative: killed by that signal)."""
        return self.popen.poll() if self.popen else None

    def members(self) -> list[int]:
        """Live processes of this command's group: the command and its children."""
        return group_members(self.popen.pid) if self.popen else []

    def send_signal(self, signum: int) -> None:
        """Send a signal to the whole process group."""
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0, signum: int = signal.SIGTERM) -> int | None:
        """Signal the group, wait up to timeout, SIGKILL what is left; return the exit status."""
        if self.popen is None:
            return None
        if self.members():
            self.send_signal(signum)
            if not self._wait_gone(timeout):
                self.send_signal(signal.SIGKILL)
                self._wait_gone(5)
        return self.popen.wait()

    def _wait_gone(self, timeout: float) -> bool:
        """Wait until the command and every process of its group exited."""
        def gone():
            self.popen.poll()  # reap the command, so that it is no longer a member
            return not self.members()
        try:
            return wait_for(gone, timeout, interval=0.1)
        except TimeoutError:
            return False

    def wait_ready(self, ready, timeout: float, what: str, interval: float = 0.2) -> None:
        """Wait until ready() is true; stop and fail with the log's tail if it exits or times out."""
        def check():
            if not self.running:
                raise self.failure(f"{self.name} exited with {self.returncode} while waiting "
                                   f"for {what}")
            return ready()
        try:
            wait_for(check, timeout, interval, what)
        except TimeoutError as exc:
            self.stop()
            raise self.failure(str(exc)) from None

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of this command's log."""
        return tail(self.log_path, lines)

    def failure(self, message: str) -> ServiceError:
        """A ServiceError carrying message and the tail of the log."""
        return ServiceError(f"{message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}")


def find_redis_server() -> str:
    """Path of the redis-server binary: on PATH, else /usr/bin/redis-server."""
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(found, os.X_OK):
        raise ServiceError("redis-server not found on PATH nor at /usr/bin/redis-server "
                           "(install it: apt-get install redis-server, or make redis-server)")
    return found


class RedisServer:
    """A redis-server on 127.0.0.1:port; with data_dir its data survive restarts and crashes.

    With data_dir every write is fsynced to the append-only file before Redis answers
    (appendfsync always): the worker deletes a batch's SQS messages once Redis answered,
    so a write that `everysec` had not yet fsynced would be lost with a crash of the host.
    """

    def __init__(self, port: int, data_dir: Path | str | None = None,
                 log_dir: Path | str | None = None, name: str = "redis",
                 extra_args: Sequence[str] = ()):
        self.port = port
        # More redis-server options, e.g. ("--replicaof", "127.0.0.1", "6380").
        self.extra_args = list(extra_args)
        self.data_dir = Path(data_dir) if data_dir else None
        self.log_dir = log_dir
        self.name = name
        self.process: Process | None = None
        self._temp_dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line."""
        if self.data_dir:
            directory = self.data_dir
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            self._temp_dir = self._temp_dir or tempfile.TemporaryDirectory(prefix="redis-")
            directory, persistence = Path(self._temp_dir.name), ["--appendonly", "no"]
        directory.mkdir(parents=True, exist_ok=True)
        # --save '' turns RDB snapshots off; the append-only file alone keeps the data.
        # extra_args come last: a repeated option overrides (a benchmark's appendfsync).
        # noeviction: the workers refuse a store that may evict their claims (stated, not
        # left to the build's default).
        return [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(directory), "--daemonize", "no",
                "--logfile", "", "--maxmemory-policy", "noeviction", *persistence,
                *self.extra_args]

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start redis-server and wait until it answers PING."""
        require_free_port(self.port, "redis-server")
        # Assigned before start so a stop() interrupting start() still finds the process.
        self.process = Process(self.name, self.command(), log_dir=self.log_dir)
        self.process.start()
        self.process.wait_ready(self.ping, timeout, f"redis-server on port {self.port} to "
                                                    "answer PING", interval=0.05)
        return self

    def ping(self) -> bool:
        """True if the server answers PING (False while it loads its data or is down)."""
        try:
            with redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.AuthenticationError:
            return True  # up, with its default user off (stack/redis_users.py)
        except redis.RedisError:  # down, or still loading its data (BusyLoadingError)
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its append-only file), wait, SIGKILL if needed."""
        if self.process:
            self.process.stop(timeout)

    def cleanup(self) -> None:
        """Stop and remove the temporary directory of a non-persistent server."""
        self.stop()
        if self._temp_dir:
            self._temp_dir.cleanup()
            self._temp_dir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def sqs_server_python() -> Path:
    """Python that has localstack: SQS_SERVER_PYTHON, else <project>/.venv-sqs/bin/python."""
    configured = from_env(cls=StackSettings).sqs_server_python
    return Path(configured or PROJECT_ROOT / ".venv-sqs" / "bin" / "python")


class SqsServer:
    """LocalStack's SQS (localstack-core, no Docker) on 127.0.0.1:port.

    LocalStack's community edition keeps queues and messages in memory only: after a
    stop and start the queues are gone and must be created again (app.sqs.ensure_queues).
    Its SIGTERM shutdown hangs for good while a client long-polls (ReceiveMessage with
    WaitTimeSeconds), so stop() gives it a few seconds and then kills it: nothing is
    lost that a graceful exit would have kept.
    """

    def __init__(self, port: int, data_dir: Path | str, log_dir: Path | str | None = None,
                 python: Path | str | None = None, name: str = "sqs"):
        self.port = port
        self.data_dir = Path(data_dir)
        self.log_dir = log_dir
        self.python = Path(python) if python else sqs_server_python()
        self.name = name
        self.process: Process | None = None

    @property
    def endpoint_url(self) -> str:
        """HTTP endpoint for boto3 (endpoint_url) and SQS_ENDPOINT_URL."""
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """Environment that makes LocalStack serve SQS, S3 and SNS, locally, without internet."""
        address = f"127.0.0.1:{self.port}"
        return {
            **os.environ,
            # S3 and SNS for the batch files path (app/files); CloudFormation (with the IAM and
            # STS it calls) deploys deploy/cloudformation/pipeline.yaml in tests/deploy. Each
            # starts lazily on first use.
            "SERVICES": "sqs,s3,sns,cloudformation,iam,sts",
            "GATEWAY_LISTEN": address,
            "LOCALSTACK_HOST": address,
            # The default (twisted) gateway binds 0.0.0.0 whatever it is told.
            "GATEWAY_SERVER": "hypercorn",
            "SQS_ENDPOINT_STRATEGY": "path",
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": str(self.data_dir),
            # No certificate download, no analytics events (its telemetry switch), no DNS server.
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
            "DNS_ADDRESS": "0",
        }

    def start(self, timeout: float = 60.0) -> "SqsServer":
        """Start LocalStack and wait until its health endpoint reports SQS available."""
        if not os.access(self.python, os.X_OK):
            raise ServiceError(f"no Python with localstack at {self.python}: run `make .venv-sqs` "
                               "or set SQS_SERVER_PYTHON to a python that has localstack-core")
        require_free_port(self.port, "the SQS server (LocalStack)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = Process(self.name, [self.python, "-m", "localstack.runtime.main"],
                               env=self.environment(), log_dir=self.log_dir,
                               death_signal=signal.SIGKILL)
        self.process.start()
        self.process.wait_ready(lambda: self.sqs_state() in ("available", "running"), timeout,
                                f"the SQS server on port {self.port} to report sqs available")
        return self

    def sqs_state(self) -> str | None:
        """State of sqs in /_localstack/health ("available", "running"...), None if unreachable."""
        try:
            url = f"{self.endpoint_url}/_localstack/health"
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response).get("services", {}).get("sqs")
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM LocalStack and its children, wait, SIGKILL if needed."""
        if self.process:
            self.process.stop(timeout)

    def __enter__(self) -> "SqsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
