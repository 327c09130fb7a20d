"""The worker's consumer: raw bodies run as tasks, events and remote control on Redis."""
from __future__ import annotations

from celery.worker.consumer import Consumer

from tasks import compat
from tasks.backpressure import StoreProbe, gate
from tasks.collector import (MAX_EVENTS, ORDERS_WINDOW_SECONDS, Collector, FileEvents,
                             OrdersBatch, adopt_raw_order)
from tasks.control import control_connection
from tasks.names import CONSUMPTION_EVENT, FILES_TASKS, ORDER_TASKS
from tasks.sqs.settle import settle_off_the_loop, wait_for_settlements

# Task events are published together at most this often: Celery publishes whatever one
# loop turn buffered, about one PUBLISH per event at speed, a fifth of the loop's CPU.
EVENTS_FLUSH_SECONDS = 0.1


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
        self.files_queue = settings.files_queue
        self.files_window = settings.files_batch_window
        # The task messages each queue runs (tasks/sqs/receive.py has checked their shape).
        self.tasks_by_queue = {name: ORDER_TASKS for name in settings.consumed_queue_urls}
        self.tasks_by_queue[settings.files_queue] = FILES_TASKS
        self._events_timer = None
        # Consumption pauses while the store refuses writes (tasks/backpressure.py).
        gate.use(self.timer, StoreProbe(settings.redis_url), self.announce_consumption)

    def announce_consumption(self, paused_by: str | None):
        """Tell the control plane whether consumption is paused, and why (the API's
        orders_worker_consumption_paused)."""
        if self.event_dispatcher is not None:
            self.event_dispatcher.send(CONSUMPTION_EVENT, paused=paused_by is not None,
                                       reason=paused_by)

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
        """Celery's handler of task messages, behind the routing of raw bodies."""
        handle_task_message = super().create_task_handler(*args, **kwargs)
        orders = Collector(self.timer, ORDERS_WINDOW_SECONDS, self.batch_size,
                           lambda messages: OrdersBatch(self.app, messages), handle_task_message)
        file_events = Collector(self.timer, self.files_window, MAX_EVENTS,
                                lambda messages: FileEvents(self.app, messages),
                                handle_task_message)

        def on_message(message):
            info = message.delivery_info or {}
            queue = self.orders_queue
            if "sqs_message" in info:
                # Celery's retry routing (and the backoff policy of settle.py) look a
                # message's queue up by its routing key: a raw body has none, and an
                # envelope's own could name a queue that is not defined, which stopped
                # the worker.
                queue = self.queue_by_url.get(info.get("sqs_queue"), queue)
                info.update(routing_key=queue, exchange="")
            # The receive side lets through only checked task messages of the queue's own
            # tasks; whatever else has headers is not one of them, and runs as a raw body.
            if (message.headers or {}).get("task") in self.tasks_by_queue.get(queue, ORDER_TASKS):
                return handle_task_message(message)
            message.headers = {}
            if "sqs_message" not in info:
                return handle_task_message(message)  # no task: Celery rejects it
            if queue == self.files_queue:
                return file_events.add(message)
            if self.batch_size <= 1:
                adopt_raw_order(self.app, message)
                return handle_task_message(message)
            return orders.add(message)

        return on_message
