"""`celery -A tasks dlq ...` and `celery -A tasks rejected ...`: the orders that did not count."""
from __future__ import annotations

import json

import click

from app import sqs
from app.deadletters import DeadLetterQueue, PurgeInProgress
from app.display import printable
from app.rejections import NotRequeueable, requeue
from app.store import Store
from tasks.cli.output import (CommandGroup, app_settings, json_option, print_record,
                              print_rows)


def _dlq() -> DeadLetterQueue:
    return DeadLetterQueue(app_settings())


@click.group(cls=CommandGroup)
def dlq():
    """Inspect and redrive the orders dead-letter queue."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, help="At most this many messages.")
@json_option
def dlq_list(limit, as_json):
    """List the messages in the dead-letter queue (they stay there)."""
    rows = [letter.summary() for letter in _dlq().list(limit)]
    print_rows(rows, ["message_id", "task_id", "sent_at", "receive_count", "body"], as_json,
               "The dead-letter queue is empty.")


@dlq.command("show")
@click.argument("message_id")
@json_option
def dlq_show(message_id, as_json):
    """Show one message by message id, original id or task id."""
    letter = _dlq().show(message_id)
    print_record(letter and letter.summary(), as_json,
                 f"No message {message_id!r} in the dead-letter queue.")


@dlq.command("redrive")
@click.argument("ids", nargs=-1)
@click.option("--all", "redrive_all", is_flag=True, help="Redrive every message.")
@json_option
def dlq_redrive(ids, redrive_all, as_json):
    """Move messages back to the orders queue with their retry count reset."""
    if bool(ids) == redrive_all:
        raise click.UsageError("Give message/task ids or --all (not both).")
    moved = _dlq().redrive(None if redrive_all else ids)
    missing = sorted(set(ids) - {i for letter in moved
                                 for i in (letter.message_id, letter.original_id, letter.task_id)})
    if as_json:
        click.echo(json.dumps({"redriven": [l.message_id for l in moved], "not_found": missing}))
    else:
        click.echo(f"Redrove {len(moved)} message(s) to the orders queue.")
        for some_id in missing:
            click.echo(f"Not found in the dead-letter queue: {printable(some_id)}", err=True)
    if missing:
        raise SystemExit(1)


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(yes):
    """Delete every message in the dead-letter queue."""
    if not yes:
        click.confirm("Delete every message in the dead-letter queue?", abort=True)
    try:
        click.echo(f"Deleted {_dlq().purge()} message(s).")
    except PurgeInProgress as exc:
        raise click.ClickException(str(exc)) from None


@click.group(cls=CommandGroup)
def rejected():
    """Inspect and requeue orders rejected as invalid or conflicting."""


def _store() -> Store:
    return Store.from_settings(app_settings())


@rejected.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
@json_option
def rejected_list(limit, offset, as_json):
    """List rejected messages, newest first."""
    print_rows(_store().rejected(offset, limit),
               ["message_id", "order_id", "kind", "reasons", "body"], as_json,
               "Nothing was rejected.")


@rejected.command("show")
@click.argument("some_id")
@json_option
def rejected_show(some_id, as_json):
    """Show one rejected message by order id or message id."""
    print_record(_store().rejection(some_id), as_json,
                 f"No rejected order or message {some_id!r}.")


@rejected.command("requeue")
@click.argument("ids", nargs=-1, required=True)
def rejected_requeue(ids):
    """Send rejected orders' original bodies to the orders queue again."""
    settings = app_settings()
    store, client = Store.from_settings(settings), sqs.client(settings)
    unknown = []
    for some_id in ids:
        try:
            record = requeue(store, client, settings.orders_url, some_id)
        except NotRequeueable as exc:
            raise click.ClickException(f"Cannot requeue {exc}") from None
        if record is None:
            unknown.append(some_id)
        else:
            click.echo(f"Requeued {printable(record['message_id'])} "
                       f"(order {printable(record['order_id'] or '-')}).")
    for some_id in unknown:
        click.echo(f"No rejected order or message {some_id!r}.", err=True)
    if unknown:
        raise SystemExit(1)
