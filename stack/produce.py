"""`orders-produce`: send generated orders, or the lines of a file, to the orders queue."""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import click
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from app import sample, sqs
from app.settings import Settings, from_env_or_exit

# Tries per batch for the entries SQS refused; boto3 already retries failed calls.
ATTEMPTS = 3
RETRY_DELAY = 0.5


@dataclass
class BatchResult:
    """What became of one batch: the entries sent and the ones that never were."""

    sent: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    error: str | None = None
    # The endpoint itself failed (down, timing out, 5xx): later batches would too.
    fatal: bool = False


def send_batch(client, url: str, entries: list[sample.Sample],
               attempts: int = ATTEMPTS, delay: float = RETRY_DELAY) -> BatchResult:
    """Send up to ten entries with SendMessageBatch, retrying the ones SQS refused."""
    result, pending = BatchResult(), list(entries)
    for attempt in range(attempts):
        if attempt:
            time.sleep(delay * attempt)
        try:
            refused = {int(i) for i in sqs.send_bodies(client, url, [e.body for e in pending])}
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
            result.error = str(exc)
            if status >= 500:  # still failing after boto3's retries
                result.fatal = True
                break
            # A 4xx refuses the whole request, e.g. one body too long or with characters
            # SQS forbids: send one by one so only the bad entries fail.
            if len(pending) == 1:
                break
            for number, entry in enumerate(pending):
                single = send_batch(client, url, [entry], attempts, delay)
                result.sent += single.sent
                result.failed += single.failed
                result.error = single.error or result.error
                if single.fatal:
                    result.fatal = True
                    result.failed += pending[number + 1:]
                    break
            return result
        except BotoCoreError as exc:  # connection refused, timeouts, after boto3's retries
            result.error, result.fatal = str(exc), True
            break
        result.sent += [e for i, e in enumerate(pending) if i not in refused]
        pending = [e for i, e in enumerate(pending) if i in refused]
        if not pending:
            break
        result.error = f"SQS refused {len(pending)} entries (reasons logged above)"
    result.failed = pending
    return result


@dataclass
class Totals:
    """Kinds of the entries sent and failed, and the errors seen (with their batch counts)."""

    sent: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    # Entries not tried because the endpoint kept failing.
    skipped: int = 0


def send_all(client, url: str, entries: Iterable[sample.Sample], threads: int = 4,
             progress: tqdm | None = None) -> Totals:
    """Send entries in batches of ten from `threads` threads and count what happened.

    Only a few batches per thread are read ahead, so a generator of millions stays lazy.
    Once a batch fails for good on the endpoint itself, the remaining entries are skipped.
    """
    totals, stop = Totals(), threading.Event()
    running: dict = {}  # future -> its batch

    def settle(done):
        for future in done:
            batch = running.pop(future)
            if future.cancelled():
                totals.skipped += len(batch)
                continue
            result = future.result()
            totals.sent.update(e.kind for e in result.sent)
            totals.failed.update(e.kind for e in result.failed)
            if result.failed and result.error:
                totals.errors[result.error] += 1
            if result.fatal and result.failed:
                stop.set()
            if progress is not None:
                progress.update(len(result.sent) + len(result.failed))
        if stop.is_set():
            for future in running:
                future.cancel()  # only batches still queued; those being sent finish

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for batch in sqs.chunks(entries):
            if len(running) >= threads * 4:
                settle(wait(running, return_when=FIRST_COMPLETED).done)
            if stop.is_set():
                totals.skipped += len(batch)  # read on, to report how many were not sent
                continue
            running[pool.submit(send_batch, client, url, batch)] = batch
        settle(wait(running).done)
    return totals


def file_entries(lines: Iterable[str]) -> Iterator[sample.Sample]:
    """Each non-blank line as a body, sent as is (without its line break)."""
    for line in lines:
        body = line.rstrip("\r\n")
        if body.strip():
            yield sample.Sample(body, "line")


def resolve_queue(settings: Settings, queue: str | None, create: bool, client) -> str:
    """URL of the queue to send to: --queue (a name or a URL), else ORDERS_QUEUE(_URL)."""
    if queue and queue.startswith(("http://", "https://")):
        return queue
    if queue:
        settings = replace(settings, orders_queue=queue, orders_queue_url="")
    where = settings.sqs_endpoint_url or "AWS"
    try:
        if create:
            return sqs.ensure_queues(settings, client)[settings.orders_queue]
        return settings.orders_queue_url or sqs.queue_url(settings, settings.orders_queue, client)
    except ClientError as exc:
        if create or exc.response["Error"].get("Code") not in sqs.MISSING_QUEUE_CODES:
            raise click.ClickException(f"SQS at {where}: {exc}") from None
        raise click.ClickException(
            f"queue {settings.orders_queue!r} not found at {where}; create it with "
            f"--create-queue or python -m stack.init_queues") from None
    except BotoCoreError as exc:
        raise click.ClickException(f"SQS at {where}: {exc}") from None


share = click.FloatRange(0, 1)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--count", "-n", type=click.IntRange(min=0),
              help="Orders to generate (default 1000); not with --file.")
@click.option("--users", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Distinct user ids to draw from.")
@click.option("--products", type=click.IntRange(min=1), default=200, show_default=True,
              help="Distinct products, each with a fixed price.")
@click.option("--invalid-share", type=share, default=0.0, show_default=True,
              help="Fraction of bodies with one realistic flaw.")
@click.option("--duplicate-share", type=share, default=0.0, show_default=True,
              help="Fraction of bodies re-sending an earlier valid order.")
@click.option("--legacy-share", type=share, default=0.0, show_default=True,
              help='Fraction in the old shape {"user_id", "amount"}.')
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Spread order timestamps over the last DAYS days.")
@click.option("--seed", type=int, help="Random seed, for the same orders on every run.")
@click.option("--file", "source", type=click.File("r", encoding="utf-8"),
              help="Send each line of this JSONL file as is ('-' for stdin).")
@click.option("--queue", help="Queue name or URL [default: ORDERS_QUEUE_URL or ORDERS_QUEUE].")
@click.option("--create-queue", is_flag=True,
              help="Create the queue and its dead-letter queue first (idempotent).")
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Parallel sending threads.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def main(count, users, products, invalid_share, duplicate_share, legacy_share, days, seed,
         source, queue, create_queue, threads, quiet):
    """Send order events to the orders queue with SendMessageBatch.

    Settings (SQS_ENDPOINT_URL, AWS_REGION, ORDERS_QUEUE...) come from the environment.
    Exits with status 1 if any message could not be sent.
    """
    if source is not None and count is not None:
        raise click.UsageError("--count and --file exclude each other")
    settings = from_env_or_exit()
    if source is not None:
        entries, total = file_entries(source), None
    else:
        total = 1000 if count is None else count
        try:
            entries = sample.generate(total, users=users, products=products,
                                      invalid_share=invalid_share,
                                      duplicate_share=duplicate_share,
                                      legacy_share=legacy_share, seed=seed, days=days)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    client = sqs.client(settings)
    url = resolve_queue(settings, queue, create_queue, client)

    started = time.monotonic()
    with tqdm(total=total, unit="msg", disable=quiet or not sys.stdout.isatty()) as progress:
        totals = send_all(client, url, entries, threads, progress)
    elapsed = time.monotonic() - started

    for error, batches in totals.errors.most_common():
        click.echo(f"error in {batches} batch{'es' if batches > 1 else ''}: {error}", err=True)
    if totals.skipped:
        click.echo(f"stopped after the errors above: {totals.skipped} messages not tried",
                   err=True)
    sent = sum(totals.sent.values())
    failed = sum(totals.failed.values()) + totals.skipped
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(totals.sent.items()) if kind != "line")
    click.echo(f"sent {sent}, failed {failed} to {url} in {elapsed:.1f}s "
               f"({sent / elapsed if elapsed else 0:.0f} msg/s)"
               + (f"; sent {kinds}" if kinds else ""))
    sys.exit(1 if failed else 0)
