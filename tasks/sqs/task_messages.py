"""The task messages an orders queue runs: orders.process and orders.process_batch, checked.

The orders queues carry raw orders and, by design, orders.process messages from Celery
producers; Celery's own retries of orders.process_batch come back on them too. Any SQS
sender can write a body shaped like a kombu envelope, and kombu and Celery trust such a
body: a body that did not decode stopped the worker, a header of the wrong type stopped
or wedged it, and any registered task (Celery's own included) ran. So a task message is
run only when every part a worker reads has the shape Celery itself writes, and it is
rebuilt from those parts alone (the producer's time limits, expiry, callbacks, groups
and stamps are not honoured). Anything else is handed on as a raw body with the reason,
and the pipeline stores it as a rejection like any body that is not an order.
"""
from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone

from tasks.names import FILES_TASKS, ORDER_TASKS, PROCESS_ORDER

# delivery_info key under which the receive side leaves why it did not run a task-shaped
# body as a task; the pipeline adds it to the body's rejection.
REFUSED_KEY = "orders_refused_task"
MAX_ID_LENGTH = 200
MAX_REPR_LENGTH = 1024
MAX_BATCH_ENTRIES = 10
# Keyword arguments of orders.process in positional order, after the order itself.
ORDER_TASK_OPTIONS = ("message_id", "sent_at_ms", "refused_task")
BATCH_ENTRY_KEYS = {"body", "message_id", "sent_at_ms"}
NO_CANVAS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Refused(ValueError):
    """A body shaped like a task message that the orders queues do not run; says why."""


def is_message_id(value) -> bool:
    """Whether a value can serve as a message or task id: short printable text."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def looks_like_task_message(payload: dict) -> bool:
    """Whether a decoded body has the parts of a kombu envelope: body, headers or properties."""
    return "body" in payload and ("headers" in payload or "properties" in payload)


def accepted_task_message(payload: dict, max_eta_seconds: float,
                          now: datetime | None = None) -> dict:
    """The kombu payload to run for an orders task message; raises Refused with the reason."""
    headers, task, args, kwargs, embed = _envelope(payload, ORDER_TASKS)
    if any(embed.get(key) for key in embed):
        raise Refused("callbacks, errbacks, chains and chords are not run.")
    args, kwargs = (_order_arguments if task == PROCESS_ORDER else _batch_arguments)(args, kwargs)
    clean = _headers(headers, task, max_eta_seconds, now or datetime.now(timezone.utc))
    body = json.dumps([args, kwargs, NO_CANVAS]).encode()
    return {"body": base64.b64encode(body).decode(), "content-type": "application/json",
            "content-encoding": "utf-8", "headers": clean,
            "properties": {"body_encoding": "base64", "delivery_info": {},
                           "correlation_id": clean["id"]}}


def accepted_files_task_message(payload: dict, max_eta_seconds: float,
                                now: datetime | None = None) -> dict:
    """The kombu payload of a files canvas step (tasks/file_tasks.py), run as sent; or Refused.

    The files queue carries S3 events and the steps of the files canvas, whose chord,
    group and callbacks must reach the worker as Celery wrote them: nothing is rebuilt,
    but every part the worker reads must have the type Celery gives it.
    """
    headers, _, _, _, embed = _envelope(payload, FILES_TASKS)
    for key in ("callbacks", "errbacks", "chain"):
        if not isinstance(embed.get(key), (list, type(None))):
            raise Refused(f"{key} is {_show(embed.get(key))}, not a list.")
    if not isinstance(embed.get("chord"), (dict, type(None))):
        raise Refused(f"chord is {_show(embed.get('chord'))}, not an object.")
    if not is_message_id(headers.get("id")):
        raise Refused(f"id {_show(headers.get('id'))} is not a task id.")
    for key in ("root_id", "parent_id", "group"):
        if headers.get(key) is not None and not is_message_id(headers.get(key)):
            raise Refused(f"{key} {_show(headers.get(key))} is not an id.")
    retries, index = headers.get("retries", 0), headers.get("group_index")
    if type(retries) is not int or not 0 <= retries <= 1_000_000:
        raise Refused(f"retries {_show(retries)} is not a count.")
    if index is not None and type(index) is not int:
        raise Refused(f"group_index {_show(index)} is not a number.")
    limits = headers.get("timelimit")
    if limits is not None and not (isinstance(limits, list) and len(limits) == 2 and all(
            limit is None or type(limit) in (int, float) for limit in limits)):
        raise Refused(f"timelimit {_show(limits)} is not [hard, soft].")
    if headers.get("expires") is not None:
        raise Refused("files steps do not expire: expires is not honoured.")
    _eta(headers.get("eta"), max_eta_seconds, now or datetime.now(timezone.utc))
    return payload


def _envelope(payload: dict, tasks: tuple[str, ...]) -> tuple[dict, str, list, dict, dict]:
    """Headers, task name, args, kwargs and embed of a JSON task message of one of tasks."""
    headers = _expect(payload.get("headers"), dict, "headers")
    task = headers.get("task")
    if not isinstance(task, str) or task not in tasks:
        raise Refused(f"task {_show(task)} is not one of {', '.join(tasks)}.")
    for key, wanted in (("content-type", "application/json"), ("content-encoding", "utf-8")):
        if payload.get(key) != wanted:
            raise Refused(f"{key} {_show(payload.get(key))} is not {wanted}.")
    properties = _expect(payload.get("properties"), dict, "properties")
    args, kwargs, embed = _decoded_body(payload.get("body"), properties.get("body_encoding"))
    return headers, task, args, kwargs, embed


def _decoded_body(body, encoding) -> tuple[list, dict, dict]:
    if not isinstance(body, str):
        raise Refused(f"body is {_show(body)}, not text.")
    if encoding == "base64":
        try:
            body = base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise Refused("body is not base64 of UTF-8 text.") from None
    elif encoding is not None:
        raise Refused(f"body_encoding {_show(encoding)} is not base64.")
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused("body is not JSON.") from None
    if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[0], list)
            and isinstance(decoded[1], dict) and isinstance(decoded[2], (dict, type(None)))):
        raise Refused("body is not [args, kwargs, embed].")
    return decoded[0], decoded[1], decoded[2] or {}


def _order_arguments(args: list, kwargs: dict) -> tuple[list, dict]:
    """orders.process(order, message_id=None, sent_at_ms=None, refused_task=None), checked."""
    if not 1 <= len(args) <= 1 + len(ORDER_TASK_OPTIONS):
        raise Refused("orders.process takes the order and at most three options.")
    options = dict(zip(ORDER_TASK_OPTIONS, args[1:]))
    unknown = set(kwargs) - set(ORDER_TASK_OPTIONS)
    if unknown or set(kwargs) & set(options):
        raise Refused(f"orders.process has no arguments {_show(sorted(unknown or kwargs))}.")
    options.update(kwargs)
    _check_entry_options(options)
    return [args[0]], {key: value for key, value in options.items() if value is not None}


def _batch_arguments(args: list, kwargs: dict) -> tuple[list, dict]:
    """orders.process_batch(entries) with entries as tasks.collector.raw_entry makes them."""
    if kwargs or len(args) != 1 or not isinstance(args[0], list) \
            or not 1 <= len(args[0]) <= MAX_BATCH_ENTRIES:
        raise Refused(f"orders.process_batch takes one list of 1 to {MAX_BATCH_ENTRIES} entries.")
    for entry in args[0]:
        if not isinstance(entry, dict) or not BATCH_ENTRY_KEYS <= set(entry) \
                <= BATCH_ENTRY_KEYS | {"refused_task"} or not isinstance(entry["body"], str):
            raise Refused("an orders.process_batch entry is not {body, message_id, sent_at_ms}.")
        if not is_message_id(entry["message_id"]):
            raise Refused(f"message_id {_show(entry['message_id'])} is not an id.")
        _check_entry_options(entry)
    return args, {}


def _check_entry_options(options: dict):
    message_id, sent_at_ms = options.get("message_id"), options.get("sent_at_ms")
    if message_id is not None and not is_message_id(message_id):
        raise Refused(f"message_id {_show(message_id)} is not an id.")
    if sent_at_ms is not None and (type(sent_at_ms) is not int or not 0 <= sent_at_ms < 2 ** 53):
        raise Refused(f"sent_at_ms {_show(sent_at_ms)} is not a time in ms.")
    refused = options.get("refused_task")
    if refused is not None and not (isinstance(refused, str) and len(refused) <= MAX_REPR_LENGTH):
        raise Refused("refused_task is not a short text.")


def _headers(headers: dict, task: str, max_eta_seconds: float, now: datetime) -> dict:
    """The task headers Celery's worker reads, from the message's own where they check out."""
    task_id = headers.get("id")
    if not is_message_id(task_id):
        raise Refused(f"id {_show(task_id)} is not a task id.")
    retries = headers.get("retries", 0)
    if type(retries) is not int or not 0 <= retries <= 1_000_000:
        raise Refused(f"retries {_show(retries)} is not a count.")
    if headers.get("expires") is not None:
        raise Refused("orders do not expire: expires is not honoured.")
    return {
        "lang": "py", "task": task, "id": task_id, "shadow": None,
        "eta": _eta(headers.get("eta"), max_eta_seconds, now), "expires": None,
        "group": None, "group_index": None, "retries": retries,
        # The worker's own time limits apply (a producer's 1 ms limit killed every try).
        "timelimit": [None, None],
        "root_id": headers.get("root_id") if is_message_id(headers.get("root_id")) else None,
        "parent_id": (headers.get("parent_id") if is_message_id(headers.get("parent_id"))
                      else None),
        "argsrepr": _text(headers.get("argsrepr")), "kwargsrepr": _text(headers.get("kwargsrepr")),
        "origin": headers.get("origin") if is_message_id(headers.get("origin")) else None,
        "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }


def _eta(value, max_eta_seconds: float, now: datetime) -> str | None:
    """A retry's ETA in UTC; one further ahead than the visibility timeout would loop on SQS."""
    if value is None:
        return None
    try:
        eta = datetime.fromisoformat(value) if isinstance(value, str) else None
        if eta is not None:
            eta = (eta if eta.tzinfo else eta.replace(tzinfo=timezone.utc)).astimezone(
                timezone.utc)
    except (ValueError, OverflowError):
        eta = None
    if eta is None:
        raise Refused(f"eta {_show(value)} is not an ISO-8601 date-time.")
    if (eta - now).total_seconds() > max_eta_seconds:
        raise Refused(f"eta {_show(value)} is more than the visibility timeout "
                      f"({max_eta_seconds:.0f} s) ahead.")
    return eta.isoformat()


def _text(value) -> str:
    # Shown by Flower and in logs: printable and short, or nothing.
    return value[:MAX_REPR_LENGTH] if isinstance(value, str) and value.isprintable() else ""


def _expect(value, kind: type, name: str):
    if not isinstance(value, kind):
        raise Refused(f"{name} is {_show(value)}, not an object.")
    return value


def _show(value) -> str:
    # repr() escapes control characters and lone surrogates: safe in a reason and a log.
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
