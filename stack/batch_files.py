"""`orders-files`: upload CSV files to the bucket's input/, or write realistic sample files."""
from __future__ import annotations

import os
from pathlib import Path

import click
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from app import aws
from app.files.sample import write_sample
from app.settings import from_env_or_exit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Batch files of the pipeline: upload them to S3, or generate samples."""


@main.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
def upload(paths):
    """Upload files to s3://FILES_BUCKET/input/ (each upload is one S3 event)."""
    settings = from_env_or_exit()
    s3 = aws.s3_client(settings)
    total = sum(os.path.getsize(p) for p in paths)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="upload") as bar:
            for path in paths:
                bar.set_postfix_str(path.name)
                s3.upload_file(str(path), settings.files_bucket, aws.INPUT + path.name,
                               Callback=bar.update)
    except (BotoCoreError, ClientError) as exc:
        raise click.ClickException(
            f"S3 at {settings.files_endpoint or 'AWS'}, bucket {settings.files_bucket}: {exc}"
        ) from None
    click.echo(f"Uploaded {len(paths)} file(s) to s3://{settings.files_bucket}/{aws.INPUT}")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the files into (created if missing).")
@click.option("--orders", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--products", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Order dates spread over this many days from 2024-01-01.")
@click.option("--dirty-share", type=click.FloatRange(0, 1), default=0.02, show_default=True,
              help="Share of rows broken for each kind of cleaning rule.")
@click.option("--return-share", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of orders turned into returns by the *_returns.csv update files.")
@click.option("--seed", type=int, default=42, show_default=True)
def sample(out, orders, products, days, dirty_share, return_share, seed):
    """Write products, orders and order items files, and later returns updating them."""
    written = write_sample(out, orders=orders, products=products, days=days,
                           dirty_share=dirty_share, return_share=return_share, seed=seed)
    for name, rows in written.items():
        click.echo(f"{out / name}: {rows} rows")
