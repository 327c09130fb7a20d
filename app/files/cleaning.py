"""Reading and cleaning one CSV file with polars: every rule is data, applied in one plan.

A rule is a name, the file type it applies to and a polars predicate that is true for the
rows it drops. All rules run as columns of the same lazy plan; each dropped row is counted
under the first rule that drops it, so the data-quality report, the docs and the tests
read the one RULES list. The judged rows go to a Parquet spool, never held whole: a file's
staged rows are marked one bit each and read back a range of keys at a time (`clean`).
"""
from __future__ import annotations

import codecs
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from app.files.contract import FileType, ORDER_ITEMS, ORDERS, PRODUCTS
from app.settings import Settings

UNKNOWN = "Unknown"
MONEY_COLUMNS = {"cost", "retail_price", "sale_price"}
TIMESTAMP_COLUMNS = {"created_at", "returned_at", "shipped_at", "delivered_at"}
INTEGER_COLUMNS = {"num_of_item"}
# Rows that share a key within one file: the last one wins.
DUPLICATE_KEY = "duplicate_key"
# A judged row's column naming the rule that drops it (null: kept by every rule).
DROPPED_BY = "_dropped_by"
# The spool's row number and a key's part, while finding the last row of each key.
ROW, PART = "_row", "_part"
# The parts' bounds are quantiles of a sample of about this many keys a part (all the keys
# of a smaller file): a part holds within a few percent of its share of the keys.
SAMPLE_KEYS_PER_PART = 4096
# A plain decimal: optional sign, up to 15 whole digits, any fraction (rounded half up).
_MONEY = r"^([+-]?)(\d{1,15})(?:\.(\d*))?$"
# ISO 8601 with a 'T' or a space, optional fraction, optional offset (none means UTC).
_WITH_OFFSET = ("%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z")
_WITHOUT_OFFSET = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M")


class InvalidFile(Exception):
    """The file cannot be staged at all (encoding, CSV shape, header); reasons say why."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Rule:
    """One cleaning rule: rows of file_type for which `drops` is true are dropped."""

    name: str
    file_type: str
    description: str
    drops: pl.Expr = field(compare=False, repr=False)


def _not_positive(column: str) -> pl.Expr:
    # Parsed money is null when the text was not a number.
    return pl.col(f"{column}_cents").is_null() | (pl.col(f"{column}_cents") <= 0)


RULES: tuple[Rule, ...] = (
    Rule("missing_key", PRODUCTS.name, "empty id", pl.col("id").is_null()),
    Rule("cost_not_positive", PRODUCTS.name, "cost <= 0 or unparsable", _not_positive("cost")),
    Rule("retail_price_not_positive", PRODUCTS.name, "retail_price <= 0 or unparsable",
         _not_positive("retail_price")),
    Rule("missing_key", ORDERS.name, "empty order_id", pl.col("order_id").is_null()),
    Rule("created_at_unparsable", ORDERS.name, "created_at empty or not ISO 8601",
         pl.col("created_at").is_null()),
    Rule("num_of_item_not_positive", ORDERS.name, "num_of_item <= 0 or unparsable",
         pl.col("num_of_item").is_null() | (pl.col("num_of_item") <= 0)),
    Rule("missing_key", ORDER_ITEMS.name, "empty id", pl.col("id").is_null()),
    Rule("missing_product_id", ORDER_ITEMS.name, "empty product_id",
         pl.col("product_id").is_null()),
    Rule("sale_price_not_positive", ORDER_ITEMS.name, "sale_price <= 0 or unparsable",
         _not_positive("sale_price")),
    # Not in the seed: the item's table is partitioned by created_at's year and month.
    Rule("created_at_unparsable", ORDER_ITEMS.name, "created_at empty or not ISO 8601",
         pl.col("created_at").is_null()),
)


def rules_for(file_type: FileType) -> list[Rule]:
    """The rules of one file type, in the order they are attributed."""
    return [rule for rule in RULES if rule.file_type == file_type.name]


# Files are checked and parsed in slices of this size, never read whole.
CHUNK_BYTES = 1 << 20
# polars' streaming CSV source (checked with polars 2.1.0) reads ahead up to
# POLARS_CSV_CHUNK_PREFETCH_LIMIT chunks of POLARS_CSV_CHUNK_SIZE bytes (32 MiB by default),
# but never more than the file has: its memory grew with the file (cleaning 10 M rows
# peaked at twice the 1 M rows' peak). Chunks of this size keep it flat, as fast.
POLARS_CSV_CHUNK_BYTES = 4_000_000


def _check_text(source: bytes | Path) -> None:
    """InvalidFile unless the file is UTF-8 (a BOM allowed) with more than whitespace."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    blank, offset = True, 0
    handle = open(source, "rb") if isinstance(source, (str, Path)) else None
    try:
        view = memoryview(source) if handle is None else None
        while True:
            chunk = (handle.read(CHUNK_BYTES) if handle is not None
                     else bytes(view[offset:offset + CHUNK_BYTES]))
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise InvalidFile([f"not UTF-8: byte {offset - pending + exc.start} "
                                   f"({exc.reason})"]) from None
            blank = blank and not text.strip()
            if not chunk:
                break
            offset += len(chunk)
    finally:
        if handle is not None:
            handle.close()
    if blank:
        raise InvalidFile(["empty file: a header row is required"])


def _not_csv(exc: Exception) -> InvalidFile:
    return InvalidFile([f"not a CSV file: {str(exc).splitlines()[0]}"])


def scan_csv(source: bytes | Path | str, file_type: FileType) -> pl.LazyFrame:
    """A UTF-8 CSV file (a path, read in slices) or bytes as a lazy frame of all-text
    columns; InvalidFile if its encoding or header makes that impossible."""
    _check_text(source)
    try:
        frame = pl.scan_csv(source, infer_schema=False, has_header=True)
        names = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise _not_csv(exc) from None
    frame = frame.rename({name: name.strip() for name in names})
    missing = [c for c in file_type.columns if c not in {n.strip() for n in names}]
    if missing:
        try:  # a file that is not CSV at all says so first
            frame.select(pl.all().null_count()).collect(engine="streaming")
        except (pl.exceptions.PolarsError, ValueError) as exc:
            raise _not_csv(exc) from None
        raise InvalidFile([f"missing required column(s): {', '.join(missing)}"])
    return frame.select(file_type.columns)  # extra columns are ignored


def read_csv(data: bytes, file_type: FileType) -> pl.DataFrame:
    """Parse UTF-8 CSV bytes into all-text columns; InvalidFile if that is impossible."""
    try:
        return scan_csv(data, file_type).collect()
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise _not_csv(exc) from None


def _trimmed(column: str) -> pl.Expr:
    text = pl.col(column).str.strip_chars()
    return pl.when(text == "").then(None).otherwise(text).alias(column)


def money_cents(column: str) -> pl.Expr:
    """Decimal text to integer cents, half up; null when it is not a plain number."""
    text = pl.col(column)
    # The pattern only checks (capture groups cost several times as much); the parts are
    # then split at the dot.
    parts = text.str.strip_chars_start("+-").str.split_exact(".", 1)
    fraction = (parts.struct.field("field_1").fill_null("") + "000").str.slice(0, 3).cast(
        pl.Int64, strict=False)
    cents = (parts.struct.field("field_0").cast(pl.Int64, strict=False) * 100 + fraction // 10
             + (fraction % 10 >= 5).cast(pl.Int64))
    # A sign factor, as cents written twice (negated and not) would be computed twice.
    sign = pl.when(text.str.starts_with("-")).then(pl.lit(-1, pl.Int64)).otherwise(1)
    return pl.when(text.str.contains(_MONEY)).then(cents * sign).alias(f"{column}_cents")


def _timestamp_parsers() -> list:
    """ISO 8601 parsers of text with a 'Z' already spelt +00:00, in the order they are tried."""
    parsers = [lambda t, f=f: t.str.to_datetime(f, strict=False, time_unit="us",
                                                  time_zone="UTC") for f in _WITH_OFFSET]
    parsers += [lambda t, f=f: t.str.to_datetime(f, strict=False, time_unit="us")
                .dt.replace_time_zone("UTC") for f in _WITHOUT_OFFSET]
    parsers.append(lambda t: pl.when(t.str.contains(r"^\d{4}-\d{2}-\d{2}$")).then(
        (t + "T00:00:00").str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False, time_unit="us")
        .dt.replace_time_zone("UTC")))
    return parsers


def with_timestamps_utc(frame: pl.LazyFrame, columns: list[str]) -> pl.LazyFrame:
    """ISO 8601 text columns to UTC timestamps (no offset means UTC); null when unparsable.

    The first format that parses a text wins. Each later format is given only the texts no
    earlier one parsed (the others as nulls, which cost nothing), so a column written in
    one format is parsed about once rather than once per format; each step is a column of
    its own, as an expression nesting the steps would grow twofold per format.
    """
    if not columns:
        return frame
    parsed = {column: f"_{column}_utc" for column in columns}
    parsers = _timestamp_parsers()
    frame = frame.with_columns(pl.col(c).str.replace(r"[Zz]$", "+00:00") for c in columns)
    frame = frame.with_columns(parsers[0](pl.col(c)).alias(parsed[c]) for c in columns)
    for parser in parsers[1:]:
        frame = frame.with_columns(
            pl.coalesce(pl.col(p), parser(pl.when(pl.col(p).is_null()).then(pl.col(c))))
            .alias(p) for c, p in parsed.items())
    return frame.with_columns(pl.col(p).alias(c) for c, p in parsed.items()).drop(
        list(parsed.values()))


def _typed(file_type: FileType) -> list[pl.Expr]:
    exprs = []
    for column in file_type.columns:
        if column in MONEY_COLUMNS:
            exprs.append(money_cents(column))
        elif column in INTEGER_COLUMNS:
            exprs.append(pl.col(column).cast(pl.Int64, strict=False))
        elif column == "status":
            exprs.append(pl.col(column).str.to_lowercase())
        elif file_type is PRODUCTS and column in ("category", "department"):
            exprs.append(pl.col(column).fill_null(UNKNOWN))
        else:  # text, and the timestamps typed before (with_timestamps_utc)
            exprs.append(pl.col(column))
    return exprs


def typed(frame: pl.LazyFrame, file_type: FileType) -> pl.LazyFrame:
    """Trimmed all-text columns of file_type to their types: money in cents, timestamps in
    UTC, integers, lower-case status."""
    timestamps = [c for c in file_type.columns if c in TIMESTAMP_COLUMNS]
    return with_timestamps_utc(frame, timestamps).select(_typed(file_type))


def judged(frame: pl.DataFrame | pl.LazyFrame, file_type: FileType) -> pl.LazyFrame:
    """All-text columns trimmed and typed, each row with the first rule that drops it
    (DROPPED_BY, null for a row every rule keeps), as one lazy plan."""
    # The first rule that drops a row names why it was dropped.
    reason = pl.coalesce([pl.when(rule.drops).then(pl.lit(rule.name))
                          for rule in rules_for(file_type)]).alias(DROPPED_BY)
    return (frame.lazy()
            .with_columns(_trimmed(c) for c in file_type.columns)
            .pipe(typed, file_type)
            .with_columns(reason))


def as_staged(rows: pl.DataFrame, file_type: FileType) -> pl.DataFrame:
    """Judged rows as the table stages them: without DROPPED_BY, with its partition columns."""
    rows = rows.drop(DROPPED_BY)
    if "year" in file_type.partition_by:
        rows = rows.with_columns(year=pl.col("created_at").dt.year().cast(pl.Int32),
                                 month=pl.col("created_at").dt.month().cast(pl.Int32))
    return rows


@dataclass
class Cleaned:
    """A cleaned file: its judged rows spooled to Parquet, which of them are staged (one bit
    per row read), its kept rows by range of keys, and its data-quality report."""

    path: Path  # every row read, in file order, typed, with DROPPED_BY
    file_type: FileType
    staged: pl.Series  # Boolean per row read: kept by every rule and its key's last row
    dropped: dict[str, int]
    # The kept rows with their ROW and PART (their range of keys) when there is more than
    # one range (one range is read from the spool itself), and the ranges' bounds.
    parts: Path | None = None
    bounds: list[str] = field(default_factory=list)
    # The spool's directory when clean made it (removed with this object).
    scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def rows_read(self) -> int:
        """Rows of the file (its header aside)."""
        return self.staged.len()

    @property
    def rows_kept(self) -> int:
        """Rows left after every rule and the deduplication."""
        return int(self.staged.sum() or 0)

    def batches(self) -> Iterator[pl.DataFrame]:
        """The staged rows a range of keys at a time, ascending in text order (one empty
        batch when there are none), each of about the batch_rows clean was given: one range
        held at a time."""
        emitted = False
        for part in range(len(self.bounds) + 1 if self.rows_kept else 0):
            rows = self.part(part).collect()
            rows = rows.filter(self.staged.gather(rows.get_column(ROW)))
            if rows.height:
                emitted = True
                rows = as_staged(rows.drop(ROW, PART), self.file_type)
                yield rows
            # Not held while the next range is read: one range in memory at a time.
            del rows
        if not emitted:
            yield as_staged(pl.read_parquet(self.path, n_rows=0), self.file_type)

    def part(self, number: int) -> pl.LazyFrame:
        """The kept rows (every row of each key, with ROW and PART) of one range of keys, in
        file order."""
        if self.parts is None:
            return (pl.scan_parquet(self.path).with_row_index(ROW)
                    .filter(pl.col(DROPPED_BY).is_null())
                    .with_columns(pl.lit(number, pl.UInt32).alias(PART)))
        return pl.scan_parquet(self.parts / "*.parquet").filter(pl.col(PART) == number)

    @property
    def frame(self) -> pl.DataFrame:
        """Every staged row at once (for small files and tests: it holds them all)."""
        return as_staged(pl.read_parquet(self.path).filter(self.staged), self.file_type)


def clean(frame: pl.DataFrame | pl.LazyFrame, file_type: FileType,
          directory: Path | None = None,
          batch_rows: int = Settings.files_merge_batch_rows) -> Cleaned:
    """Apply the type's rules in one streaming plan into a Parquet spool in directory (a
    temporary one by default); report drops per rule; split the kept rows into ranges of
    keys of about batch_rows keys each; mark the last row of each key.

    Memory is bounded by batch_rows rows, not by the file, but for the one bit per row read
    that marks the staged rows. A lazy frame from scan_csv is parsed slice by slice.
    """
    scratch = None
    if directory is None:
        scratch = tempfile.TemporaryDirectory(prefix="cleaned-")
        directory = Path(scratch.name)
    else:  # its own directory: a second file cleaned beside it keeps its spool
        directory = Path(tempfile.mkdtemp(prefix="cleaned-", dir=directory))
    path = directory / "judged.parquet"
    # Read by polars when the scan starts (an environment variable, as polars has no option).
    os.environ["POLARS_CSV_CHUNK_SIZE"] = str(POLARS_CSV_CHUNK_BYTES)
    try:
        judged(frame, file_type).sink_parquet(path)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise _not_csv(exc) from None  # a malformed row, met while parsing
    rules = rules_for(file_type)
    dropped = {rule.name: 0 for rule in rules}
    rows_read = kept = 0
    for name, count in (pl.scan_parquet(path).group_by(DROPPED_BY).len()
                        .collect(engine="streaming").iter_rows()):
        rows_read += count
        if name is None:
            kept = count
        else:
            dropped[name] = count
    cleaned = Cleaned(path, file_type, pl.repeat(False, rows_read, dtype=pl.Boolean,
                                                 eager=True).alias("staged"),
                      dropped, scratch=scratch)
    if kept:
        cleaned.bounds = _key_bounds(path, file_type.key, kept, batch_rows)
        if cleaned.bounds:
            cleaned.parts = directory / "parts"
            _split_by_key_range(cleaned, batch_rows)
        _mark_last_of_each_key(cleaned)
    dropped[DUPLICATE_KEY] = kept - cleaned.rows_kept
    return cleaned


def _key_bounds(path: Path, key: str, kept: int, batch_rows: int) -> list[str]:
    """The keys that split the kept rows' keys into ranges of about batch_rows keys each, in
    text order (the order Delta's file statistics compare keys in), ascending: a key's part
    is how many bounds are not above it.

    The bounds are quantiles of a sample of the distinct keys: those whose hash is a multiple
    of `every`, so that it holds about SAMPLE_KEYS_PER_PART keys a part (every key of a
    smaller file), whatever the file's size.
    """
    parts = -(-kept // batch_rows)
    if parts == 1:
        return []
    every = max(1, kept // (parts * SAMPLE_KEYS_PER_PART))
    keys = pl.scan_parquet(path).filter(pl.col(DROPPED_BY).is_null()).select(key)
    if every > 1:
        keys = keys.filter(pl.col(key).hash() % every == 0)
    sample = keys.unique().sort(key).collect(engine="streaming").get_column(key)
    # Distinct keys, not rows: a key's duplicates are one staged row.
    parts = max(1, min(parts, -(-sample.len() * every // batch_rows)))
    return sorted({sample[i * sample.len() // parts] for i in range(1, parts)})


def _split_by_key_range(cleaned: Cleaned, batch_rows: int) -> None:
    """Write the kept rows with their ROW and PART, a slice of batch_rows rows at a time,
    each slice sorted by part, so that reading one range reads about its own row groups."""
    parts = len(cleaned.bounds) + 1
    key = cleaned.file_type.key
    bounds = pl.lit(pl.Series(cleaned.bounds, dtype=pl.String))
    cleaned.parts.mkdir()
    for number, offset in enumerate(range(0, cleaned.rows_read, batch_rows)):
        rows = (pl.scan_parquet(cleaned.path).slice(offset, batch_rows)
                .with_row_index(ROW, offset=offset)
                .filter(pl.col(DROPPED_BY).is_null())
                .with_columns(bounds.search_sorted(pl.col(key), side="right").alias(PART))
                .sort(PART, maintain_order=True).collect())
        rows.write_parquet(cleaned.parts / f"{number:08d}.parquet", statistics=True,
                           row_group_size=max(1, -(-batch_rows // parts)))


def _mark_last_of_each_key(cleaned: Cleaned) -> None:
    """Mark, per row read, whether every rule kept it and no later kept row has its key
    ("the last row of a key wins, in file order"), a range of keys at a time."""
    key = cleaned.file_type.key
    for part in range(len(cleaned.bounds) + 1):
        last = (cleaned.part(part).group_by(key).agg(pl.col(ROW).max())
                .collect(engine="streaming"))
        cleaned.staged.scatter(last.get_column(ROW), True)
