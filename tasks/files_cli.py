"""`celery -A tasks files list | show <execution>`: the files executions' result records."""
from __future__ import annotations

import click

from app.settings import from_env
from app.store import FilesStore
from tasks.cli import _emit, _show, json_option


def _store() -> FilesStore:
    return FilesStore.from_url(from_env().redis_url)


@click.group()
def files():
    """Inspect executions of the batch files path."""


@files.command("list")
@click.option("--limit", default=20, show_default=True, help="At most this many, newest first.")
@json_option
def files_list(limit, as_json):
    """List the latest executions."""
    rows = [{**r, "files": len(r.get("files", [])), "invalid": len(r.get("invalid_files", []))}
            for r in _store().executions(limit)]
    _emit(rows, ["execution_id", "status", "started_at", "files", "invalid", "rows_kept",
                 "dates"], as_json, "No execution yet.")


@files.command("show")
@click.argument("execution_id")
@json_option
def files_show(execution_id, as_json):
    """Show one execution's record: files, rows dropped per rule, dates, timings."""
    record = _store().execution(execution_id)
    if record is None:
        raise click.ClickException(f"No execution {execution_id!r}.")
    _show(record, as_json)
