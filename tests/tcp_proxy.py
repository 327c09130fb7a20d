"""A tiny threaded TCP proxy for tests: put it in front of a server, cut it, restore it.

Restarting LocalStack would lose its in-memory queues, so an outage of the SQS endpoint
is simulated here instead: while cut, the proxy's port refuses new connections and every
open connection is reset, as when the endpoint goes away; restored, it forwards again on
the same port. A delay makes the endpoint slow instead: each answer waits that long.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

BUFFER = 65536


def _reset(sock: socket.socket) -> None:
    """Close a socket with a TCP RST (SO_LINGER 0), as a dead peer would look."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class TcpProxy:
    """Forward 127.0.0.1:port to target (host, port), one pair of threads per connection."""

    def __init__(self, target_host: str, target_port: int, port: int = 0):
        self.target = (target_host, target_port)
        self.port = port
        self.connections = 0  # accepted since start, for the test's curiosity
        self.delay = 0.0  # seconds each chunk from the server waits before it is passed on
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._replication_stalled = threading.Event()

    @property
    def url(self) -> str:
        """http:// URL of the proxy's port."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        """True while the proxy refuses connections."""
        return not self._accepting.is_set()

    def start(self) -> "TcpProxy":
        """Listen (on a free port unless one was given) and forward."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting.set()
        threading.Thread(target=self._accept_loop, args=(listener,), name="proxy-accept",
                         daemon=True).start()
        return self

    def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every open one."""
        self._accepting.clear()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _reset(sock)

    def restore(self) -> None:
        """Listen again on the same port."""
        if not self.is_cut:
            return
        self.start()

    stop = cut

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._accepting.is_set() and listener is self._listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), name="proxy-conn",
                             daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(None)
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self.is_cut:
                _reset(client)
                _reset(upstream)
                return
            self._open.update((client, upstream))
        link = {"replication": False}  # set once the client speaks as a Redis replica
        pump = threading.Thread(target=self._pump, args=(upstream, client, self, link),
                                name="proxy-pump", daemon=True)
        pump.start()
        self._pump(client, upstream, link=link)
        pump.join()
        with self._lock:
            self._open.discard(client)
            self._open.discard(upstream)
        client.close()
        upstream.close()

    def stall_replication(self, stalled: bool = True) -> None:
        """Stop (or resume) passing a primary's stream on to its replicas, and only that.

        The stream then waits in the primary's buffers, as on a network that stopped
        delivering; cut() and a dead primary lose it. Other clients are served as before.
        """
        if stalled:
            self._replication_stalled.set()
        else:
            self._replication_stalled.clear()

    def _pump(self, source: socket.socket, sink: socket.socket, delayed: "TcpProxy | None" = None,
              link: dict | None = None) -> None:
        """Copy bytes one way until EOF or an error; pass EOF on as a half-close.

        With delayed (the server-to-client direction), each chunk waits delayed.delay, and
        a replication link waits while stall_replication holds it. Without (the other
        direction), a replica's handshake (REPLCONF) marks its link.
        """
        try:
            while True:
                while (delayed is not None and link["replication"]
                       and self._replication_stalled.is_set() and not self.is_cut):
                    time.sleep(0.01)
                data = source.recv(BUFFER)
                if not data:
                    break
                if delayed is None and link is not None and b"REPLCONF" in data:
                    link["replication"] = True
                if delayed is not None and delayed.delay:
                    time.sleep(delayed.delay)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            # One side failed or was reset by cut(): make sure the other direction ends too.
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
