"""A control plane on Redis beside the SQS data plane: worker events and remote control.

SQS has no fanout, so Celery starts neither events nor remote control on it. Tasks stay
on SQS; events and the pidbox (inspect/control) use the Redis at CONTROL_URL.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from celery.app.control import Control as AppControl
from celery.exceptions import WorkerShutdown, WorkerTerminate
from celery.worker.consumer.control import Control as ControlStep
from celery.worker.pidbox import Pidbox
from kombu import Connection

from tasks import compat


logger = logging.getLogger(__name__)


def control_connection(url: str, heartbeat: float | None = None) -> Connection:
    """A new connection to the control-plane Redis (settings.control_plane_url).

    Not the app's connection_for_write: that one carries the SQS transport options.
    """
    return Connection(url, heartbeat=heartbeat or 0)


class ControlPlane(AppControl):
    """app.control for clients (celery inspect/control, Flower): broadcasts go via Redis."""

    def __init__(self, app=None):
        super().__init__(app)
        # Celery publishes commands and replies through the app's producer pool, which
        # is SQS; without a pool kombu publishes on the channel given, i.e. Redis.
        compat.publish_on_given_channel(self.mailbox)

    def broadcast(self, command, arguments=None, destination=None, connection=None, **kwargs):
        """Broadcast a control command over the control-plane Redis."""
        if connection is not None:
            return super().broadcast(command, arguments, destination, connection, **kwargs)
        with control_connection(self.app.settings.control_plane_url) as connection:
            return super().broadcast(command, arguments, destination, connection, **kwargs)


class ThreadedPidbox(Pidbox):
    """The worker's mailbox, served by a thread on its own Redis connection."""

    def __init__(self, c):
        super().__init__(c)
        self._stop = threading.Event()
        self._thread = None

    def start(self, c):
        """Serve control commands in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="control-plane", daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            connection = control_connection(self.c.app.settings.control_plane_url)
            try:
                with connection:
                    self.node.channel = connection.channel()
                    self.node.listen(callback=self.on_message)
                    logger.info("control plane: listening on %s", connection.as_uri())
                    while not self._stop.is_set():
                        try:
                            connection.drain_events(timeout=1.0)
                        except socket.timeout:
                            pass
            except connection.connection_errors + connection.channel_errors as exc:
                logger.warning("control plane: %r, reconnecting in 2 s", exc)
                self._stop.wait(2)

    def on_message(self, body, message):
        """Handle a command; a shutdown command becomes a signal to this worker."""
        try:
            super().on_message(body, message)
        except WorkerShutdown:
            os.kill(os.getpid(), signal.SIGTERM)  # warm shutdown, as from the terminal
        except WorkerTerminate:
            os.kill(os.getpid(), signal.SIGQUIT)

    def reset(self):
        """Nothing to reset: the serving loop reconnects by itself."""

    def stop(self, c):
        """Stop serving and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    shutdown = stop


class RedisControl(ControlStep):
    """The worker's remote-control bootstep, on Redis whatever the broker supports."""

    def __init__(self, c, **kwargs):
        self.is_green = False
        self.box = ThreadedPidbox(c)
        self.start, self.stop, self.shutdown = self.box.start, self.box.stop, self.box.shutdown
        super(ControlStep, self).__init__(c, **kwargs)

    def include_if(self, c):
        """On whenever remote control is enabled (SQS has no fanout of its own)."""
        return c.app.conf.worker_enable_remote_control
