"""web.access_log.AccessLogger writes the access line gunicorn's own Logger writes, for
requests parsed and answered by gunicorn's HTTP code."""
from __future__ import annotations

import base64
import re
import socket
import time
from datetime import timedelta

import pytest
import requests
from gunicorn import glogging
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from web.access_log import AccessLogger

TIMESTAMP = re.compile(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]")
CLIENT, SERVER = ("127.0.0.1", 50123), ("127.0.0.1", 8000)
DEFAULT_FORMAT = Config().access_log_format
REQUESTS = {
    "plain": b"GET /users/u5/stats HTTP/1.1\r\nHost: api\r\n\r\n",
    "query, referer, agent with a quote": (
        b"GET /stats/days?from=2024-01-01&to=2024-01-31 HTTP/1.1\r\nHost: api\r\n"
        b"Referer: http://example.com/page\r\nUser-Agent: say \"hi\"/1.0\r\n\r\n"),
    "basic auth user": (b"GET /stats/global HTTP/1.0\r\nHost: api\r\nAuthorization: Basic "
                        + base64.b64encode(b"ops:secret") + b"\r\n\r\n"),
    "percent-escaped id": b"GET /users/zo%C3%AB/stats HTTP/1.1\r\nHost: api\r\n\r\n",
}
FORMATS = {
    "default": DEFAULT_FORMAT,
    "every plain atom": " ".join(f"%({atom})s" for atom in "hlutrsmUqHbBfaTDMLp"),
    "header and environ atoms": '%(h)s "%({host}i)s" %({content-type}o)s %({wsgi.url_scheme}e)s '
                                '%({x-missing}i)s %(r)s',
}


def served(raw: bytes, status: str = "404 NOT FOUND") -> tuple:
    """gunicorn's (response, request, environ) once it has parsed raw and answered it."""
    cfg = Config()
    request = next(RequestParser(cfg, [raw], CLIENT))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        response, environ = wsgi.create(request, ours, CLIENT, SERVER, cfg)
        body = b'{"error": "No orders counted.", "status": 404}\n'
        response.start_response(status, [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(body)))])
        response.write(body)
        theirs.recv(65536)
    return response, request, environ


def access_line(logger_class, log_format: str, tmp_path, raw: bytes) -> str:
    """The access line logger_class writes for raw, with its timestamp as [T]."""
    path = tmp_path / f"{logger_class.__name__}.log"
    cfg = Config()
    cfg.set("accesslog", str(path))
    cfg.set("access_log_format", log_format)
    logger = logger_class(cfg)
    logger.access(*served(raw), timedelta(seconds=1, microseconds=2345))
    for handler in logger.access_log.handlers:
        handler.flush()
    [line] = path.read_text().splitlines()
    assert TIMESTAMP.search(line) or "%(t)s" not in log_format, line
    return TIMESTAMP.sub("[T]", line)


@pytest.mark.parametrize("log_format", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("raw", REQUESTS.values(), ids=REQUESTS.keys())
def test_the_same_line_as_gunicorns_logger(tmp_path, log_format, raw):
    expected = access_line(glogging.Logger, log_format, tmp_path, raw)
    assert access_line(AccessLogger, log_format, tmp_path, raw) == expected


def clock_second() -> int:
    """The second of the clock gunicorn's now() formats (time.strftime reads C's time())."""
    return time.localtime().tm_sec


@pytest.mark.parametrize("time_ahead", [0.0, 0.5], ids=["time.time agrees", "time.time ahead"])
def test_the_timestamp_is_gunicorns_of_the_current_second(monkeypatch, time_ahead):
    # time.time() reads a finer clock than C's time(), a tick ahead of it at a second's
    # turn: a stamp keyed by time.time() would then keep the second before for a second.
    # Here it is ahead by half a second, to show that turn every time.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + time_ahead)
    cfg = Config()
    ours, theirs = AccessLogger(cfg), glogging.Logger(cfg)
    compared = 0
    for _ in range(16):
        second = clock_second()
        stamps = ours.now(), theirs.now()
        if clock_second() == second:  # both read within one second
            assert stamps[0] == stamps[1]
            compared += 1
        time.sleep(0.1)
    assert compared


def test_the_shipped_server_logs_each_request_in_gunicorns_format(api_server, tmp_path):
    agent = "access-log-test/1.0"
    assert requests.get(f"{api_server}/stats/global", headers={"User-Agent": agent},
                        timeout=10).status_code == 200
    log = next(tmp_path.glob("gunicorn-0*.log"))
    line_format = re.compile(r'127\.0\.0\.1 - - ' + TIMESTAMP.pattern
                             + r' "GET /stats/global HTTP/1\.1" 200 \d+ "-" "' + re.escape(agent))
    deadline = time.monotonic() + 5
    while not any(map(line_format.match, log.read_text().splitlines())):
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
