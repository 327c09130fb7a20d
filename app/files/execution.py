"""One execution over a micro-batch of uploaded files: the steps the Celery canvas runs.

Every step is idempotent, because SQS may deliver a file event again: staging merges,
KPIs are recomputed from the tables, moving a file that is already gone is a no-op, and
each outcome is announced once per execution (FilesStore.settled), at least once. Steps
take ids only and read what to do from the execution's plan and step results in Redis.
"""
from __future__ import annotations

import json
import logging
import posixpath
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from app import aws
from app.files.contract import file_type_for
from app.settings import Settings
from app.store import FilesStore

# kpis, cleaning and staging load polars and deltalake (about 0.17 s of CPU): they are
# imported by the steps that use them, in the pool process that runs a files task. So a
# worker starts without them, and its main process, which forks the pool, never loads
# polars (a child forked after polars ran in its parent can deadlock).
if TYPE_CHECKING:
    from app.files.staging import Staging

logger = logging.getLogger(__name__)

TEST_EVENT = "s3:TestEvent"
# The KPI step's result and the failed step among an execution's step results (the
# others are staged files, by key).
KPIS_STEP, FAILED_STEP = "kpis", "failed"
# Where a failure happened, by the Celery task that failed (for the failure message).
STEPS = {"files.stage": "validate and stage", "files.kpis": "KPIs",
         "files.finish": "archive and notify", "files.execute": "start"}


@dataclass(frozen=True)
class FileEvent:
    """One ObjectCreated record of an S3 event notification."""

    key: str
    size: int | None = None
    etag: str | None = None
    event_time: str = ""  # ISO 8601 from S3: orders files of one table within a window
    version_id: str | None = None  # the upload this event is about (versioned bucket)
    sequencer: str | None = None  # hexadecimal: orders the uploads of one key


@dataclass
class ParsedMessage:
    """What one SQS message of the files queue holds."""

    kind: str  # "files", "test" (s3:TestEvent) or "invalid"
    files: list[FileEvent] = field(default_factory=list)
    reason: str = ""


def parse_event(body: str, bucket: str) -> ParsedMessage:
    """Read an S3 event notification body; keys of other buckets or outside input/ are left out."""
    try:
        document = json.loads(body)
    except (TypeError, ValueError):
        return ParsedMessage("invalid", reason="not JSON")
    if not isinstance(document, dict):
        return ParsedMessage("invalid", reason="not a JSON object")
    if document.get("Event") == TEST_EVENT:
        return ParsedMessage("test")
    records = document.get("Records")
    if not isinstance(records, list):
        return ParsedMessage("invalid", reason="no Records")
    files = []
    try:
        for record in records:
            if not str(record.get("eventName", "")).startswith("ObjectCreated"):
                continue
            s3 = record["s3"]
            if s3["bucket"]["name"] != bucket:
                continue
            # Keys in S3 events are URL-encoded, spaces as '+'.
            key = unquote_plus(s3["object"]["key"])
            if key.startswith(aws.INPUT) and key != aws.INPUT:
                obj = s3["object"]
                files.append(FileEvent(key, obj.get("size"), obj.get("eTag"),
                                       str(record.get("eventTime", "")),
                                       obj.get("versionId") or None,
                                       obj.get("sequencer") or None))
    except (KeyError, TypeError, AttributeError) as exc:
        return ParsedMessage("invalid", reason=f"malformed record: {exc!r}")
    return ParsedMessage("files", files)


def upload_order(event: FileEvent) -> tuple[int, str]:
    """Orders the uploads of one key: S3's sequencer (hexadecimal, the greater one is the
    later upload), then the event time (LocalStack repeats a key's sequencer)."""
    return int(event.sequencer, 16) if event.sequencer else -1, event.event_time


def upload_order_text(event: FileEvent) -> str | None:
    """upload_order as text in the same order, as staged rows carry it (None without a
    sequencer: such an upload is applied in commit order)."""
    if not event.sequencer:
        return None
    return f"{int(event.sequencer, 16):032x} {event.event_time}"


def latest_uploads(events: list[FileEvent]) -> list[FileEvent]:
    """The newest event of each key (an older upload of a key in the same window is gone)."""
    latest: dict[str, FileEvent] = {}
    for event in events:
        if event.key not in latest or upload_order(event) >= upload_order(latest[event.key]):
            latest[event.key] = event
    return list(latest.values())


def staging_lanes(events: list[FileEvent]) -> list[list[str]]:
    """The keys to stage, one lane per table: a table's files in upload order, one after
    another (a later file of the same keys must win); lanes run in parallel."""
    lanes: dict[str, list[FileEvent]] = {}
    for event in latest_uploads(events):
        file_type = file_type_for(event.key)
        # Files of no known type are only rejected: each gets a lane of its own.
        lanes.setdefault(file_type.name if file_type else event.key, []).append(event)
    return [[e.key for e in sorted(lane, key=lambda e: (e.event_time, e.key))]
            for lane in lanes.values()]


def new_execution_id(now: datetime | None = None) -> str:
    """A unique id that sorts by start time."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _name(key: str) -> str:
    """The file's name below input/ (its path in archive/ and rejected/)."""
    return key[len(aws.INPUT):] if key.startswith(aws.INPUT) else posixpath.basename(key)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Files:
    """The files path's resources for one process: S3, SNS, the Delta tables, Redis."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def s3(self):
        """boto3 S3 client."""
        return aws.s3_client(self.settings)

    @cached_property
    def sns(self):
        """boto3 SNS client."""
        return aws.sns_client(self.settings)

    @cached_property
    def staging(self) -> Staging:
        """The Delta tables under staging/."""
        from app.files.staging import Staging
        return Staging(f"s3://{self.settings.files_bucket}/{aws.STAGING}",
                       aws.delta_storage_options(self.settings),
                       self.settings.files_merge_batch_rows)

    @cached_property
    def store(self) -> FilesStore:
        """KPIs and execution records in Redis."""
        return FilesStore.from_url(self.settings.redis_url,
                                   self.settings.files_execution_record_days)

    # --- the steps -----------------------------------------------------------------

    def start(self, execution_id: str, uploads: list[FileEvent],
              events: list[dict] | None = None) -> dict:
        """Record a new execution as running, with what its steps are to do: its uploads
        (each at the version its event names) and the event messages it settles."""
        self.store.save_plan(execution_id, {"files": [asdict(u) for u in uploads],
                                            "events": events or []})
        record = {"execution_id": execution_id, "status": "running", "started_at": _now_iso(),
                  "started_at_ms": int(time.time() * 1000),
                  "files": [{"key": u.key} for u in uploads]}
        self._save(record)
        return record

    def planned_events(self, execution_id: str) -> list[dict]:
        """The event messages an execution was started over (none for an unknown one)."""
        return (self.store.plan(execution_id) or {}).get("events", [])

    def _upload(self, execution_id: str, key: str) -> FileEvent | None:
        plan = self.store.plan(execution_id)
        for upload in (plan or {}).get("files", []):
            if upload["key"] == key:
                return FileEvent(**upload)
        return None

    def _staged(self, execution_id: str) -> tuple[dict, dict] | None:
        """The plan and the steps' results, or None until every planned file is staged (no
        plan: an unknown execution)."""
        plan = self.store.plan(execution_id)
        if plan is None:
            return None
        steps = self.store.steps(execution_id)
        if any(u["key"] not in steps for u in plan["files"]):
            return None
        return plan, steps

    def stage(self, execution_id: str, key: str) -> dict | None:
        """Validate, clean and upsert one planned file at its upload's version; its result
        (valid, invalid, missing or superseded), or None for a file the execution lacks."""
        upload = self._upload(execution_id, key)
        if upload is None:
            logger.warning("execution %s has no file %s: stage refused", execution_id, key)
            return None
        if self.store.settled(execution_id):
            return self.store.steps(execution_id).get(key)  # a replay: done with already
        result = self._stage(execution_id, upload)
        self.store.save_step(execution_id, key, result)
        return result

    def _stage(self, execution_id: str, upload: FileEvent) -> dict:
        started = time.monotonic()
        key = upload.key
        result = {"key": key, "name": _name(key)}
        file_type = file_type_for(key)
        with tempfile.TemporaryDirectory(prefix="files-") as scratch, \
                tempfile.NamedTemporaryFile(dir=scratch, suffix=".csv") as local:
            try:
                size = aws.download(self.s3, self.settings.files_bucket, key, local,
                                    version_id=upload.version_id,
                                    max_bytes=self.settings.files_max_bytes)
            except aws.ObjectTooLarge as exc:
                return {**result, "status": "invalid",
                        "type": file_type.name if file_type else None, "reasons": [str(exc)]}
            if size is None:
                # An earlier execution of a redelivered event moved it already.
                return {**result, "status": "missing",
                        "reasons": ["not in input/ any more (already archived or rejected)"]}
            if file_type is None:
                return {**result, "status": "invalid", "type": None,
                        "reasons": ["unknown file type: the name must start with products, "
                                    "order_items or orders"]}
            result["type"] = file_type.name
            from app.files.cleaning import InvalidFile, clean, scan_csv
            try:
                # Cleaned into a Parquet spool beside the file, merged from there in batches:
                # no step holds more than a batch of rows, whatever the file's size.
                cleaned = clean(scan_csv(local.name, file_type), file_type, Path(scratch),
                                self.settings.files_merge_batch_rows)
            except InvalidFile as exc:
                return {**result, "status": "invalid", "reasons": exc.reasons}
            report = {"rows_read": cleaned.rows_read, "rows_kept": cleaned.rows_kept,
                      "dropped": cleaned.dropped}
            # One upload of a key merges at a time. An older one than the newest staged is
            # merged too: its rows update only those no newer upload of the key wrote.
            with self.store.upload_lock(key, timeout=self.settings.files_execution_timeout):
                applied = self.store.applied_upload(key)
                superseded = bool(upload.sequencer and applied
                                  and tuple(applied) > upload_order(upload))
                if upload.sequencer and not superseded:
                    self.store.set_applied_upload(key, upload_order(upload))
                merged = (self.staging.upsert(file_type, cleaned, key, upload_order_text(upload))
                          if report["rows_kept"] else {})
        counts = {"inserted": merged.get("num_target_rows_inserted", 0),
                  "updated": merged.get("num_target_rows_updated", 0),
                  "renamed": merged.get("num_target_rows_renamed", 0)}
        if superseded:
            # Not archived: archive/ keeps the newer upload as its current version.
            return {**result, "status": "superseded", **counts, "reasons": [
                f"a newer upload of {key} was staged already: only its rows the newer one "
                f"did not write were merged ({counts['inserted']} inserted, "
                f"{counts['updated']} updated)"]}
        logger.info("execution %s: %s staged, %d of %d rows kept", execution_id, key,
                    report["rows_kept"], report["rows_read"])
        return {**result, "status": "valid", **report, **counts,
                "seconds": round(time.monotonic() - started, 3)}

    def compute_kpis(self, execution_id: str) -> dict | None:
        """Recompute and write the KPIs of every date changed since they were last written
        (None, doing nothing, until every file of the execution is staged).

        The changes are read from the tables' change data feed, after the watermarks the
        last KPI write left: a commit whose execution failed after its merge is counted by
        the next computation, whichever execution runs it.
        """
        if self._staged(execution_id) is None:
            logger.warning("execution %s is unknown or not staged: KPIs refused", execution_id)
            return None
        from app.files import kpis
        started = time.monotonic()
        snapshot = kpis.Snapshot(self.staging.versions())
        dates = kpis.changed_dates(self.staging, snapshot, self.store.kpi_watermarks())
        if dates is None:
            # A commit without its changes recorded (a table made before the feed): every
            # date, those staged and those that have KPIs now.
            dates = sorted(set(kpis.staged_dates(self.staging, snapshot))
                           | set(self.store.kpi_dates()))
        order_kpis, category_kpis = (kpis.compute(self.staging, snapshot, dates) if dates
                                     else ([], []))
        written = self.store.write_kpis(snapshot.rank, dates, order_kpis, category_kpis,
                                        snapshot.versions)
        logger.info("execution %s: KPIs of %d date(s) computed, %d written", execution_id,
                    len(dates), written)
        summary = {"dates": dates, "dates_written": written,
                   "table_versions": snapshot.versions,
                   "seconds": round(time.monotonic() - started, 3)}
        self.store.save_step(execution_id, KPIS_STEP, summary)
        return summary

    def finish(self, execution_id: str) -> dict | None:
        """Archive valid files, reject invalid ones with their reasons, each at the version
        read; record, notify. None, doing nothing, before the execution's KPIs are written."""
        done = self._staged(execution_id)
        if done is None or KPIS_STEP not in done[1] or self.store.settled(execution_id) == "failed":
            logger.warning("execution %s is unknown, failed or has no KPIs yet: finish refused",
                           execution_id)
            return None
        plan, steps = done
        staged = _file_results(plan, steps)
        versions = {u["key"]: u.get("version_id") for u in plan["files"]}
        kpi_summary = steps[KPIS_STEP]
        started = time.monotonic()
        bucket = self.settings.files_bucket
        for result in staged:
            version = versions[result["key"]]
            if result["status"] == "valid":
                aws.move(self.s3, bucket, result["key"], aws.ARCHIVE + result["name"], version)
            elif result["status"] == "invalid":
                target = aws.REJECTED + result["name"]
                aws.put_json(self.s3, bucket, target + ".reason.json",
                             {"file": result["key"], "execution_id": execution_id,
                              "reasons": result["reasons"]})
                aws.move(self.s3, bucket, result["key"], target, version)
            elif result["status"] == "superseded" and version:
                # Left, it would be input/'s current version again once the newer one moves.
                aws.delete_version(self.s3, bucket, result["key"], version)
        record = self._record(execution_id, "succeeded", staged, kpi_summary)
        record["timings"]["finish_seconds"] = round(time.monotonic() - started, 3)
        self._save(record)
        # Published, then marked: a crash in between announces twice, never not at all.
        if not self.store.settled(execution_id):
            aws.publish(self.sns, self.settings.files_success_topic,
                        f"Files execution {execution_id} succeeded", _summary(record))
            self.store.mark_settled(execution_id, "succeeded")
        return record

    def note_failure(self, execution_id: str, task_name: str, error: str) -> None:
        """Keep the first failed step of a known execution (what its failure will name)."""
        if self.store.plan(execution_id) is not None and not self.noted_failure(execution_id):
            self.store.save_step(execution_id, FAILED_STEP, {"task": task_name, "error": error})

    def noted_failure(self, execution_id: str) -> dict | None:
        """The failed step noted for an execution: {task, error}, or None."""
        return self.store.steps(execution_id).get(FAILED_STEP)

    def fail(self, execution_id: str, task_name: str, error: str,
             staged: list[dict] | None = None) -> dict:
        """Record and announce a failed execution; its files stay in input/ (staged: the
        results to record, by default those its steps saved)."""
        if self.store.settled(execution_id) == "succeeded":
            # Only the events' deletion failed after the success was announced: they come
            # back, and their next execution finds the files moved.
            logger.warning("execution %s failed after it succeeded (%s): %s", execution_id,
                           task_name, error)
            return self.store.execution(execution_id) or {}
        if staged is None:
            staged = _file_results(self.store.plan(execution_id) or {},
                                   self.store.steps(execution_id))
        record = self._record(execution_id, "failed", staged, {})
        record["failure"] = {"step": STEPS.get(task_name, task_name), "task": task_name,
                             "error": error}
        self._save(record)
        if not self.store.settled(execution_id):
            aws.publish(self.sns, self.settings.files_failure_topic,
                        f"Files execution {execution_id} failed", {
                            "execution_id": execution_id, "status": "failed",
                            **record["failure"],
                            "files": [f["key"] for f in record["files"]]})
            self.store.mark_settled(execution_id, "failed")
        return record

    # --- the record ------------------------------------------------------------------

    def _record(self, execution_id: str, status: str, staged: list[dict],
                kpi_summary: dict) -> dict:
        previous = self.store.execution(execution_id) or {}
        files = list(staged)
        if not files:
            files = previous.get("files", [])
        valid = [f for f in files if f.get("status") == "valid"]
        started_ms = previous.get("started_at_ms", int(time.time() * 1000))
        return {
            "execution_id": execution_id, "status": status,
            "started_at": previous.get("started_at", _now_iso()), "started_at_ms": started_ms,
            "finished_at": _now_iso(),
            "valid_files": [f["name"] for f in valid],
            "invalid_files": [{"name": f["name"], "reasons": f["reasons"]}
                              for f in files if f.get("status") == "invalid"],
            "skipped_files": [{"name": f["name"], "reasons": f["reasons"]}
                              for f in files if f.get("status") in ("missing", "superseded")],
            "rows_read": sum(f["rows_read"] for f in valid),
            "rows_kept": sum(f["rows_kept"] for f in valid),
            "rows_dropped": {f["name"]: f["dropped"] for f in valid},
            "dates": kpi_summary.get("dates", []),
            "files": files,
            "timings": {"stage_seconds": {f["name"]: f["seconds"] for f in valid},
                        "kpis_seconds": kpi_summary.get("seconds"),
                        "total_seconds": round(time.time() - started_ms / 1000, 3)},
        }

    def _save(self, record: dict) -> None:
        aws.put_json(self.s3, self.settings.files_bucket,
                     f"{aws.RESULTS}{record['execution_id']}.json", record)
        self.store.save_execution(record)


def _file_results(plan: dict, steps: dict) -> list[dict]:
    """The staged results of the plan's files, in plan order (those staged so far)."""
    return [steps[f["key"]] for f in plan.get("files", []) if f["key"] in steps]


def _summary(record: dict) -> dict:
    """The success message: execution id, files, rows kept and dropped, dates."""
    return {"execution_id": record["execution_id"], "status": record["status"],
            "valid_files": record["valid_files"], "invalid_files": record["invalid_files"],
            "rows_kept": record["rows_kept"],
            "rows_dropped": sum(n for d in record["rows_dropped"].values() for n in d.values()),
            "dates": record["dates"]}
