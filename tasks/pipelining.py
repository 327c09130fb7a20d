"""Hiding SQS round trips: receives in flight side by side, settlements off the event loop.

kombu 5.7 keeps one ReceiveMessage in flight per queue, and its deletes and visibility
changes are synchronous boto3 calls made on the worker's event loop. With SQS a network
hop away (10-30 ms a request) the loop then spends its time waiting: about ten orders
per two round trips, however idle the CPU.

- ReceivePipeline (a Channel mixin) keeps as many receives in flight per queue as the
  measured receive rate times the measured round trip needs (Little's law, with
  headroom) while the queue has messages, and one long poll while it is empty; a
  receive that finds the window full waits (parks) until an ack or a landing receive
  frees room, instead of sleeping polling_interval.
- WindowQoS (a QoS mixin) widens the prefetch window by the messages those receives
  may bring, ten per live receive chain of every queue: Celery's prefetch
  (worker_prefetch_multiplier x concurrency) covers the work in the pool, the receives
  in flight cover the round trip. So receives never crowd each other out: a chain
  parks only while more than Celery's prefetch is delivered and not yet settled, and
  each of those deliveries wakes it when it is settled.
- LoopSettler sends DeleteMessageBatch and ChangeMessageVisibility from the event loop
  through kombu's asynchronous SQS connection (botocore's signer, a curl client of its
  own), never waiting for the answer: no boto3 client call (event hooks, validation,
  retries, parsing by shape) and no thread contending with the loop for the GIL. Off
  the loop (the pool draining at shutdown, the celery CLI) Settler runs them on a few
  threads with boto3, and takes over whatever the loop had not settled when its hub
  closes. The kombu bookkeeping (the prefetch slot) is released at once on the loop; a
  settlement that fails is logged and harmless: a message not deleted is received again
  after its visibility timeout and counted as a duplicate, one whose visibility was not
  changed comes back after the visibility timeout instead of its backoff.

The kombu internals this overrides or reads are listed, with why, in tasks/compat.py.
"""
from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import count
from time import monotonic

from kombu.asynchronous.aws.sqs.connection import AsyncSQSConnection
from kombu.asynchronous.http import Client as HttpClient
from vine import transform

from tasks import compat

logger = logging.getLogger(__name__)

# ReceiveMessage and DeleteMessageBatch take at most ten messages.
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
# Threads that settle messages off the loop; each waits one round trip per request.
SETTLE_THREADS = 8
# Settlements in flight at once from the loop: a curl client of their own, so they never
# queue behind the receives (kombu's shared client serves ten, long polls included).
SETTLE_CONNECTIONS = 8


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


class ReceivePipeline:
    """SQS Channel mixin: several ReceiveMessage calls in flight per queue.

    kombu's receive loop is a chain per queue: _schedule_queue receives (if the prefetch
    window has room), and the answer schedules the next _schedule_queue (_loop1). This
    adds chains up to what ReceiveMeter says after a receive that brought messages, ends
    surplus ones and, after an empty receive, every one but the last (an empty queue
    needs one long poll, not eight); a chain that finds the window full parks until an
    ack or a landing receive frees room.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receive_meter = ReceiveMeter()
        self._chains: Counter = Counter()  # live receive chains per queue
        self._parked: list[str] = []  # queues of chains waiting for room in the window
        self.receiving = 0  # messages asked for by the receives in flight

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
        if not self.qos.can_consume():
            self._parked.append(queue)  # woken by wake_receivers() once room opens
            return
        super()._schedule_queue(queue)

    def _loop1(self, queue, messages_fetched=None):
        if not messages_fetched and self._chains[queue] > 1:
            self._chains[queue] -= 1  # the queue is empty: one long poll is enough
            return
        if messages_fetched:
            while self._chains[queue] < self.receive_meter.receives_needed():
                self._chains[queue] += 1
                self.hub.call_soon(self._schedule_queue, queue)
        super()._loop1(queue, messages_fetched)

    def wake_receivers(self):
        """Resume the parked chains once the window has room (on every ack and landing)."""
        if self._parked and self.hub and self.qos.can_consume():
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

    def basic_ack(self, delivery_tag, multiple=False):
        """Release the message's slot now and delete it off the loop."""
        try:
            info = self.qos.get(delivery_tag).delivery_info
            receipt_handle = info["sqs_message"]["ReceiptHandle"]
        except KeyError:
            return super().basic_ack(delivery_tag, multiple)
        settler(self).delete(self.sqs(queue=self._queue_of(info)), info["sqs_queue"],
                             [receipt_handle])
        self.release(delivery_tag)

    def release(self, delivery_tag):
        """kombu's bookkeeping of an ack (the base channel's: no SQS call)."""
        compat.release_delivery(self, delivery_tag)

    def _queue_of(self, delivery_info: dict) -> str | None:
        routing_key = delivery_info.get("routing_key")
        return self.canonical_queue_name(routing_key) if routing_key else None

    def _put(self, queue, message, **kwargs):
        if not message.get("redelivered"):
            return super()._put(queue, message, **kwargs)
        # A requeue: kombu makes the message visible again after wait_time_seconds.
        settler(self).change_visibility(self.sqs(queue=self.canonical_queue_name(queue)),
                                        self._new_queue(queue),
                                        message["properties"]["delivery_tag"],
                                        self.wait_time_seconds)


class WindowQoS:
    """SQS QoS mixin: the window also holds the receives in flight; a full one parks them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Every ack, reject and requeue: room may have opened for a receive.
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

    def apply_backoff_policy(self, routing_key, delivery_tag, backoff_policy, backoff_tasks):
        """kombu's backoff (hide a failed message for a while), sent off the loop."""
        queue_url = compat.queue_url(self.channel, routing_key)
        task_name, receives = self.extract_task_name_and_number_of_retries(delivery_tag)
        if not task_name or not receives:
            return
        seconds = backoff_policy.get(receives)
        if task_name in backoff_tasks and seconds is not None:
            settler(self.channel).change_visibility(self.channel.sqs(routing_key), queue_url,
                                                    delivery_tag, seconds)


class Settler:
    """DeleteMessageBatch and ChangeMessageVisibility on threads; failures logged, not raised.

    boto3 clients are thread-safe; each call is handed the client of its queue, made on
    the event loop's thread.
    """

    def __init__(self, threads: int = SETTLE_THREADS):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sqs-settle")
        self._pending: set = set()
        self._lock = threading.Lock()

    def delete(self, client, queue_url: str, receipt_handles: list[str]):
        """Delete up to ten messages of one queue in one request."""
        self.submit(_delete, client, queue_url, receipt_handles)

    def change_visibility(self, client, queue_url: str, receipt_handle: str, seconds: int):
        """Hide (or show) one message for `seconds`."""
        self.submit(_change_visibility, client, queue_url, receipt_handle, seconds)

    def submit(self, fn, *args):
        """Run fn(*args) on a settling thread."""
        future = self._pool.submit(fn, *args)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future):
        with self._lock:
            self._pending.discard(future)

    def wait(self, timeout: float) -> int:
        """Wait up to timeout for the settlements under way; how many are still pending."""
        with self._lock:
            pending = set(self._pending)
        return len(wait(pending, timeout=timeout).not_done) if pending else 0


def _delete(client, queue_url: str, receipt_handles: list[str]):
    try:
        response = client.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(receipt_handles)])
    except Exception as exc:  # noqa: BLE001 - whatever it is, the messages come back
        logger.warning("SQS: could not delete %d message(s) from %s (they will be received "
                       "again and counted as duplicates): %r", len(receipt_handles),
                       queue_url, exc)
        return
    for failure in response.get("Failed", []):
        # Redelivered later and then counted as a duplicate: harmless, but worth seeing.
        logger.warning("SQS did not delete message %s: %s", failure["Id"], failure.get("Message"))


def _change_visibility(client, queue_url: str, receipt_handle: str, seconds: int):
    try:
        client.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=receipt_handle,
                                         VisibilityTimeout=seconds)
    except Exception as exc:  # noqa: BLE001 - the visibility timeout brings it back anyway
        logger.warning("SQS: could not change the visibility of a message in %s to %s s "
                       "(it comes back after its visibility timeout): %r", queue_url,
                       seconds, exc)


class LoopSettler:
    """DeleteMessageBatch and ChangeMessageVisibility sent from the event loop, not waited for.

    Each request is signed by botocore and sent by curl on the hub; its answer is checked
    by a callback that logs and never raises (an exception there would reach the hub and
    lose the other answers curl had read). What is still unanswered when the hub closes
    (shutdown, or a reset after a lost connection) is handed to the thread Settler.
    """

    def __init__(self, hub, fallback: Settler):
        self.hub, self._fallback = hub, fallback
        self._loop_thread = threading.get_ident()
        self.on_loop = True  # False once the consumer stops (the pool then drains off it)
        self._http = None
        self._connections: dict[int, AsyncSQSConnection] = {}
        self._pending: dict[int, tuple] = {}  # request -> what the thread Settler would run
        self._ids = count()
        self._lock = threading.Lock()
        compat.on_hub_close(hub, lambda hub: self.hand_over())

    def usable(self, channel) -> bool:
        """Whether a settlement asked for now, by this channel, can go out from the loop."""
        return (self.on_loop and channel.hub is self.hub
                and threading.get_ident() == self._loop_thread)

    def delete(self, client, queue_url: str, receipt_handles: list[str]):
        """Delete up to ten messages of one queue in one request."""
        entries = [{"Id": str(i), "ReceiptHandle": handle}
                   for i, handle in enumerate(receipt_handles)]
        query = {}
        for n, entry in enumerate(entries, 1):
            query.update({f"DeleteMessageBatchRequestEntry.{n}.{key}": value
                          for key, value in entry.items()})
        self._send(client, "DeleteMessageBatch", queue_url,
                   {"json": {"Entries": entries}, "query": query},
                   (_delete, client, queue_url, receipt_handles))

    def change_visibility(self, client, queue_url: str, receipt_handle: str, seconds: int):
        """Hide (or show) one message for `seconds`."""
        params = {"ReceiptHandle": receipt_handle, "VisibilityTimeout": int(seconds)}
        self._send(client, "ChangeMessageVisibility", queue_url,
                   {"json": params, "query": {**params, "VisibilityTimeout": str(int(seconds))}},
                   (_change_visibility, client, queue_url, receipt_handle, seconds))

    def _send(self, client, operation: str, queue_url: str, protocol_params: dict, fallback):
        request = next(self._ids)
        with self._lock:
            self._pending[request] = fallback

        def answered(response):
            with self._lock:
                if self._pending.pop(request, None) is None:
                    return  # handed to the thread Settler already
            try:
                _check_answer(operation, queue_url, response)
            except Exception:  # noqa: BLE001 - nothing may raise into the hub
                logger.exception("SQS: could not read the answer to %s on %s", operation,
                                 queue_url)

        try:
            compat.send_sqs_request(self._connection(client), operation, queue_url,
                                    protocol_params, answered)
        except Exception as exc:  # noqa: BLE001 - the thread Settler tries with boto3
            logger.warning("SQS: could not send %s from the event loop (%r); sending it "
                           "from a thread", operation, exc)
            with self._lock:
                fallback = self._pending.pop(request, None)
            if fallback:
                self._fallback.submit(*fallback)

    def _connection(self, client) -> AsyncSQSConnection:
        if self._http is None:
            self._http = HttpClient(self.hub, max_clients=SETTLE_CONNECTIONS)
            self._connections.clear()
        connection = self._connections.get(id(client))
        if connection is None:
            connection = self._connections[id(client)] = AsyncSQSConnection(
                client, http_client=self._http)
        return connection

    def hand_over(self) -> int:
        """Give every settlement not yet answered to the thread Settler; how many."""
        with self._lock:
            pending, self._pending = self._pending, {}
        # The hub closes its curl clients with it; the next settlement makes a new one.
        self._http = None
        self._connections.clear()
        for fallback in pending.values():
            self._fallback.submit(*fallback)
        return len(pending)


def _check_answer(operation: str, queue_url: str, response):
    """Log a settlement SQS did not make (an answer of the asynchronous connection)."""
    if response.status != 200:
        body = response.read() if response.status != 599 else None
        logger.warning("SQS: %s on %s failed (HTTP %s %s, %.200r); %s", operation, queue_url,
                       response.status, response.reason, body,
                       "the messages are received again and counted as duplicates"
                       if operation == "DeleteMessageBatch" else
                       "the message comes back after its visibility timeout")
        return
    if operation == "DeleteMessageBatch":
        body = response.read() or b""
        if b'"Failed"' in body:
            failed = json.loads(body).get("Failed") or []
        else:
            failed = [{"Id": "?", "Message": body[:200]}] if b"BatchResultError" in body else []
        for failure in failed:
            logger.warning("SQS did not delete message %s: %s", failure.get("Id"),
                           failure.get("Message"))


_settler: Settler | None = None
_loop_settler: LoopSettler | None = None
_settler_lock = threading.Lock()


def settler(channel=None):
    """Who settles for the channel now: its loop's LoopSettler, or this process's Settler."""
    global _settler, _loop_settler
    loop = _loop_settler
    if loop is not None and channel is not None and loop.usable(channel):
        return loop
    with _settler_lock:
        if _settler is None:
            _settler = Settler()
        if (_loop_settler is None and channel is not None
                and getattr(channel, "hub", None) is not None):
            _loop_settler = LoopSettler(channel.hub, _settler)
            if _loop_settler.usable(channel):
                return _loop_settler
        return _settler


def settle_off_the_loop():
    """The consumer stops: settlements from now on go to threads (the loop turns no more)."""
    if _loop_settler is not None:
        _loop_settler.on_loop = False


def wait_for_settlements(timeout: float = 10.0):
    """Before the worker exits: let the deletes and visibility changes under way finish."""
    if _loop_settler is not None:
        _loop_settler.hand_over()
    if _settler is not None:
        left = _settler.wait(timeout)
        if left:
            logger.warning("SQS: %d settlement(s) still pending at shutdown; their messages "
                           "come back after their visibility timeout", left)
