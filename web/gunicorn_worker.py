"""The API's gunicorn worker: gevent, one request per connection, one TCP segment per answer.

With keep-alive, each connection stays with the worker that accepted it, and under load
some of a worker's connections wait far longer than the rest: at 256 wrk connections on 2
cores, gunicorn's gevent worker answered with a p99 of about 3 s and wrk timeouts, against
160 ms when every request came on a new connection, which the least busy worker accepts
(docs/benchmarks.md, "API"). Setting gunicorn's `keepalive = 0` would do that too, but then
the first request of a connection is read without a timeout, and a client that sends half
a request line holds its greenlet for ever. So keepalive stays (that timeout applies to the
first request as well) and each request is marked to close its connection after its
response: the answer says `Connection: close`.

gunicorn writes an answer's headers and its body with one send each; with TCP_CORK (Linux)
the kernel holds them until the connection closes after the answer, and sends headers,
body and FIN together: one segment and one wake-up of the client rather than two.

It uses gunicorn's worker extension point: AsyncWorker.handle_request(listener_name, req,
sock, addr) and Request.force_close() (checked with gunicorn 27.0.1 and gevent 26.9.0;
tests/web/test_api_guard.py checks both behaviours).
"""
import socket

from gunicorn.workers.ggevent import GeventWorker

# Linux only; elsewhere the answer goes out as gunicorn writes it.
TCP_CORK = getattr(socket, "TCP_CORK", None)


class OneRequestGeventWorker(GeventWorker):
    """gunicorn's gevent worker, closing each connection after its one response."""

    def handle_request(self, listener_name, req, sock, addr):
        """Answer req with `Connection: close`, so the connection ends after it."""
        req.force_close()
        if TCP_CORK is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Held until close (at most 200 ms by the kernel): the answer is one segment.
            sock.setsockopt(socket.IPPROTO_TCP, TCP_CORK, 1)
        return super().handle_request(listener_name, req, sock, addr)
