"""What the operator commands share: the app's settings, and records printed as tables or JSON."""
from __future__ import annotations

import json

import click
import redis
from botocore.exceptions import BotoCoreError, ClientError
from tabulate import tabulate

from app.display import printable
from app.settings import Settings

class CommandGroup(click.Group):
    """A group of operator commands: Redis or AWS failing under one of them (down, a queue
    missing, access denied) ends it with the service's error on one line, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis: {exc}") from None
        except (BotoCoreError, ClientError) as exc:
            raise click.ClickException(f"AWS: {exc}") from None


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def print_rows(rows: list[dict], columns: list[str], as_json: bool, empty: str):
    """Rows as JSON, or as a table of these columns; `empty` if there are none."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
    elif not rows:
        click.echo(empty)
    else:
        click.echo(tabulate([[cell(row.get(c)) for c in columns] for row in rows],
                            headers=columns))


def print_record(record: dict | None, as_json: bool, missing: str):
    """One record: indented JSON, or one 'field value' line per field; missing if None."""
    if record is None:
        raise click.ClickException(missing)
    if as_json:
        click.echo(json.dumps(record, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(tabulate([(printable(k), cell(v, 200)) for k, v in record.items()],
                            tablefmt="plain"))


def cell(value, width: int = 60) -> str:
    """A table cell: escaped (ids and bodies come from senders), cut at width."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = printable(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def app_settings() -> Settings:
    """The settings of the app that `celery -A tasks` loaded."""
    return click.get_current_context().obj.app.settings
