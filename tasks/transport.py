"""kombu's SQS transport with the fixes the worker needs, used for every sqs:// URL.

1. A requeue (task_reject_on_worker_lost after a pool process died, or a hard time limit)
   makes the message visible again after wait_time_seconds, and on the way kombu 5.7
   drops 'sqs_message' from its delivery_info; QoS.reject then applies the backoff policy,
   which reads that key: KeyError, 'Unrecoverable error', the worker stops. A requeued
   message is not a failure: no backoff for it.

2. kombu parses every body as JSON to tell its own envelopes from raw bodies, and only a
   JSONDecodeError or TypeError counts as "raw": an array nested 1,000 deep raised
   RecursionError, and an order with a top-level "properties" field that is not an
   object raised AttributeError, both in the consumer, and either stopped the worker
   (then the next one, at every redelivery). Such bodies are raw bodies, for the task to
   reject or count like any other. A body shaped like a kombu envelope is run as a task
   only when tasks/task_messages.py accepts it (orders.process and orders.process_batch,
   every part checked, the envelope rebuilt): a body that did not decode (binascii.Error
   in kombu's decode_body), an unhashable or unknown task name, an unknown body_encoding
   or content type stopped, wedged or silenced the worker, and any registered task ran.
   Refused envelopes are raw bodies too, with the reason for the rejection.

3. When ReceiveMessage times out, gets a 5xx or cannot connect at all (curl's 599), kombu's
   async client hands the channel [] "to prevent hanging", but the channel expects a
   dict: AttributeError in a timer, the promise chain that schedules the next poll is
   broken, and the worker, alive and silent, never receives again. A failed receive is
   counted as one and polled again after a short backoff (0.5 s doubling up to 5 s).

The kombu internals these fixes override are listed, with their upstream issues, in
tasks/compat.py.
"""
from __future__ import annotations

import logging

from kombu.transport import SQS, virtual

from tasks import compat
from tasks.pipelining import ReceivePipeline, WindowQoS
from tasks.task_messages import (REFUSED_KEY, Refused, accepted_files_task_message,
                                 accepted_task_message, looks_like_task_message)

logger = logging.getLogger(__name__)

# Seconds before polling again after a failed ReceiveMessage: first and most.
RECEIVE_RETRY_FIRST = 0.5
RECEIVE_RETRY_MAX = 5.0


class QoS(WindowQoS, SQS.QoS):
    """SQS QoS whose requeue does not run the failure backoff policy (window: pipelining.py)."""

    def reject(self, delivery_tag, requeue=False):
        if requeue:
            virtual.QoS.reject(self, delivery_tag, requeue=True)
            return
        super().reject(delivery_tag, requeue=requeue)


class Channel(ReceivePipeline, SQS.Channel):
    """SQS channel that survives odd bodies and failed receives (pipelining: pipelining.py)."""

    QoS = QoS
    _failed_receives = 0

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

    def _loop1(self, queue, messages_fetched=None):
        if self._failed_receives:
            self.hub.call_later(self._receive_retry_delay(), self._schedule_queue, queue)
            return
        super()._loop1(queue, messages_fetched)

    def _prepare_json_payload(self, text):
        if '"body"' not in text:
            # Only a kombu envelope's parse is used (tasks/task_messages.py): an order is
            # parsed once, by its task, not a second time here.
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


class Transport(SQS.Transport):
    """kombu's SQS transport with the channel above."""

    Channel = Channel


def use_for_sqs_urls() -> None:
    """Make sqs:// URLs in this process use this Transport; redis:// URLs keep Redis.

    Not celeryconfig.broker_transport: Celery passes it with every URL, so the events
    connection and Flower's --broker on the control-plane Redis became SQS connections.
    """
    compat.alias_transport("sqs", f"{__name__}:Transport")
