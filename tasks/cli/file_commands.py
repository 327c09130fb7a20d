"""`celery -A tasks files list | show <execution> | maintain | sweep`: the files executions'
result records, and the upkeep that celery beat also sends."""
from __future__ import annotations

import json

import click

from app.display import error_text, printable
from app.files.execution import Files
from app.store import FilesStore
from tasks.cli.output import (CommandGroup, app_settings, json_option, print_record,
                              print_rows)
from tasks.names import FILES_SWEEP


def _store() -> FilesStore:
    return FilesStore.from_url(app_settings().redis_url)


@click.group(cls=CommandGroup)
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


@files.command("maintain")
@json_option
def files_maintain(as_json):
    """Compact, vacuum and checkpoint every Delta table now, as files.maintain does."""
    from deltalake.exceptions import DeltaError  # loads deltalake and polars: only here

    from app.files import maintenance
    settings = app_settings()
    try:
        reports = maintenance.maintain_files(Files(settings))
    except (OSError, DeltaError) as exc:  # delta-rs tells S3's errors as OSError
        raise click.ClickException(
            f"Delta tables at s3://{settings.files_bucket}/staging/ "
            f"({settings.files_endpoint or 'AWS'}): {error_text(exc)}") from None
    rows = [{"table": name, **report} for name, report in reports.items()]
    print_rows(rows, ["table", "version", "files_before", "files", "vacuumed",
                      "change_data_removed", "log_entries_removed", "seconds"],
               as_json, "No table yet.")


@files.command("sweep")
@json_option
def files_sweep(as_json):
    """Fail and announce the executions still running after FILES_EXECUTION_TIMEOUT."""
    from app.files import maintenance
    swept = maintenance.sweep(Files(app_settings()), FILES_SWEEP)
    if as_json:
        click.echo(json.dumps(swept))
    else:
        click.echo(f"Failed {len(swept)} execution(s) that outlived FILES_EXECUTION_TIMEOUT.")
        for execution_id in swept:
            click.echo(f"  {printable(execution_id)}")
