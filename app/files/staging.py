"""Delta Lake tables under staging/ (delta-rs, no JVM): upserts and pinned reads."""
from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from deltalake import DeltaTable, Field, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from app.files.cleaning import Cleaned, clean
from app.files.contract import FILE_TYPES, FileType
from app.settings import Settings

logger = logging.getLogger(__name__)

# A concurrent writer's commit may conflict with ours (same files rewritten): merge again
# on the new version. conditional_put=etag guarantees no commit is ever overwritten.
COMMIT_ATTEMPTS = 8
# Every commit records what it changed (the change data feed): the KPI step recomputes the
# dates of every change since the KPIs were last written, whichever execution made it.
CHANGE_DATA_FEED = {"delta.enableChangeDataFeed": "true"}
# Each staged row names the input/ key and the upload of it that wrote it last. An upload's
# order is S3's sequencer as fixed-width hexadecimal then the event time, so text order is
# upload order; null for an event without a sequencer (applied in commit order).
UPLOAD_KEY, UPLOAD_ORDER = "upload_key", "upload_order"
# A matched row is updated unless an upload of the same key with a greater order wrote it:
# two uploads of one key give the rows of the older then the newer, whichever commits first.
NEWER_OR_UNORDERED = (f'(s."{UPLOAD_ORDER}" IS NULL) OR (t."{UPLOAD_ORDER}" IS NULL) '
                      f'OR (t."{UPLOAD_KEY}" IS DISTINCT FROM s."{UPLOAD_KEY}") '
                      f'OR (s."{UPLOAD_ORDER}" >= t."{UPLOAD_ORDER}")')
# A newer upload of the same key with the row's values (X, then Y, then X again) names
# itself on the row, so that an older upload merged after it (Y) leaves the row alone; the
# same upload again (a retry) is no change and commits nothing.
NEWER_OF_THE_SAME_KEY = (f'(t."{UPLOAD_KEY}" = s."{UPLOAD_KEY}") '
                         f'AND (s."{UPLOAD_ORDER}" > t."{UPLOAD_ORDER}")')


def empty_frame(file_type: FileType) -> pl.DataFrame:
    """A staged table's schema as an empty frame (what cleaning produces from no rows)."""
    frame = pl.DataFrame({c: [] for c in file_type.columns},
                         schema={c: pl.String for c in file_type.columns})
    return clean(frame, file_type).frame


def upload_columns(upload_key: str | None, upload_order: str | None) -> list[pl.Expr]:
    """The columns naming the upload a staged row comes from."""
    return [pl.lit(upload_key, pl.String).alias(UPLOAD_KEY),
            pl.lit(upload_order, pl.String).alias(UPLOAD_ORDER)]


def spooled_batches(path: Path, rows: int) -> Iterator[pl.DataFrame]:
    """A Parquet file's rows in order, `rows` at a time (one empty batch when there are none)."""
    count = pl.scan_parquet(path).select(pl.len()).collect().item()
    for offset in range(0, max(count, 1), rows):
        yield pl.scan_parquet(path).slice(offset, rows).collect()


def _key_range(batch: pl.DataFrame, key: str) -> tuple[str, str] | None:
    """The batch's least and greatest key when they can be written as a SQL text literal
    as they are (no quote or backslash, no null key); None otherwise (it is merged)."""
    keys = batch.get_column(key)
    if batch.is_empty() or keys.dtype != pl.String or keys.null_count():
        return None
    low, high = keys.min(), keys.max()
    return None if any(c in text for text in (low, high) for c in "'\\") else (low, high)


def _files_meeting(table: DeltaTable, key: str, key_range: tuple[str, str]) -> int:
    """How many of the table's files may hold a key of the range: those whose key statistics
    meet it, and any without them. delta-rs writes a bound of each file's keys (a long text
    cut, its greatest raised), the ones its merges prune files by."""
    files = pl.DataFrame(table.get_add_actions(flatten=True))
    low, high = f"min.{key}", f"max.{key}"
    if files.is_empty() or low not in files.columns or high not in files.columns:
        return files.height
    return files.filter(pl.col(low).is_null() | pl.col(high).is_null()
                        | ((pl.col(low) <= key_range[1]) & (pl.col(high) >= key_range[0]))
                        ).height


def _insert(table: DeltaTable, batch: pl.DataFrame, key: str,
            key_range: tuple[str, str]) -> dict:
    """Write a batch of keys no file of the table holds, without a merge: its rows once, no
    change data (the feed reads a written file's rows as inserts). Written as a replacement
    of its key range, which holds no row at the table's version: delta-rs fails the commit
    if a concurrent one added a file meeting the range, and the caller looks again (a blind
    append would not fail; deltalake 1.6.6, checked by tests/app/test_files_staging.py)."""
    low, high = key_range
    write_deltalake(table, batch, mode="overwrite",
                    predicate=f"\"{key}\" >= '{low}' AND \"{key}\" <= '{high}'")
    return {"num_target_rows_inserted": batch.height, "num_target_rows_updated": 0,
            "num_target_rows_renamed": 0, "num_target_files_scanned": 0}


@dataclass(frozen=True)
class Staging:
    """The Delta tables of one bucket's staging/ prefix."""

    base_uri: str  # e.g. s3://orders-files/staging
    storage_options: dict
    batch_rows: int = Settings.files_merge_batch_rows  # rows merged per commit

    def uri(self, file_type: FileType) -> str:
        """The table's URI."""
        return f"{self.base_uri.rstrip('/')}/{file_type.table}"

    def table(self, file_type: FileType) -> DeltaTable | None:
        """The table at its latest version, or None before its first file."""
        try:
            return DeltaTable(self.uri(file_type), storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def scan(self, file_type: FileType, version: int | None) -> pl.LazyFrame:
        """The table at a version (None: no table yet, read as empty)."""
        if version is None:
            return empty_frame(file_type).lazy()
        return pl.scan_delta(self.uri(file_type), version=version,
                             storage_options=self.storage_options)

    def versions(self) -> dict[str, int | None]:
        """Current version of every table (None where there is none yet)."""
        versions = {}
        for file_type in FILE_TYPES:
            table = self.table(file_type)
            versions[file_type.name] = table.version() if table else None
        return versions

    def upsert(self, file_type: FileType, rows: Cleaned | pl.DataFrame | pl.LazyFrame,
               upload_key: str | None = None, upload_order: str | None = None) -> dict:
        """Merge cleaned rows on the key: changed rows updated in full, new ones inserted;
        the merge's counts summed over its commits. rows: a file's Cleaned rows or a frame,
        named after the upload given.

        The rows are merged a batch at a time, one commit each, read from a Parquet spool,
        so memory is bounded by a batch, not by the file; a batch never shares a key with
        another (cleaning kept the last row of each). A Cleaned file's batches are the
        ranges of keys cleaning split it into (about the batch_rows it was given each), so
        each commit reads only the table's files whose key range meets its own (delta-rs
        prunes the target by the batch's key range) and writes files of a narrow range; a
        frame is spooled, then merged batch_rows at a time in file order. Rows equal to the
        staged ones are left alone: re-uploading a file, or a retry after some of its
        batches committed, commits nothing for what is there already; a row a newer upload
        of the same key wrote is left too (NEWER_OR_UNORDERED).
        """
        if isinstance(rows, Cleaned):
            return self._commit_batches(file_type, rows.batches(), upload_key, upload_order)
        with tempfile.TemporaryDirectory(prefix="staging-") as scratch:
            path = Path(scratch) / "rows.parquet"
            rows.lazy().sink_parquet(path)
            return self._commit_batches(file_type, spooled_batches(path, self.batch_rows),
                                        upload_key, upload_order)

    def _commit_batches(self, file_type: FileType, batches: Iterator[pl.DataFrame],
                        upload_key: str | None, upload_order: str | None) -> dict:
        """Write or merge each batch, named after its upload, one commit each; the counts summed."""
        totals: dict[str, int] = {}
        # No rows still gives one empty batch: it creates the table (and writes no rows).
        for batch in batches:
            batch = batch.with_columns(upload_columns(upload_key, upload_order))
            counts = self._commit_batch(file_type, batch)
            # Not held while the next batch is read: one batch in memory at a time.
            del batch
            for name, value in counts.items():
                if isinstance(value, int):
                    totals[name] = totals.get(name, 0) + value
        return totals

    def _commit_batch(self, file_type: FileType, batch: pl.DataFrame) -> dict:
        """One batch's commit: a write of its rows when no file of the table may hold its
        keys (as for a first load), a merge otherwise; tried again on a new version when a
        concurrent writer's commit conflicts with it. Its counts: num_target_rows_updated are
        the rows whose values changed, num_target_rows_renamed those a newer upload of their
        key left as they were (NEWER_OF_THE_SAME_KEY)."""
        values = [c for c in batch.columns if c not in (UPLOAD_KEY, UPLOAD_ORDER)]
        # The upload columns are no change: the same upload again commits nothing.
        changed = " OR ".join(f'(t."{c}" IS DISTINCT FROM s."{c}")' for c in values)
        update = f"({NEWER_OR_UNORDERED}) AND ({changed})"
        rename = f"({NEWER_OF_THE_SAME_KEY}) AND NOT ({changed})"
        started = time.monotonic()
        key_range = _key_range(batch, file_type.key)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                table = self._create_if_missing(file_type, batch)
                if key_range and not _files_meeting(table, file_type.key, key_range):
                    metrics = _insert(table, batch, file_type.key, key_range)
                    logger.info("inserted %d rows into %s v%d in %.2f s (no file held their "
                                "keys)", batch.height, file_type.name, table.version(),
                                time.monotonic() - started)
                    return metrics
                # streamed_exec=False: the batch is small and in memory, and its statistics
                # (partition values, key range) prune the target files the merge reads.
                on = f't."{file_type.key}" = s."{file_type.key}"'
                metrics = (table.merge(batch, predicate=on, source_alias="s", target_alias="t",
                                       streamed_exec=False)
                           .when_matched_update_all(predicate=update)
                           .when_matched_update({UPLOAD_KEY: f's."{UPLOAD_KEY}"',
                                                 UPLOAD_ORDER: f's."{UPLOAD_ORDER}"'},
                                                predicate=rename)
                           .when_not_matched_insert_all()
                           .execute())
                break
            except CommitFailedError:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                logger.info("commit to %s conflicted (try %d); trying again", file_type.name,
                            attempt)
                time.sleep(random.uniform(0.05, 0.2) * attempt)
        # Per commit, so that a log shows whether a commit's time grows with the table.
        logger.info("merged %d rows into %s v%d in %.2f s (scan %s ms, rewrite %s ms, %s "
                    "files scanned, %s skipped, %s added)", batch.height, file_type.name,
                    table.version(), time.monotonic() - started, metrics.get("scan_time_ms"),
                    metrics.get("rewrite_time_ms"), metrics.get("num_target_files_scanned"),
                    metrics.get("num_target_files_skipped_during_scan"),
                    metrics.get("num_target_files_added"))
        updated, renamed = metrics.get("num_target_rows_updated", 0), 0
        if updated and batch.get_column(UPLOAD_ORDER).null_count() < batch.height:
            renamed = self._renamed(file_type, table.version(), updated, values)
        return {**metrics, "num_target_rows_updated": updated - renamed,
                "num_target_rows_renamed": renamed}

    def _renamed(self, file_type: FileType, version: int, updated: int,
                 values: list[str]) -> int:
        """Of the rows a commit updated, those whose values it left as they were: both images
        of such a row are one distinct row of values, of a changed row two."""
        images = self.changes(file_type, version, version, [*values, "_change_type"])
        if images is None:
            return 0  # cannot tell: every update counted as a change
        distinct = (images.filter(pl.col("_change_type").str.starts_with("update_"))
                    .select(values).unique().height)
        return 2 * updated - distinct

    def _create_if_missing(self, file_type: FileType, frame: pl.DataFrame) -> DeltaTable:
        table = self.table(file_type)
        if table is None:
            try:
                # mode="ignore": another worker creating it at the same time is fine.
                write_deltalake(self.uri(file_type), frame.head(0), mode="ignore",
                                partition_by=list(file_type.partition_by),
                                configuration=CHANGE_DATA_FEED,
                                storage_options=self.storage_options)
            except CommitFailedError:
                pass  # the other writer's version 0 won; it has the same schema
            table = DeltaTable(self.uri(file_type), storage_options=self.storage_options)
        names = {f.name for f in table.schema().fields}
        missing = [f for f in (UPLOAD_KEY, UPLOAD_ORDER) if f not in names]
        if missing:
            # A table staged before rows named their upload: its rows read as unordered. A
            # concurrent writer's commit fails this one, and the merge's retry looks again.
            table.alter.add_columns([Field(f, "string", nullable=True) for f in missing])
            table = DeltaTable(self.uri(file_type), storage_options=self.storage_options)
        if table.metadata().configuration.get("delta.enableChangeDataFeed") != "true":
            # A table made before the feed: from now on (the KPI step recomputes every date
            # once, as it cannot read the changes before).
            table.alter.set_table_properties(CHANGE_DATA_FEED, raise_if_not_exists=False)
            table = DeltaTable(self.uri(file_type), storage_options=self.storage_options)
        return table

    def changes(self, file_type: FileType, start: int, end: int,
                columns: list[str]) -> pl.DataFrame | None:
        """Rows inserted and both images of rows updated by the commits start..end (None:
        a commit of the range did not record its changes)."""
        table = DeltaTable(self.uri(file_type), storage_options=self.storage_options,
                           version=end)
        try:
            return pl.DataFrame(table.load_cdf(starting_version=start, ending_version=end,
                                               columns=columns))
        except DeltaError as exc:
            logger.warning("no change data feed for %s %d..%d: %s", file_type.name, start, end,
                           exc)
            return None
