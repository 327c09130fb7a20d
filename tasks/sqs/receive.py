"""How a message comes in: kombu's SQS transport with the receive side the worker needs.

sqs:// URLs use this Transport (use_for_sqs_urls, called by tasks.celery.create_celery).
Its Channel receives, hands each message to the consumer as kombu does, and hands every
ack, reject and requeue to tasks/sqs/settle.py, the one way a message ends.

Receives in flight side by side. kombu 5.7 keeps one ReceiveMessage in flight per
queue; with SQS a network hop away (10-30 ms a request) the loop then spends its time
waiting: about ten orders per two round trips, however idle the CPU. The channel keeps
as many receives in flight per queue as the measured receive rate times the measured
round trip needs (Little's law, with headroom) while the queue has messages, and one
long poll while it is empty. The QoS widens the prefetch window by the messages those
receives may bring, ten per live receive chain of every queue: Celery's prefetch
(worker_prefetch_multiplier x concurrency) covers the work in the pool, the receives in
flight cover the round trip. A receive that finds the window full waits (parks) until
a settlement or a landing receive frees room, instead of sleeping polling_interval.

Bodies that are not kombu's. kombu parses every body as JSON to tell its own envelopes
from raw bodies, and only a JSONDecodeError or TypeError counts as "raw": an array
nested 1,000 deep raised RecursionError, and an order with a top-level "properties"
field that is not an object raised AttributeError, both in the consumer, and either
stopped the worker (then the next one, at every redelivery). Such bodies are raw bodies,
for the task to reject or count like any other. A body shaped like a kombu envelope is
run as a task only when tasks/sqs/task_messages.py accepts it (the queue's own tasks,
every part checked); a refused envelope is a raw body too, with the reason for its
rejection.

Failed receives. When ReceiveMessage times out, gets a 5xx or cannot connect at all
(curl's 599), kombu's async client hands the channel [] "to prevent hanging", but the
channel expects a dict: AttributeError in a timer, the promise chain that schedules the
next poll is broken, and the worker, alive and silent, never receives again. A failed
receive is counted as one and polled again after a short backoff (0.5 s doubling up to
5 s).

The kombu internals overridden here are listed, with their upstream issues, in
tasks/compat.py.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from time import monotonic

from kombu.transport import SQS
from vine import transform

from tasks import compat
from tasks.backpressure import gate
from tasks.sqs.settle import DONE, FAILED, RETURNED, settle
from tasks.sqs.task_messages import (REFUSED_KEY, Refused, accepted_files_task_message,
                                     accepted_task_message, looks_like_task_message)

logger = logging.getLogger(__name__)

# ReceiveMessage takes at most ten messages.
SQS_MAX_MESSAGES = 10
# Receives in flight per queue that has messages: at most this many (kombu's curl client
# serves ten requests at a time per process, shared by every queue), and this many
# before anything is measured (fewer soon follow if the rate does not need them).
MAX_RECEIVES_PER_QUEUE = 8
FIRST_RECEIVES_PER_QUEUE = 4
# Receives in flight are sized for this multiple of the rate measured, plus one: room
# for the rate to grow, so a consumer limited by its receives finds out and adds one.
RECEIVE_HEADROOM = 1.5
# The receive rate is measured over windows of this many seconds (EWMA of their rates).
RATE_WINDOW_SECONDS = 0.25
EWMA_WEIGHT = 0.5
# Seconds before polling again after a failed ReceiveMessage: first and most.
RECEIVE_RETRY_FIRST = 0.5
RECEIVE_RETRY_MAX = 5.0


class Ewma:
    """An exponentially weighted moving average; None until the first sample."""

    def __init__(self, weight: float = EWMA_WEIGHT):
        self.weight, self.value = weight, None

    def add(self, sample: float) -> float:
        """Fold one sample in; the new average."""
        self.value = sample if self.value is None else (
            self.value + self.weight * (sample - self.value))
        return self.value


class ReceiveMeter:
    """The round trip of receives that brought messages, and messages received per second."""

    def __init__(self):
        self.round_trip = Ewma()
        self.rate = Ewma()
        self._window_start = monotonic()
        self._window_count = 0

    def landed(self, seconds: float, count: int):
        """One receive answered after `seconds` with `count` messages."""
        if count:
            # An empty answer waited out the long poll: it says nothing about the hop.
            self.round_trip.add(seconds)
        self._window_count += count
        now = monotonic()
        if now - self._window_start >= RATE_WINDOW_SECONDS:
            self.rate.add(self._window_count / (now - self._window_start))
            self._window_start, self._window_count = now, 0

    def receives_needed(self) -> int:
        """Receives to keep in flight per queue: rate x round trip / 10, with headroom."""
        if self.rate.value is None or self.round_trip.value is None:
            return FIRST_RECEIVES_PER_QUEUE
        in_flight = self.rate.value * self.round_trip.value / SQS_MAX_MESSAGES
        return max(1, min(MAX_RECEIVES_PER_QUEUE,
                          math.ceil(in_flight * RECEIVE_HEADROOM) + 1))


class QoS(SQS.QoS):
    """The prefetch window, which also holds the receives in flight; rejects end in settle()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Every ack, reject and requeue: room may have opened for a parked receive.
        compat.on_settled(self, lambda: self.channel.wake_receivers())

    def _room(self) -> int | None:
        if not self.prefetch_count:
            return None
        return (self.prefetch_count + self.channel.receive_allowance()
                - compat.unsettled(self) - self.channel.receiving)

    def can_consume(self):
        """Room for a whole receive (or for the whole window, if smaller)."""
        room = self._room()
        if room is None:
            return True
        return room >= min(SQS_MAX_MESSAGES,
                           self.prefetch_count + self.channel.receive_allowance())

    def can_consume_max_estimate(self):
        """Messages the next receive may ask for."""
        room = self._room()
        return None if room is None else max(room, 0)

    def reject(self, delivery_tag, requeue=False):
        """A failed delivery waits out its backoff; a requeued one comes back (no backoff)."""
        try:
            message = self.get(delivery_tag)
        except KeyError:
            return self.ack(delivery_tag)  # kombu's bookkeeping only
        settle([message], RETURNED if requeue else FAILED)


class Channel(SQS.Channel):
    """SQS channel: receives in flight side by side, odd bodies and failed receives survived."""

    QoS = QoS
    _failed_receives = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receive_meter = ReceiveMeter()
        self._chains: Counter = Counter()  # live receive chains per queue
        self._parked: list[str] = []  # queues of chains waiting for room in the window
        self.receiving = 0  # messages asked for by the receives in flight
        gate.on_open(self.wake_receivers)

    # The receive chains. kombu's receive loop is a chain per queue: _schedule_queue
    # receives (if the prefetch window has room), and the answer schedules the next
    # _schedule_queue (_loop1). Chains are added up to what ReceiveMeter says after a
    # receive that brought messages; surplus ones end, and after an empty receive every
    # one but the last (an empty queue needs one long poll, not eight).

    def receive_allowance(self) -> int:
        """Messages the prefetch window holds beyond Celery's prefetch: ten per live chain.

        Counted over every queue's chains: sized by the rate alone, the empty queues' long
        polls (in flight for wait_time_seconds) filled the window, and a queue whose
        chains had all parked was never received from again (the files queue after its
        first files.execute, with the orders queues idle).
        """
        return sum(self._chains.values()) * SQS_MAX_MESSAGES

    def basic_consume(self, queue, *args, **kwargs):
        """kombu starts one receive chain for the queue; count it."""
        if self.hub:
            self._chains[queue] += 1
        return super().basic_consume(queue, *args, **kwargs)

    def _schedule_queue(self, queue):
        if queue not in compat.active_queues(self) or (
                self._chains[queue] > self.receive_meter.receives_needed()):
            self._chains[queue] -= 1  # this chain ends (queue cancelled, or one too many)
            return
        if gate.closed or not self.qos.can_consume():
            # Woken by wake_receivers() once room opens, or the store takes writes again.
            self._parked.append(queue)
            return
        super()._schedule_queue(queue)

    def _loop1(self, queue, messages_fetched=None):
        if self._failed_receives:
            self.hub.call_later(self._receive_retry_delay(), self._schedule_queue, queue)
            return
        if not messages_fetched and self._chains[queue] > 1:
            self._chains[queue] -= 1  # the queue is empty: one long poll is enough
            return
        if messages_fetched:
            while self._chains[queue] < self.receive_meter.receives_needed():
                self._chains[queue] += 1
                self.hub.call_soon(self._schedule_queue, queue)
        super()._loop1(queue, messages_fetched)

    def wake_receivers(self):
        """Resume the parked chains once the window has room (on every settlement and landing)
        and the store takes writes (tasks/backpressure.py)."""
        if self._parked and self.hub and not gate.closed and self.qos.can_consume():
            parked, self._parked = self._parked, []
            for queue in parked:
                self.hub.call_soon(self._schedule_queue, queue)

    def _get_from_sqs(self, queue_name, queue_url, connection, count=1, callback=None):
        self.receiving += count
        started = monotonic()

        def landed(response):
            self.receiving -= count
            messages = response.get("Messages") if isinstance(response, dict) else None
            self.receive_meter.landed(monotonic() - started, len(messages or ()))
            self.wake_receivers()  # the room this receive held is free again
            return response

        return super()._get_from_sqs(queue_name, queue_url, connection, count,
                                     callback=transform(landed, callback))

    def _on_messages_ready(self, queue, qname, messages):
        if isinstance(messages, dict):
            if self._failed_receives:
                logger.warning("SQS: receiving from %s again", qname)
                self._failed_receives = 0
            return super()._on_messages_ready(queue, qname, messages)
        self._failed_receives += 1
        logger.warning("SQS: ReceiveMessage on %s failed (timeout, 5xx or endpoint "
                       "unreachable), %d in a row; polling again in %.1f s", qname,
                       self._failed_receives, self._receive_retry_delay())
        return 0

    def _receive_retry_delay(self) -> float:
        return min(RECEIVE_RETRY_MAX, RECEIVE_RETRY_FIRST * 2 ** (self._failed_receives - 1))

    # The bodies.

    def _prepare_json_payload(self, text):
        if '"body"' not in text:
            # Only a kombu envelope's parse is used (task_messages.py): an order is parsed
            # once, by its task, not a second time here.
            return {}
        try:
            return super()._prepare_json_payload(text)
        except (RecursionError, ValueError):
            return {}

    def _envelope_payload(self, payload, raw_text, message, q_url):
        refused = None
        if looks_like_task_message(payload):
            # The files queue runs the files canvas; every other queue runs orders tasks.
            files_queue = q_url == self.transport_options.get("files_queue_url")
            check = accepted_files_task_message if files_queue else accepted_task_message
            try:
                payload = check(payload, max_eta_seconds=self.visibility_timeout)
            except Refused as exc:
                payload, refused = {}, str(exc)
            except Exception as exc:  # a gap in the check must not stop the consumer
                logger.exception("SQS message %s: task message check failed",
                                 message.get("MessageId"))
                payload, refused = {}, f"the task message could not be checked ({exc!r:.80})."
        else:
            payload = {}  # wrapped as a raw body by kombu
        payload = super()._envelope_payload(payload, raw_text, message, q_url)
        if refused:
            # The pipeline rejects the body with this reason unless it is an order itself.
            payload["properties"]["delivery_info"][REFUSED_KEY] = refused
            logger.warning("SQS message %s looks like a task message but is not run as one: %s",
                           message.get("MessageId"), refused)
        return payload

    # Every way kombu ends a delivery leads to settle().

    def basic_ack(self, delivery_tag, multiple=False):
        """Delete the message (one request, not waited for) and release its slot now."""
        try:
            message = self.qos.get(delivery_tag)
        except KeyError:
            return self.qos.ack(delivery_tag)  # kombu's bookkeeping only
        settle([message], DONE)

    def basic_reject(self, delivery_tag, requeue=False):
        """The QoS settles it (kombu's SQS channel would delete some rejects itself first)."""
        self.qos.reject(delivery_tag, requeue=requeue)

    def _restore(self, message):
        """A delivery still unsettled as the channel closes: shown again after wait_time_seconds.

        kombu's books have dropped it already; kombu's own restore loses its receipt
        handle on the way (it drops 'sqs_message' from the delivery info).
        """
        settle([message], RETURNED, release=False)


class Transport(SQS.Transport):
    """kombu's SQS transport with the channel above."""

    Channel = Channel


def use_for_sqs_urls() -> None:
    """Make sqs:// URLs in this process use this Transport; redis:// URLs keep Redis.

    Not celeryconfig.broker_transport: Celery passes it with every URL, so the events
    connection and Flower's --broker on the control-plane Redis became SQS connections.
    """
    compat.alias_transport("sqs", f"{__name__}:Transport")
