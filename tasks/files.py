"""The files tasks: thin adapters over app.files.execution, chained as one Celery canvas.

files.execute (one window of S3 events) starts an execution:
    chord(group(chain(files.stage per file of a table) per table), files.kpis) | files.finish
with files.failed as the error callback.
Every step is idempotent; the events stay on SQS until files.finish deletes them, and
files.failed makes them visible again, so SQS retries and then dead-letters them.
"""
from __future__ import annotations

import logging

from celery import chain, chord, group

from app import sqs
from app.files.execution import Files, new_execution_id, parse_event, staging_lanes
from app.settings import from_env
from tasks.celery import app
from tasks.files_consumer import EXECUTE_TASK

logger = logging.getLogger(__name__)
settings = from_env()

# Results travel to the chord's callback through the result backend; a failed step is
# acked (not left to SQS): the execution's error path hands its events back to SQS
# instead, and a redelivered step would run (and fail) again outside its execution.
STEP_OPTIONS = {"ignore_result": False, "acks_late": True, "acks_on_failure_or_timeout": True,
                "time_limit": settings.files_execution_timeout // 2,
                "soft_time_limit": settings.files_execution_timeout // 2 - 10}

_files: Files | None = None


def files() -> Files:
    """The process's Files resources, created on first use (after the pool forked)."""
    global _files
    if _files is None:
        _files = Files(settings)
    return _files


def _sqs():
    return sqs.client(settings)


def delete_events(events: list[dict]) -> None:
    """Delete event messages by receipt handle (done with them)."""
    client = _sqs()
    for batch in sqs.chunks(events):
        response = client.delete_message_batch(QueueUrl=settings.files_url, Entries=[
            {"Id": str(i), "ReceiptHandle": e["receipt_handle"]} for i, e in enumerate(batch)])
        for failure in response.get("Failed", []):
            # Its handle expired (received again meanwhile): the next execution is a no-op.
            logger.warning("SQS did not delete file event %s: %s", failure["Id"],
                           failure.get("Message"))


def hide_events(events: list[dict], seconds_for) -> None:
    """Set each event's visibility timeout: seconds_for(event) from now."""
    client = _sqs()
    for batch in sqs.chunks(events):
        response = client.change_message_visibility_batch(QueueUrl=settings.files_url, Entries=[
            {"Id": str(i), "ReceiptHandle": e["receipt_handle"],
             "VisibilityTimeout": int(seconds_for(e))} for i, e in enumerate(batch)])
        for failure in response.get("Failed", []):
            logger.warning("SQS did not change the visibility of file event %s: %s",
                           failure["Id"], failure.get("Message"))


def _backoff(event: dict) -> int:
    policy = settings.failure_backoff_policy
    return policy.get(event["receive_count"], max(policy.values()))


@app.task(name=EXECUTE_TASK, bind=True, acks_late=True)
def execute(self, events: list[dict]):
    """Start one execution over a window of S3 events; None if there is nothing to do."""
    found, file_events, done, bad = [], [], [], []
    for event in events:
        parsed = parse_event(event["body"], settings.files_bucket)
        if parsed.kind == "test":
            done.append(event)  # S3 sends one when a notification is configured
        elif parsed.kind == "invalid":
            logger.warning("file event %s is not an S3 notification (%s); left to the DLQ",
                           event["message_id"], parsed.reason)
            bad.append(event)
        elif not parsed.files:
            done.append(event)  # another bucket or prefix
        else:
            file_events.append(event)
            found += parsed.files
    if done:
        delete_events(done)
    if bad:
        hide_events(bad, _backoff)  # retried, then dead-lettered for a look
    if not found:
        return None
    # The window's wait has been spent: hide the events for a whole execution from now.
    hide_events(file_events, lambda e: settings.files_execution_timeout)
    execution_id = new_execution_id()
    lanes = staging_lanes(found)
    files().start(execution_id, [key for lane in lanes for key in lane])
    # One chain per table (its files in upload order), the tables in parallel.
    workflow = chord(group(chain(stage.s([], execution_id, lane[0]),
                                 *(stage.s(execution_id, key) for key in lane[1:]))
                           for lane in lanes),
                     kpis.s(execution_id)) | finish.s(execution_id, file_events)
    workflow.link_error(failed.s(execution_id, file_events))
    workflow.apply_async()
    logger.info("execution %s started over %d file(s) from %d event(s)", execution_id,
                sum(map(len, lanes)), len(file_events))
    return execution_id


@app.task(name="files.stage", **STEP_OPTIONS)
def stage(earlier: list[dict], execution_id: str, key: str) -> list[dict]:
    """Validate, clean and upsert one file into its Delta table, after its lane's earlier files."""
    return [*earlier, files().stage(execution_id, key)]


@app.task(name="files.kpis", **STEP_OPTIONS)
def kpis(lanes: list[list[dict]], execution_id: str) -> dict:
    """Recompute the KPIs of every date the execution's files touched."""
    staged = [result for lane in lanes for result in lane]
    summary = files().compute_kpis(execution_id, staged)
    # What the next step needs; dates are dropped from the effects (the summary has them).
    return {"staged": [{**r, "effects": {"ref": r["effects"]["ref"]}}
                       if "ref" in (r.get("effects") or {}) else
                       {k: v for k, v in r.items() if k != "effects"} for r in staged],
            "kpis": summary}


@app.task(name="files.finish", **STEP_OPTIONS)
def finish(result: dict, execution_id: str, events: list[dict]) -> dict:
    """Archive, reject, record and notify; then the events are done with."""
    record = files().finish(execution_id, result["staged"], result["kpis"])
    delete_events(events)
    return {"execution_id": execution_id, "status": record["status"]}


@app.task(name="files.failed")
def failed(request, exc, traceback, execution_id: str, events: list[dict]):
    """Error path of an execution: failure message, events back to SQS, nothing archived."""
    logger.error("execution %s failed in %s: %r", execution_id, request.task, exc)
    files().fail(execution_id, request.task or "", f"{type(exc).__name__}: {exc}")
    hide_events(events, _backoff)
