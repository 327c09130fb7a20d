"""Every use of Celery's and kombu's private internals, in one place.

Last checked with celery 5.7.0 and kombu 5.7.0 (`make test-upgrade`). Each dependence has
a name; tests/tasks/test_celery_internals.py exercises each by its behaviour and names it
when an upgrade breaks it, and missing_internals() names the hooks that are gone (the
worker logs them at start).

transport-alias     kombu.transport.TRANSPORT_ALIASES["sqs"] names
                    tasks.sqs.receive:Transport. celeryconfig's broker_transport would
                    apply to every URL, so the events connection and Flower's --broker on
                    the control-plane Redis became SQS connections (tasks/sqs/receive.py
                    use_for_sqs_urls; the bench's stock Celery contender sets kombu's
                    back, bench/stock_celery.py).
consumer-steps      Consumer.Blueprint.default_steps lists
                    "celery.worker.consumer.control:Control", replaced by RedisControl:
                    SQS has no fanout, so remote control never starts on it
                    (celery/celery#3197, "SQS does not support remote control" in Celery's
                    broker docs).
events-flush        Consumer._flush_events and on_send_event_buffered: task events are
                    published in batches every 0.1 s instead of once per loop turn
                    (Celery 5.7 behaviour, no upstream issue; tasks/consumer.py).
producer-pool       Mailbox._producer_pool = None makes kombu publish control commands and
                    replies on the channel given (Redis), not the app's pool (SQS)
                    (tasks/control.py ControlPlane; Flower: mher/flower#687).
decoded-cache       Message._decoded_cache, reset after a raw SQS body is rewritten in place
                    as a task message (tasks/collector.py adopt_raw_order).
message-state       Message._state, set when messages are settled outside Message.ack
                    (tasks/sqs/settle.py settle, e.g. a batch in one DeleteMessageBatch):
                    kombu refuses a second ack by it.
request-message     Request._message, the message a Request was built from: a partial batch
                    failure marks which of its SQS messages failed (tasks/collector.py).
release-delivery    virtual.Channel.basic_ack: kombu's bookkeeping of an ack (the prefetch
                    slot) without SQS.Channel's DeleteMessage (kombu deletes one message
                    per request; batches are deleted in one request, not waited for).
qos-settled         virtual.QoS._quick_ack, _dirty, _delivered: every ack, reject and
                    requeue passes _quick_ack; deliveries not yet settled are _delivered
                    less _dirty (tasks/sqs/receive.py QoS).
sqs-receive-chain   SQS.Channel._schedule_queue, _loop1(queue, messages_fetched),
                    _get_from_sqs(queue_name, queue_url, connection, count, callback),
                    _active_queues: kombu keeps one ReceiveMessage in flight per queue
                    (no upstream issue; polling regressions celery/kombu#1783,
                    celery/kombu#2439); tasks/sqs/receive.py Channel runs several chains.
sqs-failed-receive  SQS.Channel._on_messages_ready(queue, qname, messages) is handed [] on a
                    timeout, 5xx or curl 599 and then broke the receive chain: the worker
                    never received again (kombu's "to prevent hanging"; stalls
                    celery/celery#5840, celery/kombu#1125). tasks/sqs/receive.py counts
                    and retries.
sqs-envelope        SQS.Channel._prepare_json_payload(text) and
                    _envelope_payload(payload, raw_text, message, q_url), called by
                    _message_to_python before kombu decodes the body: bodies that are not
                    kombu's stopped the consumer (celery/kombu#2421; tasks/sqs/receive.py).
sqs-requeue         virtual.Channel._restore(message), which QoS.restore_unacked calls for
                    each delivery still unsettled as the channel closes; kombu's SQS one
                    drops 'sqs_message' and its QoS.reject then read it for the backoff:
                    KeyError, the worker stopped (celery/kombu#1824). The channel's
                    _restore and its QoS's reject hand requeues to tasks/sqs/settle.py.
sqs-reject-delete   SQS.Channel._has_redrive_policy(queue, queue_url): kombu deletes a
                    rejected message whose task has no backoff policy unless its queue has
                    a RedrivePolicy (it would come back forever); tasks/sqs/settle.py
                    keeps that rule in its one settle path.
sqs-async-request   kombu.asynchronous.aws.sqs.connection.AsyncSQSConnection(client,
                    http_client=...).make_request(operation, params, queue_url, verb,
                    callback, protocol_params): a request signed by the boto3 client's
                    signer, sent by curl on the hub; callback gets an AsyncHTTPResponse
                    (.status, 599 when curl failed; .read()). Settlements go out from the
                    event loop without boto3's per-call machinery (tasks/sqs/settle.py).
hub-close           Hub.on_close: callbacks run by Hub.close() and Hub.reset(), which also
                    close the hub's curl clients, their requests never answered; the
                    settlements still unanswered go to threads then (tasks/sqs/settle.py).
pool-flush          celery.concurrency.asynpool.AsynPool.flush (Consumer.on_close, as the
                    consumer stops) discards every job of the pool's _cache whose ACK the
                    main process has not read (ApplyResult._accepted), though one already
                    written to a pool process (ApplyResult._write_to) runs there anyway
                    (no synack; the discard came with celery/celery#6863, the fix of the
                    cache leak celery/celery#6855, which takes an unaccepted job for one
                    not running yet). Its result is then never read: its batch is not
                    acked (a duplicate later; one cause of celery/celery#3802) and, when
                    it was the last job, billiard's Worker._ensure_messages_consumed keeps
                    the process for 30 s (300 x 0.1 s) waiting for the main process to
                    read it, and the warm shutdown with it. Such jobs count as accepted
                    during the flush (tasks/consumer.py OrderConsumer.on_close).
"""
from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager

from billiard.pool import ApplyResult
from celery.concurrency.asynpool import AsynPool
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.asynchronous.aws.sqs.connection import AsyncSQSConnection
from kombu.message import Message
from kombu.pidbox import Mailbox
from kombu.transport import SQS, TRANSPORT_ALIASES, virtual

logger = logging.getLogger(__name__)

CELERY_CONTROL_STEP = "celery.worker.consumer.control:Control"


class CompatError(RuntimeError):
    """A private internal this project relies on is not where it was: an upgrade broke it."""

    def __init__(self, dependence: str, detail: str):
        super().__init__(f"Celery/kombu internal {dependence!r} changed ({detail}); "
                         "see tasks/compat.py")
        self.dependence = dependence


def alias_transport(scheme: str, target: str) -> None:
    """transport-alias: URLs of `scheme` use `target` ("module:Class") in this process."""
    TRANSPORT_ALIASES[scheme] = target


def replace_consumer_step(steps, old: str, new: str) -> list:
    """consumer-steps: Celery's consumer steps with `old` replaced by `new`."""
    if old not in steps:
        raise CompatError("consumer-steps", f"{old} is not a default consumer step")
    return [new if step == old else step for step in steps]


def flush_task_events(consumer) -> None:
    """events-flush: publish the task events the consumer has buffered."""
    consumer._flush_events()


def publish_on_given_channel(mailbox: Mailbox) -> None:
    """producer-pool: the mailbox publishes on the channel it is given, not a pool."""
    mailbox._producer_pool = None


def forget_decoded_body(message: Message) -> None:
    """decoded-cache: the next message.decode() reads the rewritten body."""
    message._decoded_cache = None


def mark_settled(message: Message, state: str) -> None:
    """message-state: the message counts as acked or rejected ("ACK", "REJECTED")."""
    message._state = state


def request_message(request: Request) -> Message:
    """request-message: the message a Celery Request was built from."""
    return request._message


def release_delivery(channel, delivery_tag) -> None:
    """release-delivery: kombu's bookkeeping of an ack, with no SQS request."""
    virtual.Channel.basic_ack(channel, delivery_tag)


def unsettled(qos) -> int:
    """qos-settled: deliveries of the channel not yet acked, rejected or requeued."""
    return len(qos._delivered) - len(qos._dirty)


def on_settled(qos, callback) -> None:
    """qos-settled: call callback() after each ack, reject or requeue of a delivery."""
    mark = qos._quick_ack

    def settled(delivery_tag):
        mark(delivery_tag)
        callback()

    qos._quick_ack = settled


def send_sqs_request(connection, operation: str, queue_url: str, protocol_params: dict,
                     callback) -> None:
    """sqs-async-request: send one SQS request from the hub; callback(response) answers."""
    connection.make_request(operation, {}, queue_url, "POST", callback=callback,
                            protocol_params=protocol_params)


def on_hub_close(hub, callback) -> None:
    """hub-close: call callback(hub) when the hub closes or resets (its curl clients close)."""
    hub.on_close.add(callback)


def active_queues(channel) -> list:
    """sqs-receive-chain: the queues the channel consumes."""
    return channel._active_queues


def queue_has_redrive_policy(channel, queue: str | None, queue_url: str) -> bool:
    """sqs-reject-delete: whether the queue has a RedrivePolicy (kombu caches the answer)."""
    return channel._has_redrive_policy(queue, queue_url)


@contextmanager
def jobs_in_pool_processes_kept(task_pool):
    """pool-flush: within, the pool's flush keeps the jobs already written to a live process.

    Those run whatever the flush does: kept in the cache, their results are read as the
    pool stops (the task is acked), and the process exits without waiting 30 s for that.
    """
    cache = getattr(getattr(task_pool, "_pool", None), "_cache", None) or {}
    taken = [job for job in list(cache.values())
             if not job._accepted and job._write_to is not None and job._write_to._is_alive()]
    for job in taken:
        job._accepted = True
    try:
        yield taken
    finally:
        for job in taken:
            if job._time_accepted is None:  # its ACK, not read yet, accepts it for real
                job._accepted = False


# Hooks each dependence needs: (dependence, owner, attribute, parameters it must take).
_HOOKS = (
    ("consumer-steps", Consumer.Blueprint, "default_steps", None),
    ("events-flush", Consumer, "_flush_events", ()),
    ("events-flush", Consumer, "on_send_event_buffered", ()),
    ("release-delivery", virtual.Channel, "basic_ack", ("delivery_tag",)),
    ("qos-settled", virtual.QoS, "_flush", ()),
    ("sqs-receive-chain", SQS.Channel, "_schedule_queue", ("queue",)),
    ("sqs-receive-chain", SQS.Channel, "_loop1", ("queue", "messages_fetched")),
    ("sqs-receive-chain", SQS.Channel, "_get_from_sqs",
     ("queue_name", "queue_url", "connection", "count", "callback")),
    ("sqs-failed-receive", SQS.Channel, "_on_messages_ready", ("queue", "qname", "messages")),
    ("sqs-envelope", SQS.Channel, "_prepare_json_payload", ("text",)),
    ("sqs-envelope", SQS.Channel, "_envelope_payload",
     ("payload", "raw_text", "message", "q_url")),
    ("sqs-requeue", virtual.Channel, "_restore", ("message",)),
    ("sqs-requeue", virtual.QoS, "restore_unacked", ()),
    ("sqs-reject-delete", SQS.Channel, "_has_redrive_policy", ("queue", "queue_url")),
    ("sqs-async-request", AsyncSQSConnection, "make_request",
     ("operation_name", "params", "queue_url", "verb", "callback", "protocol_params")),
    ("pool-flush", AsynPool, "flush", ()),
    ("pool-flush", ApplyResult, "_ack", ("i", "time_accepted", "pid", "synqW_fd")),
)


def missing_internals() -> list[str]:
    """The dependences whose hooks are gone or take other parameters in the installed libraries."""
    broken = []
    for dependence, owner, name, parameters in _HOOKS:
        hook = getattr(owner, name, None)
        if hook is None:
            broken.append(f"{dependence}: {owner.__qualname__}.{name} is gone")
        elif parameters is not None:
            found = list(inspect.signature(hook).parameters)[1:]
            if found[:len(parameters)] != list(parameters):
                broken.append(f"{dependence}: {owner.__qualname__}.{name}{tuple(found)}")
    if CELERY_CONTROL_STEP not in Consumer.Blueprint.default_steps:
        broken.append(f"consumer-steps: {CELERY_CONTROL_STEP} is no default step")
    return broken


def warn_if_broken() -> None:
    """At worker start: log every dependence an upgrade broke (the worker runs on)."""
    for broken in missing_internals():
        logger.error("Celery/kombu internal changed, see tasks/compat.py: %s", broken)
