"""Upkeep of the files path: the Delta tables' small files and log, and stuck executions.

Every merge adds files to a table and every commit a log entry; nothing else removes them.
maintain() compacts each table (optimize.compact), vacuums the files no version newer than
the retention needs, checkpoints the log, drops the log entries older than the table's
delta.logRetentionDuration, and removes the change data files no reader needs (delta-rs's
vacuum leaves them: see the section below). The retention is FILES_VACUUM_RETENTION_HOURS,
which settings keep longer than FILES_EXECUTION_TIMEOUT: an execution reads the tables at
the versions it pinned, and the files of those versions are still there when it reads them.
The KPI step reads the change feed from its watermark on (app/files/kpis.py): given the
watermarks, maintain() keeps every version after them too (their data files, change data
files and log entries), however old.

sweep() fails the executions that outlived FILES_EXECUTION_TIMEOUT (a step killed with no
error callback left them running), with their failure notification.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from app.files.contract import FILE_TYPES
from app.files.execution import Files
from app.files.staging import Staging

logger = logging.getLogger(__name__)

# --- Change data files: what delta-rs leaves, removed here (checked with deltalake 1.6.6) --
# With delta.enableChangeDataFeed every merge writes its rows' before and after images under
# the table's _change_data/ and names them in "cdc" actions of its commit (Delta protocol,
# "Add CDC File"). delta-rs's vacuum skips every folder whose name starts with "_" (its
# vacuum.rs is_hidden_directory): these files are never removed, and no delta-rs API lists
# them or the commits naming them. So this section reads the log itself, as the protocol
# lays it out: _delta_log/<version, 20 digits>.json, one JSON action per line, "cdc"."path"
# percent-encoded and relative to the table. A change data file is read only by a change
# feed over a range holding the commit that names it, so it goes once it is older than the
# retention and no commit from the first version still needed on names it (an uncommitted
# one, of a merge under way, is younger than FILES_EXECUTION_TIMEOUT, shorter than the
# retention). tests/app/test_files_maintenance.py fails by name if a delta-rs upgrade moves
# the files or starts removing them itself.
CHANGE_DATA = "_change_data/"
# Off on the tables maintain() keeps: their log entries are dropped here only (see
# maintain_table), not by every writer's commit.
OWN_LOG_CLEANUP = "delta.enableExpiredLogCleanup"
# delta.logRetentionDuration's default and form ("interval 30 days"), as Delta defines it.
LOG_RETENTION_DEFAULT = "interval 30 days"
INTERVAL = re.compile(r"interval\s+(\d+)\s+(nanosecond|microsecond|millisecond|second|minute|"
                      r"hour|day|week)s?", re.I)
UNIT_SECONDS = {"nanosecond": 1e-9, "microsecond": 1e-6, "millisecond": 1e-3, "second": 1,
                "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
LOG = "_delta_log/"
COMMIT = re.compile(r"(\d{20})\.json")
DELETE_BATCH = 1000  # S3 DeleteObjects' limit


def table_location(table: DeltaTable) -> tuple[str, str]:
    """(bucket, key prefix ending in "/") of a table on S3."""
    uri = urlsplit(table.table_uri)
    return uri.netloc, uri.path.strip("/") + "/"


def listed(s3, bucket: str, prefix: str) -> dict[str, float]:
    """Key -> last modified (epoch seconds) of every object under the prefix."""
    paginator = s3.get_paginator("list_objects_v2")
    return {o["Key"]: o["LastModified"].timestamp()
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])}


def commits(s3, bucket: str, prefix: str) -> dict[int, float]:
    """Version -> commit time (its log entry's last modified, as Delta takes it) of every
    log entry still in the table's _delta_log/."""
    found = {}
    for key, modified in listed(s3, bucket, prefix + LOG).items():
        match = COMMIT.fullmatch(key.rsplit("/", 1)[1])
        if match:
            found[int(match.group(1))] = modified
    return found


def log_retention_seconds(table: DeltaTable) -> float:
    """The table's delta.logRetentionDuration in seconds."""
    text = table.metadata().configuration.get("delta.logRetentionDuration",
                                               LOG_RETENTION_DEFAULT)
    match = INTERVAL.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{table.table_uri}: delta.logRetentionDuration {text!r} is not "
                         f"'interval <n> <unit>'")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2).lower()]


def first_needed(commit_times: dict[int, float], horizon: float,
                 watermark: int | None) -> int:
    """The oldest version a reader may still ask for: the first committed at or after the
    horizon, or the first after the KPI watermark if that is older (0: no watermark known)."""
    retained = min((v for v, t in commit_times.items() if t >= horizon),
                   default=max(commit_times, default=-1) + 1)
    return min(retained, watermark + 1 if watermark is not None else 0)


def change_data_named(s3, bucket: str, prefix: str, versions) -> set[str]:
    """Keys of the change data files the commits of these versions name."""
    named = set()
    for version in versions:
        entry = s3.get_object(Bucket=bucket, Key=f"{prefix}{LOG}{version:020d}.json")
        for line in entry["Body"].read().decode().splitlines():
            if line.strip():
                cdc = json.loads(line).get("cdc")
                if cdc:
                    named.add(prefix + unquote(cdc["path"]))
    return named


def remove_change_data(s3, table: DeltaTable, horizon: float, needed_from: int,
                       commit_times: dict[int, float]) -> int:
    """Delete the change data files older than the horizon that no commit from needed_from
    on names; how many."""
    bucket, prefix = table_location(table)
    kept = change_data_named(s3, bucket, prefix, sorted(v for v in commit_times
                                                        if v >= needed_from))
    spent = [key for key, modified in listed(s3, bucket, prefix + CHANGE_DATA).items()
             if key not in kept and modified < horizon]
    for start in range(0, len(spent), DELETE_BATCH):
        batch = spent[start:start + DELETE_BATCH]
        answer = s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": key} for key in batch], "Quiet": True})
        if answer.get("Errors"):
            raise RuntimeError(f"deleting change data files of {table.table_uri}: "
                               f"{answer['Errors'][:3]}")
    return len(spent)


def maintain_table(table: DeltaTable, retention_hours: int, s3=None,
                   watermark: int | None = None, known_watermark: bool = False) -> dict:
    """Compact, vacuum and checkpoint one table, drop its expired log entries and (with an
    S3 client) its spent change data files; what was done, file counts before and after.

    known_watermark: watermark is the KPI step's for this table (None: it has read none of
    the table's changes yet); otherwise every change data file a log entry names stays.
    """
    files_before, version_before = len(table.file_uris()), table.version()
    now = time.time()
    horizon = now - retention_hours * 3600
    location = table_location(table)
    commit_times = commits(s3, *location) if s3 is not None else {}
    needed_from = first_needed(commit_times, horizon, watermark)
    try:
        compacted = table.optimize.compact()
        compaction = {"files_added": compacted["numFilesAdded"],
                      "files_removed": compacted["numFilesRemoved"]}
    except CommitFailedError as exc:
        # A merge committed meanwhile: the next run compacts, this one still vacuums.
        logger.warning("compaction of %s lost a commit race (%s); the next run compacts it",
                       table.table_uri, exc)
        compaction = {"skipped": f"a concurrent commit: {exc}"}
        table.update_incremental()
    # A change feed over the versions after the KPI watermark reads the data files those
    # commits added, removed since or not: keep them as long as the oldest of those commits.
    vacuum_hours = retention_hours
    if known_watermark and needed_from in commit_times:
        vacuum_hours = max(retention_hours,
                           math.ceil((now - commit_times[needed_from]) / 3600))
    # Our own retention check (settings) replaces delta-rs's, which would refuse anything
    # below the table's delta.deletedFileRetentionDuration (a week by default).
    vacuumed = table.vacuum(retention_hours=vacuum_hours, dry_run=False,
                            enforce_retention_duration=False)
    table.create_checkpoint()
    if table.metadata().configuration.get(OWN_LOG_CLEANUP) != "false":
        # delta-rs's writers drop expired log entries after each commit by default,
        # whatever a KPI step still reads: from now on only this does it.
        try:
            table.alter.set_table_properties({OWN_LOG_CLEANUP: "false"})
        except CommitFailedError as exc:
            logger.warning("%s lost a commit race (%s); the next run sets it", OWN_LOG_CLEANUP,
                           exc)
    # Log entries older than delta.logRetentionDuration (30 days by default), now that a
    # checkpoint holds their state; not while a KPI step still reads one of them (its
    # change feed would find no commit there), whose watermark is then that old.
    log_horizon = now - log_retention_seconds(table)
    if known_watermark and commit_times.get(needed_from, log_horizon) < log_horizon:
        log_cleanup = (f"skipped: version {needed_from}, after the KPI watermark, is older "
                       f"than delta.logRetentionDuration")
        logger.warning("log of %s not cleaned up: %s", table.table_uri, log_cleanup)
    else:
        table.cleanup_metadata()
        log_cleanup = "done"
    report = {"version_before": version_before, "version": table.version(),
              "files_before": files_before, "files": len(table.file_uris()),
              "compaction": compaction, "vacuumed": len(vacuumed),
              "vacuum_retention_hours": vacuum_hours, "log_cleanup": log_cleanup}
    if s3 is not None:
        remaining = commits(s3, *location)
        report |= {"log_entries_removed": len(commit_times.keys() - remaining.keys()),
                   "log_entries": len(remaining), "change_data_needed_from": needed_from,
                   "change_data_removed": remove_change_data(s3, table, horizon, needed_from,
                                                             remaining)}
    return report


def maintain(staging: Staging, retention_hours: int, *, s3=None,
             watermarks: Mapping[str, int] | None = None) -> dict[str, dict]:
    """maintain_table() on every table that exists, by table name.

    s3: a boto3 client on the tables' bucket, to count log entries and remove change data
    files (without it they stay). watermarks: the KPI step's (FilesStore.kpi_watermarks);
    without them no change data file a log entry names is removed, as a KPI step may still
    read any of them.
    """
    reports = {}
    for file_type in FILE_TYPES:
        table = staging.table(file_type)
        if table is None:
            continue
        started = time.monotonic()
        known = watermarks is not None
        reports[file_type.name] = {
            **maintain_table(table, retention_hours, s3,
                             watermarks.get(file_type.name) if known else None, known),
            "seconds": round(time.monotonic() - started, 3)}
        logger.info("table %s maintained: %s", file_type.name, reports[file_type.name])
    return reports


def maintain_files(files: Files) -> dict[str, dict]:
    """maintain() as a deployment runs it: its retention, its bucket, the KPI watermarks."""
    return maintain(files.staging, files.settings.files_vacuum_retention_hours, s3=files.s3,
                    watermarks=files.store.kpi_watermarks())


def sweep(files: Files, task_name: str, now_ms: int | None = None) -> list[str]:
    """Fail and announce every execution still running FILES_EXECUTION_TIMEOUT after its
    start, as task_name's doing; their ids."""
    timeout = files.settings.files_execution_timeout
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    swept = []
    for execution_id in files.store.running_since(now_ms - timeout * 1000):
        record = files.store.execution(execution_id)
        if record is None:  # expired: nothing left to fail
            files.store.forget_running(execution_id)
            continue
        if record.get("status") != "running":
            continue
        logger.error("execution %s still running %d s after its start: marked failed",
                     execution_id, (now_ms - record["started_at_ms"]) // 1000)
        files.fail(execution_id, task_name,
                   f"still running after FILES_EXECUTION_TIMEOUT ({timeout} s): a step was "
                   f"lost (its worker killed) or is stuck; its files stay in input/")
        swept.append(execution_id)
    return swept
