"""Every key name of the aggregates' Redis, built here and nowhere else.

One layout on a standalone Redis and on a Redis Cluster. Every key carries a hash tag, and
each script call touches the keys of one tag only, so a cluster can route it:

- ``{o:<order_id>}``, the claim: ``order:{o:<id>}`` holds the fingerprint of the order
  counted under that id, for DEDUP_WINDOW_DAYS.
- ``{u:<user_id>}``, the user part: the user hash ``user:{u:<id>}``, the user's days
  ``user-days:{u:<id>}`` and ``applied:{u:<id>}``, the orders this part applied.
- ``{s<k>}``, k = crc32(user_id) mod REDIS_SHARDS, the shard part: the shard's share of the
  global, day and month totals, day customers, top users (all-time, per day, per month),
  the counted/corrected counters, corrections and ``applied:users:{s<k>}``. A user's orders
  all go to one shard, so per-shard rankings and distinct counts are disjoint: sums and
  merges over the shards are exact.
- ``{s<j>}``, j = crc32(product_id) mod REDIS_SHARDS, a product part: the product hashes,
  the product rankings (all-time, per day) and ``applied:products:{s<j>}``.
- ``{p}``, the bookkeeping: rejection records, their index, entries and tally (the caps),
  the rejected, conflict and duplicate counters, rejections by field, the lag.
- ``{files}``, the batch files path (app/files): KPI tables and execution records.
"""
from __future__ import annotations

import hashlib
import zlib
from urllib.parse import quote

# The bookkeeping slot's keys.
BOOKKEEPING_TAG = "{p}"
OUTCOMES_KEY = f"pipeline:outcomes:{BOOKKEEPING_TAG}"
REJECTED_INDEX = f"rejected:{BOOKKEEPING_TAG}"
# Per indexed rejection: [bytes, record key, order-id pointer key or ""], what dropping it
# under REJECTED_MAX_RECORDS / REJECTED_MAX_BYTES needs (includes/book.lua).
REJECTED_ENTRIES = f"rejected-entries:{BOOKKEEPING_TAG}"
# The rejected store's running figures: bytes (of the indexed records), dropped (by the caps).
REJECTED_TALLY = f"rejected-store:{BOOKKEEPING_TAG}"
REJECTED_BY_FIELD = f"pipeline:rejected-by-field:{BOOKKEEPING_TAG}"
# When the last batch was applied and when its oldest message had been sent (ms).
LAG_KEY = f"pipeline:lag:{BOOKKEEPING_TAG}"
TASK_EVENTS_KEY = "pipeline:task-events"
# What a worker paused by a store refusing writes writes to learn that it takes them again.
WRITE_PROBE_KEY = "pipeline:write-probe"

# Every key of the files path shares the {files} hash tag: write_kpis.lua touches several
# at once, which a cluster runs only within one slot (the KPI tables are small).
FILES_TAG = "{files}"
KPI_DATES_KEY = f"kpi:{FILES_TAG}:orders:dates"
# order_date -> rank of the table snapshot its KPIs were computed from (see write_kpis.lua).
KPI_SNAPSHOTS_KEY = f"kpi:{FILES_TAG}:snapshots"
EXECUTIONS_KEY = f"files:{FILES_TAG}:executions"
# The executions still running, by start time (ms): what the sweeper reads.
RUNNING_EXECUTIONS_KEY = f"files:{FILES_TAG}:executions:running"


def escaped_id(value: str) -> str:
    """An id as it stands in a key: percent-encoded, so it never spells another key or tag."""
    # Percent-encoding is injective and leaves plain ids (U5678) as they are, so
    # "a:b", "*", "{x}" or "é" can never spell another key or another hash tag.
    return quote(value, safe="")


def shard_of(value: str, shards: int) -> int:
    """The shard (0..shards-1) of a user or product id: the same in every process."""
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % shards


def shard_tag(shard: int) -> str:
    """The hash tag of a shard's slot."""
    return f"{{s{shard}}}"


def user_tag(user_id: str) -> str:
    """The hash tag of a user's slot."""
    return f"{{u:{escaped_id(user_id)}}}"


def hash_tag(key: str) -> str:
    """The {...} part of a key that decides its slot."""
    start = key.index("{")
    return key[start:key.index("}", start) + 1]


def user_key(user_id: str) -> str:
    """Hash of one user's totals (the seeds' fields, under user:{u:<id>})."""
    return f"user:{user_tag(user_id)}"


def user_days_key(user_id: str) -> str:
    """Hash of one user's days: field YYYY-MM-DD, value "<orders>:<cents>"."""
    # Not under user:*, where each key is one user's totals hash.
    return f"user-days:{user_tag(user_id)}"


def user_applied_key(user_id: str) -> str:
    """Sorted set of the orders the user part applied, scored by time (the window's)."""
    return f"applied:{user_tag(user_id)}"


def order_key(order_id: str) -> str:
    """The claim of an order id, holding its fingerprint for the dedup window."""
    return f"order:{{o:{escaped_id(order_id)}}}"


def global_key(shard: int) -> str:
    """Hash of one shard's share of the platform's totals."""
    return f"global:{shard_tag(shard)}"


def outcomes_key(shard: int) -> str:
    """Hash of one shard's counted and corrected orders."""
    return f"pipeline:outcomes:{shard_tag(shard)}"


def corrections_key(shard: int) -> str:
    """Hash of what the mismatch policy changed, by order id, for a shard's users."""
    return f"corrections:{shard_tag(shard)}"


def shard_applied_key(shard: int, part: str) -> str:
    """Sorted set of the orders a shard's users or products part applied."""
    return f"applied:{part}:{shard_tag(shard)}"


def product_key(product_id: str, shard: int) -> str:
    """Hash of one product's sales (shard: shard_of(product_id))."""
    return f"product:{shard_tag(shard)}:{escaped_id(product_id)}"


def day_key(day: str, shard: int) -> str:
    """Hash of one shard's share of a UTC day's KPIs (day is YYYY-MM-DD)."""
    return f"day:{shard_tag(shard)}:{day}"


def day_customers_key(day: str, shard: int) -> str:
    """Set of the distinct users of a shard who ordered on a UTC day."""
    return f"day:{shard_tag(shard)}:{day}:customers"


def month_key(month: str, shard: int) -> str:
    """Hash of one shard's share of a UTC month's KPIs (YYYY-MM), the day hash's fields."""
    return f"month:{shard_tag(shard)}:{month}"


def top_users_key(by: str, day: str = "", month: str = "", shard: int = 0) -> str:
    """One shard's users by spend (cents) or orders: all-time, of one day or one month."""
    if by not in ("spend", "orders"):
        raise ValueError(f"no ranking of users by {by!r}")
    if day:
        return f"top:users:{by}:{shard_tag(shard)}:day:{day}"
    if month:
        return f"top:users:{by}:{shard_tag(shard)}:month:{month}"
    return f"top:users:{by}:{shard_tag(shard)}"


def top_products_key(by: str, shard: int = 0, day: str = "") -> str:
    """One shard's products by revenue (cents) or units: all-time or of one day."""
    if by not in ("revenue", "units"):
        raise ValueError(f"no ranking of products by {by!r}")
    if day:
        return f"top:products:{by}:{shard_tag(shard)}:day:{day}"
    return f"top:products:{by}:{shard_tag(shard)}"


def rejected_key(message_id: str) -> str:
    """Hash of one rejected message: body, reasons, time (expires after the retention)."""
    return f"rejected:{BOOKKEEPING_TAG}:{escaped_id(message_id)}"


def rejected_order_key(order_id: str) -> str:
    """The message id of an order id's latest rejection; expires with that record."""
    # A key per order rather than one hash, so each pointer expires with its record.
    return f"rejected-order:{BOOKKEEPING_TAG}:{escaped_id(order_id)}"


def applied_mark(order_id: str, fingerprint: str) -> str:
    """An order's member in the applied sets: its id and a digest of its content."""
    # The content too, so another order under the same id (after its claim expired or was
    # dropped) never passes for one already applied.
    digest = hashlib.sha256(fingerprint.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{order_id}:{digest[:16]}"


def order_kpi_key(order_date: str) -> str:
    """Hash of one order_date's order KPIs (OrderKPIs item)."""
    return f"kpi:{FILES_TAG}:orders:{order_date}"


def category_kpi_key(order_date: str) -> str:
    """Hash of one order_date's category KPIs: field category, value a JSON array."""
    return f"kpi:{FILES_TAG}:categories:{order_date}"


def execution_key(execution_id: str) -> str:
    """JSON record of one files execution (the copy of results/<id>.json the API serves)."""
    return f"files:{FILES_TAG}:execution:{escaped_id(execution_id)}"


def execution_settled_key(execution_id: str) -> str:
    """Marker that an execution's outcome (finished or failed) was announced once."""
    return f"files:{FILES_TAG}:execution-settled:{escaped_id(execution_id)}"


# table -> the last version whose changes the stored KPIs include (see write_kpis.lua).
KPI_WATERMARKS_KEY = f"kpi:{FILES_TAG}:watermarks"


def execution_plan_key(execution_id: str) -> str:
    """What an execution was started to do: its files at their versions, its events."""
    return f"files:{FILES_TAG}:execution-plan:{escaped_id(execution_id)}"


def execution_steps_key(execution_id: str) -> str:
    """Hash of an execution's step results: each staged file by key, then its KPIs."""
    return f"files:{FILES_TAG}:execution-steps:{escaped_id(execution_id)}"


def execution_attempts_key(execution_id: str) -> str:
    """Hash of how many times each step of an execution started (a killed step comes back)."""
    return f"files:{FILES_TAG}:execution-attempts:{escaped_id(execution_id)}"


# input/ key -> JSON [sequencer as a number, event time] of the newest upload of it staged.
APPLIED_UPLOADS_KEY = f"files:{FILES_TAG}:applied-uploads"


def upload_lock_key(key: str) -> str:
    """Lock held while one upload of an input/ key is checked and merged."""
    return f"files:{FILES_TAG}:upload-lock:{escaped_id(key)}"
