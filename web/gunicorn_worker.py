"""The API's gunicorn worker: gevent, one request per connection.

With keep-alive, each connection stays with the worker that accepted it, and under load
some of a worker's connections wait far longer than the rest: at 256 wrk connections on 2
cores, gunicorn's gevent worker answered with a p99 of about 3 s and wrk timeouts, against
160 ms when every request came on a new connection, which the least busy worker accepts
(docs/benchmarks.md, "API"). Setting gunicorn's `keepalive = 0` would do that too, but then
the first request of a connection is read without a timeout, and a client that sends half
a request line holds its greenlet for ever. So keepalive stays (that timeout applies to the
first request as well) and each request is marked to close its connection after its
response: the answer says `Connection: close`.

It uses gunicorn's worker extension point: AsyncWorker.handle_request(listener_name, req,
sock, addr) and Request.force_close() (checked with gunicorn 27.0.1 and gevent 26.9.0;
tests/web/test_api_guard.py checks both behaviours).
"""
from gunicorn.workers.ggevent import GeventWorker


class OneRequestGeventWorker(GeventWorker):
    """gunicorn's gevent worker, closing each connection after its one response."""

    def handle_request(self, listener_name, req, sock, addr):
        """Answer req with `Connection: close`, so the connection ends after it."""
        req.force_close()
        return super().handle_request(listener_name, req, sock, addr)
