"""Upkeep of the files path: the Delta tables' small files and log, and stuck executions.

Every merge adds files to a table and every commit a log entry; nothing else removes them.
maintain() compacts each table (optimize.compact), vacuums the files no version newer than
the retention needs, and checkpoints the log (delta-rs docs "Small file compaction",
"Vacuum"). The retention is FILES_VACUUM_RETENTION_HOURS, which settings keep longer than
FILES_EXECUTION_TIMEOUT: an execution reads the tables at the versions it pinned, and the
files of those versions are still there when it reads them.

sweep() fails the executions that outlived FILES_EXECUTION_TIMEOUT (a step killed with no
error callback left them running), with their failure notification.
"""
from __future__ import annotations

import logging
import time

from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from app.files.contract import FILE_TYPES
from app.files.execution import Files
from app.files.staging import Staging

logger = logging.getLogger(__name__)

def maintain_table(table: DeltaTable, retention_hours: int) -> dict:
    """Compact, vacuum and checkpoint one table; what was done, file counts before and after."""
    files_before, version_before = len(table.file_uris()), table.version()
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
    # Our own retention check (settings) replaces delta-rs's, which would refuse anything
    # below the table's delta.deletedFileRetentionDuration (a week by default).
    vacuumed = table.vacuum(retention_hours=retention_hours, dry_run=False,
                            enforce_retention_duration=False)
    table.create_checkpoint()
    # Log entries older than delta.logRetentionDuration (30 days by default), now that a
    # checkpoint holds their state.
    table.cleanup_metadata()
    return {"version_before": version_before, "version": table.version(),
            "files_before": files_before, "files": len(table.file_uris()),
            "compaction": compaction, "vacuumed": len(vacuumed)}


def maintain(staging: Staging, retention_hours: int) -> dict[str, dict]:
    """maintain_table() on every table that exists, by table name."""
    reports = {}
    for file_type in FILE_TYPES:
        table = staging.table(file_type)
        if table is None:
            continue
        started = time.monotonic()
        reports[file_type.name] = {**maintain_table(table, retention_hours),
                                   "seconds": round(time.monotonic() - started, 3)}
        logger.info("table %s maintained: %s", file_type.name, reports[file_type.name])
    return reports


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
