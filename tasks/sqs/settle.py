"""The one way a received SQS message ends: settle(messages, outcome).

Every delivery the worker took ends here, whatever ended it: a task that ran (ack), a
batch whose orders partly failed, a failed task (reject), a pool process lost or a
shutdown (requeue, or a channel closed with the message unsettled), a retry (the retried
message is acked once Celery has published its successor), the events a files execution
holds. The outcome says what SQS is told:

- DONE: deleted, up to ten per DeleteMessageBatch.
- FAILED: hidden for its queue's backoff policy (transport option backoff_policy, by
  receive count), so SQS delivers it again and, after maxReceiveCount receives,
  dead-letters it. A task outside the policy's backoff_tasks is left to the queue's
  RedrivePolicy, or deleted on a queue without one (as kombu does: it would loop).
- RETURNED: visible again after wait_time_seconds (kombu's requeue); no backoff.
- HELD: nothing sent: a files execution keeps the events and settles them itself.

Then kombu's books: the prefetch slot is released at once and the message counts as
settled. The requests are sent from the event loop and not waited for (LoopSettler,
through kombu's asynchronous SQS connection: botocore's signer, a curl client of its
own; no boto3 client call, no thread contending with the loop for the GIL). Off the loop
(the pool draining at shutdown, the celery CLI) Settler runs them on a few threads with
boto3, and takes over whatever the loop had not settled when its hub closes. A request
that fails is logged and harmless: a message not deleted is received again after its
visibility timeout and counted as a duplicate, one whose visibility was not changed
comes back after the visibility timeout instead of its backoff.

The kombu internals this relies on are listed, with why, in tasks/compat.py.
"""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import count

from kombu.asynchronous.aws.sqs.connection import AsyncSQSConnection
from kombu.asynchronous.http import Client as HttpClient

from tasks import compat

logger = logging.getLogger(__name__)

# What SQS is told about a message (see the module's docstring).
DONE, FAILED, RETURNED, HELD = "done", "failed", "returned", "held"
# The state kombu's Message is left in: a second ack or reject of it then raises.
_MESSAGE_STATES = {DONE: "ACK", FAILED: "REJECTED", RETURNED: "REQUEUED", HELD: "ACK"}
# DeleteMessageBatch takes at most ten messages.
DELETE_BATCH_MAX = 10
# Threads that settle messages off the loop; each waits one round trip per request.
SETTLE_THREADS = 8
# Settlements in flight at once from the loop: a curl client of their own, so they never
# queue behind the receives (kombu's shared client serves ten, long polls included).
SETTLE_CONNECTIONS = 8


def settle(messages: list, outcome: str, release: bool = True) -> None:
    """End received messages of one channel as outcome says; release their prefetch slots.

    release=False for messages kombu has already dropped from its books (a channel that
    closes restores them one by one).
    """
    if not messages:
        return
    channel = messages[0].channel
    on_sqs = [m for m in messages if "sqs_message" in (m.delivery_info or {})]
    if outcome == DONE:
        _delete_messages(channel, on_sqs)
    elif outcome == FAILED:
        _fail(channel, on_sqs)
    elif outcome == RETURNED:
        for message in on_sqs:
            _show_after(channel, message, channel.wait_time_seconds)
    elif outcome != HELD:
        raise ValueError(f"no such outcome: {outcome!r}")
    for message in messages:
        if release:
            compat.release_delivery(channel, message.delivery_tag)
        compat.mark_settled(message, _MESSAGE_STATES[outcome])


def backoff_policy(channel, message) -> dict[int, int] | None:
    """The backoff policy of the message's queue, if the message's task is under it."""
    config = channel.predefined_queues.get(message.delivery_info.get("routing_key"), {})
    policy, tasks = config.get("backoff_policy"), config.get("backoff_tasks")
    if policy and tasks and (message.headers or {}).get("task") in tasks:
        return policy
    return None


def receive_count(message) -> int:
    """How many times SQS has delivered the message (ApproximateReceiveCount)."""
    attributes = message.delivery_info["sqs_message"].get("Attributes") or {}
    return int(attributes.get("ApproximateReceiveCount", 0))


def _client(channel, message):
    routing_key = message.delivery_info.get("routing_key")
    return channel.sqs(queue=channel.canonical_queue_name(routing_key) if routing_key else None)


def _receipt_handle(message) -> str:
    return message.delivery_info["sqs_message"]["ReceiptHandle"]


def _delete_messages(channel, messages: list):
    by_queue: dict[str, list] = {}
    for message in messages:
        by_queue.setdefault(message.delivery_info["sqs_queue"], []).append(message)
    for queue_url, queued in by_queue.items():
        client = _client(channel, queued[0])
        for start in range(0, len(queued), DELETE_BATCH_MAX):
            settler(channel).delete(client, queue_url, [
                _receipt_handle(m) for m in queued[start:start + DELETE_BATCH_MAX]])


def _fail(channel, messages: list):
    for message in messages:
        policy = backoff_policy(channel, message)
        if policy is not None:
            seconds = policy.get(receive_count(message))
            if seconds is not None:  # beyond the policy: back after the visibility timeout
                _show_after(channel, message, seconds)
            continue
        queue_url = message.delivery_info["sqs_queue"]
        routing_key = message.delivery_info.get("routing_key")
        queue = channel.canonical_queue_name(routing_key) if routing_key else None
        if not compat.queue_has_redrive_policy(channel, queue, queue_url):
            _delete_messages(channel, [message])


def _show_after(channel, message, seconds: int):
    settler(channel).change_visibility(_client(channel, message),
                                       message.delivery_info["sqs_queue"],
                                       _receipt_handle(message), seconds)


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
