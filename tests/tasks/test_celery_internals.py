"""Each Celery/kombu internal listed in tasks/compat.py, exercised by what it does.

An upgrade that moves one must fail here, with the dependence's name, rather than as
messages silently not consumed. None of these needs a server: SQS channels point at a
closed port and are never asked to send.
"""
import json
import logging
import math
import time
from contextlib import contextmanager

import celery
import kombu
import kombu.transport.redis
import pytest
from celery.concurrency.prefork import TaskPool
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu import Connection
from kombu.asynchronous import Hub, set_event_loop

from app.settings import Settings
from tasks import compat
from tasks.celery import create_celery
from tasks.collector import adopt_raw_order
from tasks.consumer import OrderConsumer
from tasks.names import PROCESS_ORDER
from tasks.sqs.receive import MAX_RECEIVES_PER_QUEUE, RECEIVE_HEADROOM, ReceiveMeter
from tasks.sqs.receive import Transport as OrdersSqsTransport
from tasks.sqs.settle import LoopSettler, backoff_policy, receive_count
from tasks.sqs.task_messages import REFUSED_KEY

celery_app = create_celery(Settings())
NOWHERE = "sqs://test:test@127.0.0.1:1"  # a closed port: any request would fail loudly


def broke(dependence: str) -> str:
    return f"compat dependence {dependence!r} broke (tasks/compat.py)"


@contextmanager
def sqs_channel():
    """A channel of the project's SQS transport that makes no request unless asked to."""
    connection = celery_app.connection_for_write(NOWHERE)
    channel = connection.channel()
    try:
        yield channel
    finally:
        channel._active_queues.clear()
        channel.close()
        connection.release()


def sqs_message(body: str, receive_count: int = 1) -> dict:
    return {"MessageId": "m-1", "ReceiptHandle": "rh-1", "Body": body,
            "Attributes": {"ApproximateReceiveCount": str(receive_count)}}


def test_versions_are_the_pinned_ones():
    assert celery.__version__.startswith("5.7."), celery.__version__
    assert kombu.__version__.startswith("5.7."), kombu.__version__


def test_every_hook_the_project_relies_on_is_there():
    assert compat.missing_internals() == []


def test_transport_alias_sqs_urls_get_the_fixed_transport_and_redis_urls_stay_redis():
    """Flower (--broker CONTROL_URL) and the worker's events read the transport from the URL."""
    assert not celery_app.conf.broker_transport
    sqs_connection = celery_app.connection_for_write(NOWHERE)
    assert sqs_connection.get_transport_cls() is OrdersSqsTransport, broke("transport-alias")
    redis_connection = celery_app.connection_for_read("redis://127.0.0.1:1/1")
    assert redis_connection.get_transport_cls() is kombu.transport.redis.Transport


def test_consumer_steps_remote_control_is_served_from_the_control_plane():
    steps = OrderConsumer.Blueprint.default_steps
    assert "tasks.control:RedisControl" in steps, broke("consumer-steps")
    assert compat.CELERY_CONTROL_STEP not in steps
    assert len(steps) == len(Consumer.Blueprint.default_steps)
    with pytest.raises(compat.CompatError, match="consumer-steps"):
        compat.replace_consumer_step(["celery.worker.consumer.tasks:Tasks"],
                                     compat.CELERY_CONTROL_STEP, "tasks.control:RedisControl")


def test_producer_pool_control_messages_go_out_on_the_channel_given():
    mailbox = celery_app.control.mailbox
    with Connection("memory://") as connection:
        channel = connection.channel()
        with mailbox.producer_or_acquire(None, channel) as producer:
            assert producer.channel is channel, broke("producer-pool")


def test_decoded_cache_an_adopted_raw_body_decodes_as_its_task_message():
    with sqs_channel() as channel:
        body = json.dumps({"order_id": "O1"})
        payload = channel._message_to_python(sqs_message(body), "q", "http://q")
        message = channel.Message(payload, channel=channel)
        assert message.decode() == body  # decoded, hence cached, as the raw body
        assert adopt_raw_order(celery_app, message)
        decoded = message.decode()  # the task message's (args, kwargs, embed), not the cache
        assert isinstance(decoded, list) and decoded[0] == [body], broke("decoded-cache")
        assert decoded[1]["message_id"] == "m-1" and message.headers["task"] == PROCESS_ORDER


def test_message_state_a_message_settled_by_the_project_cannot_be_acked_again():
    with sqs_channel() as channel:
        payload = channel._message_to_python(sqs_message("{}"), "q", "http://q")
        message = channel.Message(payload, channel=channel)
        compat.mark_settled(message, "ACK")
        assert message.acknowledged, broke("message-state")
        with pytest.raises(message.MessageStateError, match="already"):
            message.ack()


def test_request_message_a_request_keeps_the_message_it_was_built_from():
    message = kombu.Message(body=json.dumps([["{}"], {}, {}]),
                            content_type="application/json", content_encoding="utf-8",
                            headers=celery_app.amqp.as_task_v2(
                                "id-1", PROCESS_ORDER, args=("{}",)).headers)
    celery_app.loader.import_default_modules()  # the worker registers the tasks so
    request = Request(message, app=celery_app, task=celery_app.tasks[PROCESS_ORDER])
    assert compat.request_message(request) is message, broke("request-message")


def test_release_delivery_frees_the_slot_without_an_sqs_request():
    with sqs_channel() as channel:
        channel.qos.append({"delivery_info": {}}, "tag-1")
        assert compat.unsettled(channel.qos) == 1, broke("qos-settled")
        compat.release_delivery(channel, "tag-1")  # the closed port would raise if asked
        assert compat.unsettled(channel.qos) == 0, broke("release-delivery")


def test_qos_settled_settling_a_delivery_wakes_a_receive_parked_on_a_full_window():
    """A receive chain parks on a full window; every ack passes through _quick_ack."""
    queue = celery_app.conf.task_default_queue
    with sqs_channel() as channel:
        channel.hub = Hub()
        qos = channel.qos
        qos.prefetch_count = 20
        compat.active_queues(channel).append(queue)
        channel._chains[queue] = 1  # the window holds ten more per live receive chain
        window = qos.prefetch_count + channel.receive_allowance()
        tags = [f"tag-{i}" for i in range(window)]
        for tag in tags:
            qos.append({"delivery_info": {}}, tag)
        channel._schedule_queue(queue)  # the window is full: this chain parks
        assert channel._parked == [queue] and not channel.hub._ready, broke("sqs-receive-chain")
        for tag in tags[:10]:  # room for a whole receive again
            qos.ack(tag)
        woken = [p for p in channel.hub._ready
                 if getattr(p, "fun", None) == channel._schedule_queue]
        assert [p.args for p in woken] == [(queue,)] and channel._parked == [], broke(
            "qos-settled")
        for tag in tags[10:]:
            qos.ack(tag)


def test_sqs_failed_receive_an_empty_answer_is_counted_and_polled_again():
    with sqs_channel() as channel:
        assert channel._on_messages_ready("q", "q", []) == 0, broke("sqs-failed-receive")
        assert channel._failed_receives == 1, broke("sqs-failed-receive")


@pytest.mark.parametrize("body", [
    "[" * 1000 + "]" * 1000,  # RecursionError in kombu's JSON parse
    json.dumps({"order_id": "O1", "properties": "not an object"}),
    json.dumps({"body": "abc", "headers": {"task": PROCESS_ORDER},
                "properties": {"body_encoding": "base64"}}),  # binascii.Error in decode_body
])
def test_sqs_envelope_bodies_that_stopped_the_consumer_become_raw_messages(body):
    with sqs_channel() as channel:
        payload = channel._message_to_python(sqs_message(body), "q", "http://q")
        message = channel.Message(payload, channel=channel)  # kombu decodes the body here
        assert message.body == body.encode(), broke("sqs-envelope")
        assert message.delivery_info["sqs_message"]["MessageId"] == "m-1"


def test_sqs_envelope_a_refused_task_message_carries_its_reason():
    body = json.dumps({"body": "abc", "headers": {"task": PROCESS_ORDER},
                       "properties": {"body_encoding": "base64"}})
    with sqs_channel() as channel:
        payload = channel._message_to_python(sqs_message(body), "q", "http://q")
        assert payload["properties"]["delivery_info"][REFUSED_KEY], broke("sqs-envelope")


def test_backoff_reads_the_task_header_and_the_receive_count():
    """settle.py's backoff, from the message kombu built: its task header and receive count."""
    queue = celery_app.conf.task_default_queue
    with sqs_channel() as channel:
        payload = channel._message_to_python(sqs_message("{}", receive_count=3), "q", "http://q")
        message = channel.Message(payload, channel=channel)
        message.headers = {"task": PROCESS_ORDER}  # what a group gives its raw messages
        message.delivery_info["routing_key"] = queue  # what the consumer gives SQS messages
        assert receive_count(message) == 3
        assert backoff_policy(channel, message) == celery_app.settings.failure_backoff_policy
        message.headers = {"task": "celery.chord_unlock"}  # a task outside the policy
        assert backoff_policy(channel, message) is None


def test_receives_in_flight_follow_the_measured_rate_and_round_trip():
    meter = ReceiveMeter()
    for rate, round_trip in ((100, 0.001), (800, 0.030), (5000, 0.100)):
        meter.rate.value, meter.round_trip.value = rate, round_trip
        # Little's law: receives on the way = rate x round trip / ten per receive.
        on_the_way = rate * round_trip / 10
        assert meter.receives_needed() == min(MAX_RECEIVES_PER_QUEUE,
                                              math.ceil(on_the_way * RECEIVE_HEADROOM) + 1)
    meter.rate.value, meter.round_trip.value = 800, 0.030
    assert meter.receives_needed() > 1  # a far SQS needs several in flight


def test_task_messages_are_built_by_as_task_v2():
    message = celery_app.amqp.as_task_v2("id-1", PROCESS_ORDER, args=("{}",),
                                         kwargs={"message_id": "id-1"})
    assert message.headers["task"] == PROCESS_ORDER and message.headers["id"] == "id-1"
    assert message.body == (("{}",), {"message_id": "id-1"},
                            {"callbacks": None, "errbacks": None, "chain": None, "chord": None})


class RecordingSettler:
    """Stands in for the thread Settler: records what it is handed instead of sending it."""

    def __init__(self):
        self.handed = []

    def submit(self, fn, *args):
        self.handed.append((fn.__name__, args[1:]))


def run_hub_until(hub: Hub, done, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        hub.run_once()
    return done()


def test_sqs_async_request_a_delete_sqs_cannot_take_is_logged_on_the_hub_not_raised(caplog):
    """A DeleteMessageBatch sent from the loop to a closed port: answered (599), logged."""
    hub, threads = Hub(), RecordingSettler()
    with sqs_channel() as channel:
        settler = LoopSettler(hub, threads)
        channel.hub = hub
        assert settler.usable(channel)
        with caplog.at_level(logging.WARNING, logger="tasks.sqs.settle"):
            settler.delete(channel.sqs(), "http://127.0.0.1:1/000000000000/q", ["rh-1", "rh-2"])
            assert run_hub_until(hub, lambda: not settler._pending), broke("sqs-async-request")
        assert "DeleteMessageBatch" in caplog.text and "HTTP 599" in caplog.text, broke(
            "sqs-async-request")
        assert threads.handed == []  # answered on the loop: nothing for the threads
    hub.close()


def test_hub_close_hands_the_unanswered_settlements_to_the_threads():
    """Hub.close() (shutdown) or reset() closes curl's requests: the threads send them."""
    hub, threads = Hub(), RecordingSettler()
    with sqs_channel() as channel:
        settler = LoopSettler(hub, threads)
        url = "http://127.0.0.1:1/000000000000/q"
        settler.delete(channel.sqs(), url, ["rh-1"])
        settler.change_visibility(channel.sqs(), url, "rh-2", 30)
        hub.close()  # before the hub ever turned: neither was answered
        assert threads.handed == [("_delete", (url, ["rh-1"])),
                                  ("_change_visibility", (url, "rh-2", 30))], broke("hub-close")
        assert not settler._pending


def test_pool_flush_keeps_a_job_a_process_took_and_its_result_is_read_at_stop():
    """A job written to a pool process, its ACK not read when the consumer stops (on_close).

    Celery's flush forgot such a job: its callback (the task's ack) never ran, and the
    process waited 30 s for the main process to read its result before it exited.
    """
    hub = Hub()
    set_event_loop(hub)
    pool = TaskPool(1, app=celery_app, initargs=(celery_app, "pool-flush-test"), threads=False)
    pool.start()
    try:
        pool.register_with_event_loop(hub)
        processes = pool._pool
        assert run_hub_until(hub, lambda: processes._all_inqueues), "the pool process is up"
        for fd in list(processes._fileno_to_outq):
            hub.remove_reader(fd)  # the loop has stopped: nothing reads the process's ACK
        results = []
        job = pool.apply_async(time.sleep, (0.1,), callback=results.append)
        assert run_hub_until(hub, lambda: job._write_to is not None
                             and not processes._active_writers), "the job is written"
        with compat.jobs_in_pool_processes_kept(pool) as kept:
            pool.flush()
        assert kept == [job] and job in processes._cache.values(), broke("pool-flush")
        started = time.monotonic()
        pool.stop()
        stopped = time.monotonic() - started
    finally:
        pool.terminate()
        hub.close()
        set_event_loop(None)
    assert results == [None], broke("pool-flush")  # the result was read: Celery acks it
    assert stopped < 10, (stopped, broke("pool-flush"))  # not billiard's 30 s wait
