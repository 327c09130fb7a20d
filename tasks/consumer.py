"""The worker's consumer, taught to run plain JSON order bodies as Celery tasks."""
from __future__ import annotations

from celery.worker.consumer import Consumer
from kombu.serialization import dumps

from app.deadletters import original_id
from tasks import compat
from tasks.batching import BatchMessage, raw_entry
from tasks.control import control_connection
from tasks.files_consumer import FilesBatcher
from tasks.names import FILES_TASKS, ORDER_TASKS, PROCESS_BATCH, PROCESS_ORDER
from tasks.pipelining import settle_off_the_loop, wait_for_settlements
from tasks.task_messages import is_message_id

# A ReceiveMessage hands its messages over one after the other in the same loop turn;
# this short wait only matters for a last, incomplete batch.
BATCH_WINDOW_SECONDS = 0.02
# Task events are published together at most this often: Celery publishes whatever one
# loop turn buffered, about one PUBLISH per event at speed, a fifth of the loop's CPU.
EVENTS_FLUSH_SECONDS = 0.1


def adopt_raw_order(app, message) -> bool:
    """Turn one raw SQS order message into an orders.process task message in place.

    Ordinary SQS producers send the order JSON as the whole body. kombu hands it over
    with no task headers; given headers and an encoded (args, kwargs) body it runs
    through Celery's own strategy: the same acks, retries, events and time limits.
    """
    if not (message.delivery_info or {}).get("sqs_message"):
        return False
    entry = raw_entry(message, _message_id(message))
    headers, properties, body, _ = app.amqp.as_task_v2(
        entry["message_id"], PROCESS_ORDER, args=(entry["body"],),
        kwargs={"message_id": entry["message_id"], "sent_at_ms": entry["sent_at_ms"],
                "refused_task": entry["refused_task"]},
    )
    message.content_type, message.content_encoding, message.body = dumps(body, serializer="json")
    message.headers = headers
    message.properties.update(properties)
    compat.forget_decoded_body(message)
    return True


def _message_id(message) -> str:
    # A redriven or requeued message keeps the id it first had: orders without an
    # order_id are counted under it. Any sender can set that attribute: only an id that
    # is short printable text is taken (a retried batch must pass the same check).
    sqs_message = message.delivery_info["sqs_message"]
    first = original_id(sqs_message)
    return first if is_message_id(first) else sqs_message["MessageId"]


class OrderConsumer(Consumer):
    """Celery's Consumer: raw order bodies run as tasks, events and control on Redis."""

    class Blueprint(Consumer.Blueprint):
        """Celery's consumer steps with remote control served from the control plane."""

        default_steps = compat.replace_consumer_step(Consumer.Blueprint.default_steps,
                                                     compat.CELERY_CONTROL_STEP,
                                                     "tasks.control:RedisControl")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        compat.warn_if_broken()
        settings = self.app.settings
        self.batch_size = settings.consume_batch_size
        self.orders_queue = settings.orders_queue
        self.queue_by_url = {url: name for name, url in settings.consumed_queue_urls.items()}
        self.queue_by_url[settings.files_url] = settings.files_queue
        # The task messages each queue runs (tasks/transport.py has checked their shape).
        self.tasks_by_queue = {name: ORDER_TASKS for name in settings.consumed_queue_urls}
        self.tasks_by_queue[settings.files_queue] = FILES_TASKS
        self._raw_batch = []
        self._flush_timer = None
        self.files_batcher = FilesBatcher(self, settings)
        self._events_timer = None

    def stop(self):
        """The loop has stopped: what the pool still finishes is settled from threads."""
        settle_off_the_loop()
        super().stop()

    def on_close(self):
        """Celery's, but the jobs pool processes already took stay (tasks/compat.py pool-flush).

        Celery's flush forgets every job whose start it has not read, though one written
        to a process runs there: its batch was then never acked, and a process whose
        result nobody reads holds the warm shutdown for 30 s.
        """
        with compat.jobs_in_pool_processes_kept(self.pool):
            super().on_close()

    def shutdown(self):
        """Stop consuming, then let the deletes and visibility changes under way finish."""
        compat.flush_task_events(self)  # the events still buffered
        super().shutdown()
        wait_for_settlements()

    def on_send_event_buffered(self):
        """Publish the buffered task events soon, together (Celery: at the next loop turn)."""
        if self.hub and self._events_timer is None:
            self._events_timer = self.hub.call_later(EVENTS_FLUSH_SECONDS,
                                                     self._flush_buffered_events)

    def _flush_buffered_events(self):
        self._events_timer = None
        compat.flush_task_events(self)

    def connection_for_write(self, url=None, heartbeat=None):
        """Events go to the control-plane Redis: SQS would drop them (no fanout)."""
        return self.ensure_connected(
            control_connection(url or self.app.settings.control_plane_url, heartbeat=heartbeat))

    def create_task_handler(self, *args, **kwargs):
        handle_task_message = super().create_task_handler(*args, **kwargs)
        self._handle_task_message = handle_task_message

        def on_message(message):
            if self.files_batcher.takes(message):  # S3 file events: tasks/files_consumer.py
                return self.files_batcher.add(message, handle_task_message)
            queue = self.orders_queue
            if "sqs_message" in (message.delivery_info or {}):
                # kombu's SQS backoff policy (and Celery's retry routing) look a message's
                # queue up by its routing key: a raw body has none, and an envelope's own
                # could name a queue that is not defined, which stopped the worker.
                queue = self.queue_by_url.get(message.delivery_info.get("sqs_queue"), queue)
                message.delivery_info.update(routing_key=queue, exchange="")
            # The transport lets through only checked task messages of the queue's own
            # tasks; whatever else has headers is not one of them, and runs as a raw body.
            if (message.headers or {}).get("task") in self.tasks_by_queue.get(queue, ORDER_TASKS):
                return handle_task_message(message)
            message.headers = {}
            if self.batch_size <= 1 or not (message.delivery_info or {}).get("sqs_message"):
                adopt_raw_order(self.app, message)
                return handle_task_message(message)
            return self._add_to_batch(message)

        return on_message

    def _add_to_batch(self, message):
        # kombu's SQS backoff policy finds the task name in the headers of a message it
        # rejects; raw messages have none.
        message.headers = {"task": PROCESS_BATCH}
        if self._raw_batch and (self._raw_batch[0].delivery_info["sqs_queue"]
                                != message.delivery_info["sqs_queue"]):
            self._flush_batch()  # one DeleteMessageBatch deletes from one queue
        self._raw_batch.append(message)
        if len(self._raw_batch) >= self.batch_size:
            self._flush_batch()
        elif self._flush_timer is None:
            self._flush_timer = self.timer.call_after(BATCH_WINDOW_SECONDS, self._flush_batch)

    def _flush_batch(self):
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        messages, self._raw_batch = self._raw_batch, []
        if messages:
            entries = [raw_entry(m, _message_id(m)) for m in messages]
            self._handle_task_message(BatchMessage(self.app, messages, entries))
