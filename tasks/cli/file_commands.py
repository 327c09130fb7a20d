"""`celery -A tasks files list | show <execution>`: the files executions' result records."""
from __future__ import annotations

import click

from app.store import FilesStore
from tasks.cli.output import app_settings, json_option, print_record, print_rows


def _store() -> FilesStore:
    return FilesStore.from_url(app_settings().redis_url)


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
    print_rows(rows, ["execution_id", "status", "started_at", "files", "invalid", "rows_kept",
               "dates"], as_json, "No execution yet.")


@files.command("show")
@click.argument("execution_id")
@json_option
def files_show(execution_id, as_json):
    """Show one execution's record: files, rows dropped per rule, dates, timings."""
    print_record(_store().execution(execution_id), as_json, f"No execution {execution_id!r}.")
