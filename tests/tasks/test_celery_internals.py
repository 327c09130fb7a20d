"""Loud failures if the Celery/kombu internals the SQS adaptations rely on change shape.

tasks/consumer.py and tasks/control.py subclass or call these; an upgrade that moves
them must fail here, by name, rather than as messages silently not consumed.
"""
import inspect

import celery
import kombu
import kombu.transport.redis
from celery.app.control import Control
from celery.worker.consumer import Consumer
from celery.worker.consumer.control import Control as ControlStep
from celery.worker.pidbox import Pidbox
from kombu.pidbox import Mailbox
from kombu.transport.SQS import QoS

from app.settings import Settings
from tasks.celery import create_celery
from tasks.consumer import OrderConsumer
from tasks.transport import Transport as OrdersSqsTransport

celery_app = create_celery(Settings())


def test_versions_are_the_pinned_ones():
    assert celery.__version__.startswith("5.7."), celery.__version__
    assert kombu.__version__.startswith("5.7."), kombu.__version__


def test_the_consumer_builds_its_task_handler_and_steps_as_expected():
    assert "promise" in inspect.signature(Consumer.create_task_handler).parameters
    assert "celery.worker.consumer.control:Control" in Consumer.Blueprint.default_steps
    assert "tasks.control:RedisControl" in OrderConsumer.Blueprint.default_steps
    assert "celery.worker.consumer.control:Control" not in OrderConsumer.Blueprint.default_steps
    assert "url" in inspect.signature(Consumer.connection_for_write).parameters


def test_sqs_urls_get_the_fixed_transport_and_redis_urls_stay_redis():
    """Flower (--broker CONTROL_URL) and the worker's events read the transport from the URL."""
    assert not celery_app.conf.broker_transport
    sqs_connection = celery_app.connection_for_write("sqs://test:test@127.0.0.1:1")
    assert sqs_connection.get_transport_cls() is OrdersSqsTransport
    redis_connection = celery_app.connection_for_read("redis://127.0.0.1:1/1")
    assert redis_connection.get_transport_cls() is kombu.transport.redis.Transport


def test_task_messages_are_built_by_as_task_v2():
    message = celery_app.amqp.as_task_v2("id-1", "orders.process", args=("{}",),
                                         kwargs={"message_id": "id-1"})
    assert message.headers["task"] == "orders.process" and message.headers["id"] == "id-1"
    assert message.body == (("{}",), {"message_id": "id-1"},
                            {"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def test_remote_control_internals_used_by_the_control_plane():
    assert "include_if" in vars(ControlStep)
    assert {"on_message", "start", "stop", "shutdown"} <= set(vars(Pidbox))
    assert "_producer_pool" in inspect.getsource(Mailbox.__init__)
    assert "connection" in inspect.signature(Control.broadcast).parameters
    assert type(celery_app.control).__name__ == "ControlPlane"
    assert celery_app.control.mailbox._producer_pool is None


def test_sqs_backoff_policy_reads_the_task_name_from_headers():
    # Our adopted raw messages get headers['task'] set, which this relies on.
    source = inspect.getsource(QoS.extract_task_name_and_number_of_retries)
    assert "message_headers['task']" in source and "ApproximateReceiveCount" in source


def test_batching_internals_used_to_settle_several_sqs_messages():
    from celery.worker.request import Request
    from kombu.message import Message
    from kombu.transport import virtual
    from kombu.transport.SQS import Channel

    assert "self._message = message" in inspect.getsource(Request.__init__)
    assert "self.qos.ack(delivery_tag)" in inspect.getsource(virtual.Channel.basic_ack)
    assert "_state" in inspect.getsource(Message.ack)
    assert {"canonical_queue_name", "sqs", "basic_reject"} <= set(dir(Channel))
    assert "delivery_info['routing_key']" in inspect.getsource(
        QoS._extract_backoff_policy_configuration_and_message)


def test_sqs_envelope_internals_the_task_message_check_relies_on():
    """tasks/transport.py decides in _envelope_payload what runs as a task message."""
    from kombu.transport import virtual
    from kombu.transport.SQS import Channel

    assert list(inspect.signature(Channel._envelope_payload).parameters) == [
        "self", "payload", "raw_text", "message", "q_url"]
    assert "self._envelope_payload(payload, text, message, q_url)" in inspect.getsource(
        Channel._message_to_python)
    # kombu wraps a payload without 'properties' as a raw body (what a refusal relies on).
    assert "'properties' not in payload" in inspect.getsource(Channel._envelope_payload)
    # The body is decoded when the message is built, after _envelope_payload: a body that
    # did not decode raised there, in the consumer.
    assert "decode_body" in inspect.getsource(virtual.Message.__init__)


def test_settling_a_delivery_wakes_a_receive_parked_on_a_full_window():
    """tasks/pipelining.py parks a receive chain on a full window; kombu's QoS settles
    every ack, reject and requeue through _quick_ack, where WindowQoS wakes it."""
    from kombu.asynchronous import Hub

    connection = celery_app.connection_for_write("sqs://test:test@127.0.0.1:1")
    channel = connection.channel()
    queue = celery_app.conf.task_default_queue
    try:
        channel.hub = Hub()
        qos = channel.qos
        qos.prefetch_count = 20
        channel._active_queues.append(queue)
        channel._chains[queue] = 1  # the window holds ten more per live receive chain
        window = qos.prefetch_count + channel.receive_allowance()
        tags = [f"tag-{i}" for i in range(window)]
        for tag in tags:
            qos.append({"delivery_info": {}}, tag)
        channel._schedule_queue(queue)  # the window is full: this chain parks
        assert channel._parked == [queue] and not channel.hub._ready
        for tag in tags[:10]:  # room for a whole receive again
            qos.ack(tag)
        woken = [p for p in channel.hub._ready
                 if getattr(p, "fun", None) == channel._schedule_queue]
        assert [p.args for p in woken] == [(queue,)] and channel._parked == []
        for tag in tags[10:]:
            qos.ack(tag)
    finally:
        channel._active_queues.clear()
        channel.close()
        connection.release()


def test_receives_in_flight_follow_the_measured_rate_and_round_trip():
    import math

    from tasks.pipelining import MAX_RECEIVES_PER_QUEUE, RECEIVE_HEADROOM, ReceiveMeter

    meter = ReceiveMeter()
    for rate, round_trip in ((100, 0.001), (800, 0.030), (5000, 0.100)):
        meter.rate.value, meter.round_trip.value = rate, round_trip
        # Little's law: receives on the way = rate x round trip / ten per receive.
        on_the_way = rate * round_trip / 10
        assert meter.receives_needed() == min(MAX_RECEIVES_PER_QUEUE,
                                              math.ceil(on_the_way * RECEIVE_HEADROOM) + 1)
    meter.rate.value, meter.round_trip.value = 800, 0.030
    assert meter.receives_needed() > 1  # a far SQS needs several in flight
