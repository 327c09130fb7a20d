"""A counting reverse proxy in front of the SQS server: requests by X-Amz-Target, messages moved.

Every contender talks to SQS through it, so SQS requests per order are counted the same
way whatever the client (boto3, kombu's pycurl client, anything else). It also counts the
messages sent, received and deleted (batch entries included), so the harness can tell
when a contender without counters of its own has consumed everything.

    python -m bench.sqs_counter --port 9000 --upstream http://127.0.0.1:4566

It can also stand for a network hop: every forwarded request waits the configured round
trip first (--rtt-ms, or GET /_bench/rtt?ms=25 while it runs), as a client in another
data centre waits for SQS. Requests on different connections wait side by side.

GET /_bench/counts answers the counters as JSON; nothing under /_bench/ is forwarded.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from stack.services import PROJECT_ROOT, Process, free_port

COUNTS_PATH = "/_bench/counts"
RTT_PATH = "/_bench/rtt"
# SQS actions whose request or response moves messages, and the counter they feed.
SENT = {"SendMessage": None, "SendMessageBatch": "Entries"}
DELETED = {"DeleteMessage": None, "DeleteMessageBatch": "Entries"}


class Counts:
    """Counters (one event loop, so no lock): requests per action, messages moved."""

    def __init__(self):
        self.requests: Counter = Counter()
        self.messages: Counter = Counter()
        self.in_flight: Counter = Counter()
        self.peak_in_flight: Counter = Counter()  # most requests of an action at once

    def started(self, action: str):
        """One request of this action is under way."""
        self.in_flight[action] += 1
        self.peak_in_flight[action] = max(self.peak_in_flight[action], self.in_flight[action])

    def finished(self, action: str):
        """One request of this action is answered (or failed)."""
        self.in_flight[action] -= 1

    def add(self, action: str, moved: dict[str, int]):
        """Count one request and the messages it moved."""
        self.requests[action] += 1
        self.messages.update(moved)

    def snapshot(self) -> dict:
        """The counters as JSON-ready dicts."""
        return {"requests": dict(self.requests), "messages": dict(self.messages),
                "peak_in_flight": dict(self.peak_in_flight)}


def action_of(headers, body: bytes) -> str:
    """The SQS action: X-Amz-Target (JSON protocol) or the Action form field (query protocol)."""
    target = headers.get("x-amz-target")
    if target:
        return target.rsplit(".", 1)[-1]
    fields = parse_qs(body.decode("utf-8", "replace"))
    return fields.get("Action", ["other"])[0]


def entries(body: bytes, key: str | None) -> int:
    """Messages in a request: 1 for a single-message action, else the batch's entries."""
    if key is None:
        return 1
    try:
        return len(json.loads(body).get(key, []))
    except ValueError:  # query protocol: count the entries' Id fields
        return sum(1 for name in parse_qs(body.decode("utf-8", "replace")) if name.endswith(".Id"))


def received(data: bytes) -> int:
    """Messages in a ReceiveMessage response (JSON or XML)."""
    try:
        return len(json.loads(data).get("Messages", []))
    except ValueError:
        return data.count(b"<Message>")


def moved_by(action: str, body: bytes, status: int, data: bytes) -> dict[str, int]:
    """Messages sent, received or deleted by one successful request."""
    if status >= 300:
        return {}
    if action in SENT:
        return {"sent": entries(body, SENT[action])}
    if action in DELETED:
        return {"deleted": entries(body, DELETED[action])}
    if action == "ReceiveMessage":
        return {"received": received(data)}
    return {}


class Proxy:
    """Forwards each HTTP request unchanged to upstream and relays the answer, counting both.

    asyncio and raw bytes rather than http.server and http.client: the proxy must cost far
    less CPU than the SQS server behind it, on the same two cores.
    """

    def __init__(self, upstream: str, counts: Counts, rtt_seconds: float = 0.0):
        target = urlsplit(upstream)
        self.host, self.port = target.hostname, target.port
        self.counts = counts
        self.rtt_seconds = rtt_seconds

    async def serve_client(self, reader, writer):
        """Keep-alive towards the client: one request after the other on its connection."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, _, headers = parse_head(head)
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                target = urlsplit(request_line.split(b" ")[1].decode("latin-1"))
                if target.path == COUNTS_PATH:
                    writer.write(_json_answer(self.counts.snapshot()))
                elif target.path == RTT_PATH:
                    if "ms" in parse_qs(target.query):
                        self.rtt_seconds = float(parse_qs(target.query)["ms"][0]) / 1000
                    writer.write(_json_answer({"rtt_ms": self.rtt_seconds * 1000}))
                else:
                    writer.write(await self.forward(head, headers, body))
                await writer.drain()
        finally:
            writer.close()

    async def forward(self, head: bytes, headers: dict, body: bytes) -> bytes:
        """The upstream's answer to one request, ready to send back on a kept-alive connection."""
        action = action_of(headers, body)
        self.counts.started(action)
        try:
            return await self._forward(action, head, body)
        finally:
            self.counts.finished(action)

    async def _forward(self, action: str, head: bytes, body: bytes) -> bytes:
        if self.rtt_seconds:
            await asyncio.sleep(self.rtt_seconds)  # the hop there and back, paid up front
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            return b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (
                len(str(exc)), str(exc).encode())
        try:
            up_writer.write(head + body)
            status_line, lines, response_headers = parse_head(
                await up_reader.readuntil(b"\r\n\r\n"))
            if "content-length" in response_headers:
                data = await up_reader.readexactly(int(response_headers["content-length"]))
            else:  # chunked or delimited by close: relay the raw bytes, self-delimiting or not
                data = await up_reader.read()
        finally:
            up_writer.close()
        status = int(status_line.split(b" ")[1])
        self.counts.add(action, moved_by(action, body, status, data))
        # The upstream closes every connection (LocalStack does); the client's may stay open.
        kept = [status_line, *(h for h in lines if not h.lower().startswith(b"connection:"))]
        if "content-length" not in response_headers and "transfer-encoding" not in response_headers:
            kept.append(b"Content-Length: %d" % len(data))
        return b"\r\n".join(kept) + b"\r\n\r\n" + data

    async def serve(self, port: int):
        """Listen on 127.0.0.1:port until cancelled."""
        server = await asyncio.start_server(self.serve_client, "127.0.0.1", port, backlog=256)
        async with server:
            await server.serve_forever()


def _json_answer(data: dict) -> bytes:
    answer = json.dumps(data).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))


def start_proxy(upstream: str, log_dir: Path | str, rtt_ms: float = 0.0,
                timeout: float = 60) -> tuple[Process, str]:
    """This proxy in its own process on a free port in front of upstream, once it answers;
    the process and the proxy's URL."""
    port = free_port()
    process = Process("sqs-counter", [sys.executable, "-m", "bench.sqs_counter", "--port", port,
                                      "--upstream", upstream, "--rtt-ms", rtt_ms],
                      env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, log_dir=log_dir,
                      cwd=PROJECT_ROOT)
    url = f"http://127.0.0.1:{port}"
    return process.start_http(url + COUNTS_PATH, timeout), url


def counts(proxy_url: str) -> dict:
    """The proxy's counters: requests per action, messages sent/received/deleted."""
    with urllib.request.urlopen(proxy_url + COUNTS_PATH, timeout=10) as response:
        return json.load(response)


def set_rtt(proxy_url: str, rtt_ms: float) -> None:
    """Make the proxy add rtt_ms to every request it forwards from now on."""
    url = f"{proxy_url}{RTT_PATH}?{urlencode({'ms': rtt_ms})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        json.load(response)


def parse_head(head: bytes) -> tuple[bytes, list[bytes], dict[str, str]]:
    """The first line, the raw header lines and the headers by lower-case name of a head."""
    first, *lines = head.rstrip(b"\r\n").split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return first, lines, headers


def main(argv=None):
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True,
                        help="SQS endpoint, e.g. http://127.0.0.1:4566")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="round trip added to every forwarded request")
    args = parser.parse_args(argv)
    print(f"counting proxy on 127.0.0.1:{args.port} -> {args.upstream}", flush=True)
    asyncio.run(Proxy(args.upstream, Counts(), args.rtt_ms / 1000).serve(args.port))


if __name__ == "__main__":
    main()
