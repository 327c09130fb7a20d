"""The files tasks: thin adapters over app.files.execution, chained as one Celery canvas.

files.execute (one window of S3 events) starts an execution:
    chord(group(chain(files.stage per file of a table) per table),
          chain(files.kpis, files.finish))
with files.failed as the error callback of the chord's body.
Every step is idempotent; the events stay on SQS until files.finish deletes them, and
files.failed makes them visible again, so SQS retries and then dead-letters them.
A step's message carries ids only (the execution, and a file's key): what to do is read
from the execution's plan in Redis, so a forged or replayed message can at most repeat a
step of a real execution.
"""
from __future__ import annotations

import logging
from functools import cached_property

from celery import Task, chain, chord, group, shared_task

from app import sqs
from app.display import error_text
from app.files.execution import (STEPS, Files, latest_uploads, new_execution_id, parse_event,
                                 staging_lanes)
from app.settings import Settings
from tasks.names import (FILES_EXECUTE, FILES_FAILED, FILES_FINISH, FILES_KPIS, FILES_MAINTAIN,
                         FILES_STAGE, FILES_SWEEP)

logger = logging.getLogger(__name__)


class FilesTask(Task):
    """Base of the files tasks: the app's settings, this process's Files and SQS client."""

    @property
    def settings(self) -> Settings:
        """The settings the app was built with."""
        return self.app.settings

    @cached_property
    def files(self) -> Files:
        """The process's Files resources, created on first use (after the pool forked)."""
        return Files(self.settings)

    @cached_property
    def sqs(self):
        """This process's SQS client."""
        return sqs.client(self.settings)


class StepLost(Exception):
    """A step started more times than allowed without finishing: its worker was lost."""


class StepTask(FilesTask):
    """A step of an execution: each gets half of FILES_EXECUTION_TIMEOUT.

    A failed step is acked (not left to SQS): the execution's error path hands its events
    back to SQS instead. A step whose pool process was killed comes back (Celery's
    task_reject_on_worker_lost); its MAX_RECEIVE_COUNT-th start fails instead, so the
    execution ends failed and announced, like any other failed step.
    """

    ignore_result = False  # the chord counts its header's results in the backend
    acks_late = True
    acks_on_failure_or_timeout = True

    @property
    def time_limit(self) -> int:
        """Hard limit of one step."""
        return self.settings.files_execution_timeout // 2

    @property
    def soft_time_limit(self) -> int:
        """Soft limit of one step, 10 s before the hard one."""
        return self.time_limit - 10

    def count_start(self, execution_id: str, step: str) -> None:
        """Count this start of the step; StepLost past the allowed number of starts."""
        starts = self.files.store.count_attempt(execution_id, step)
        # The files queue dead-letters a message at its MAX_RECEIVE_COUNT-th receive: that
        # start fails the step instead of trying it (a kill now would leave no failure).
        if starts >= self.settings.max_receive_count:
            raise StepLost(f"{STEPS.get(self.name, self.name)} started {starts} times "
                           "without finishing (its worker was lost each time)")

    def __call__(self, *args, **kwargs):
        """Run the step; if it raises, keep which step failed and why first: the errback runs
        with the chord's error and the request of the chord's body (celery.chain)."""
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            execution_id = args[0] if args else kwargs.get("execution_id")
            if isinstance(execution_id, str):
                try:
                    self.files.note_failure(execution_id, self.name, error_text(exc))
                except Exception:  # the step's own error is the one to raise
                    logger.exception("execution %s: the failure of %s not noted",
                                     execution_id, self.name)
            raise


def delete_events(task: FilesTask, events: list[dict]) -> None:
    """Delete event messages by receipt handle (done with them)."""
    for batch in sqs.chunks(events):
        response = task.sqs.delete_message_batch(QueueUrl=task.settings.files_url, Entries=[
            {"Id": str(i), "ReceiptHandle": e["receipt_handle"]} for i, e in enumerate(batch)])
        for failure in response.get("Failed", []):
            # Its handle expired (received again meanwhile): the next execution is a no-op.
            logger.warning("SQS did not delete file event %s: %s", failure["Id"],
                           failure.get("Message"))


def hide_events(task: FilesTask, events: list[dict], seconds_for) -> None:
    """Set each event's visibility timeout: seconds_for(event) from now."""
    for batch in sqs.chunks(events):
        response = task.sqs.change_message_visibility_batch(
            QueueUrl=task.settings.files_url,
            Entries=[{"Id": str(i), "ReceiptHandle": e["receipt_handle"],
                      "VisibilityTimeout": int(seconds_for(e))} for i, e in enumerate(batch)])
        for failure in response.get("Failed", []):
            logger.warning("SQS did not change the visibility of file event %s: %s",
                           failure["Id"], failure.get("Message"))


def backoff(settings: Settings):
    """Seconds a failed event stays hidden, by its receive count."""
    policy = settings.failure_backoff_policy
    return lambda event: policy.get(event["receive_count"], max(policy.values()))


@shared_task(name=FILES_EXECUTE, bind=True, base=FilesTask, acks_late=True)
def execute(self, events: list[dict]):
    """Start one execution over a window of S3 events; None if there is nothing to do."""
    found, file_events, done, bad = [], [], [], []
    for event in events:
        parsed = parse_event(event["body"], self.settings.files_bucket)
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
        delete_events(self, done)
    if bad:
        hide_events(self, bad, backoff(self.settings))  # retried, then dead-lettered
    if not found:
        return None
    # The window's wait has been spent: hide the events for a whole execution from now.
    hide_events(self, file_events, lambda e: self.settings.files_execution_timeout)
    execution_id = new_execution_id()
    lanes = staging_lanes(found)
    uploads = {u.key: u for u in latest_uploads(found)}
    self.files.start(execution_id, [uploads[key] for lane in lanes for key in lane],
                     file_events)
    # One chain per table (its files in upload order), the tables in parallel, then the
    # KPIs and the finish. Immutable signatures: every step reads its inputs from the
    # execution's plan and results. files.failed is the error callback of the chord's body:
    # a failed step of the body calls it, and so does a failed stage, as the chord's error.
    # chord.link_error links it there too, but warns at each call (Celery 5.7) that a later
    # release may link it to every stage as well.
    stages = group(chain(*(stage.si(execution_id, key) for key in lane)) for lane in lanes)
    body = chain(kpis.si(execution_id), finish.si(execution_id))
    body.link_error(failed.s(execution_id))
    workflow = chord(stages, body)
    workflow.apply_async()
    logger.info("execution %s started over %d file(s) from %d event(s)", execution_id,
                sum(map(len, lanes)), len(file_events))
    return execution_id


@shared_task(name=FILES_STAGE, bind=True, base=StepTask)
def stage(self, execution_id: str, key: str) -> str | None:
    """Validate, clean and upsert one file of the execution into its Delta table."""
    self.count_start(execution_id, f"stage:{key}")
    result = self.files.stage(execution_id, key)
    return result and result["status"]


@shared_task(name=FILES_KPIS, bind=True, base=StepTask)
def kpis(self, execution_id: str) -> list[str] | None:
    """Recompute the KPIs of every date changed since they were last written."""
    self.count_start(execution_id, "kpis")
    summary = self.files.compute_kpis(execution_id)
    return summary and summary["dates"]


@shared_task(name=FILES_FINISH, bind=True, base=StepTask)
def finish(self, execution_id: str) -> dict | None:
    """Archive, reject, record and notify; then the execution's events are done with."""
    self.count_start(execution_id, "finish")
    record = self.files.finish(execution_id)
    if record is None:
        return None
    delete_events(self, self.files.planned_events(execution_id))
    return {"execution_id": execution_id, "status": record["status"]}


@shared_task(name=FILES_FAILED, base=FilesTask)
def failed(request, exc, traceback, execution_id: str):
    """Error path of an execution: failure message, events back to SQS, nothing archived."""
    # Not bound: Celery passes (request, exc, traceback) to an errback whose signature
    # starts with them, and a bound task's signature does not. `failed` is this task.
    logger.error("execution %s failed in %s: %r", execution_id, request.task, exc)
    events = failed.files.planned_events(execution_id)
    if not events:
        logger.warning("execution %s is unknown: failure not recorded", execution_id)
        return
    # A failed header step reaches this errback as the chord's error, in the request of the
    # chord's body (celery.chain): the step kept its own name and error.
    noted = failed.files.noted_failure(execution_id) or {
        "task": request.task or "", "error": error_text(exc)}
    failed.files.fail(execution_id, noted["task"], noted["error"])
    hide_events(failed, events, backoff(failed.settings))


class UpkeepTask(StepTask):
    """files.maintain and files.sweep: a step's time limits; nothing to keep as a result.

    Both are idempotent and scheduled again: a failed or lost run is acked, the next one
    does the work.
    """

    ignore_result = True


@shared_task(name=FILES_MAINTAIN, bind=True, base=UpkeepTask)
def maintain(self) -> dict:
    """Compact, vacuum and checkpoint every Delta table of the files path."""
    from app.files import maintenance  # loads deltalake: in the pool process only
    return maintenance.maintain_files(self.files)


@shared_task(name=FILES_SWEEP, bind=True, base=UpkeepTask)
def sweep(self) -> list[str]:
    """Fail and announce the executions that outlived FILES_EXECUTION_TIMEOUT."""
    from app.files import maintenance
    return maintenance.sweep(self.files, FILES_SWEEP)
