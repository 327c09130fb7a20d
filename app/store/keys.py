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
import re
import zlib
from typing import Callable
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


def _key(template: str, doc: str, *slots: str) -> Callable[..., str]:
    """The builder of a key template: its one or two arguments fill the <slot>s named."""
    # An <id> is escaped (escaped_id), a shard, day or month stands as it is. Closures of
    # f-strings, as fast as the functions written out: some twenty run for each order.
    slots = slots or ("id",)
    pieces = re.split(r"<(\w+)>", template)  # text, slot, text[, slot, text]
    if sorted(pieces[1::2]) != sorted(slots) or len(slots) > 2:
        raise ValueError(f"the key {template} does not have the slots {slots}")
    spell = [escaped_id if slot == "id" else str for slot in slots]
    if len(slots) == 1:
        head, _, tail = pieces
        (first,) = spell

        def key(value):
            return f"{head}{first(value)}{tail}"
    else:
        head, slot, middle, _, tail = pieces
        first, second = spell
        if slot == slots[0]:
            def key(value, other):
                return f"{head}{first(value)}{middle}{second(other)}{tail}"
        else:
            def key(value, other):
                return f"{head}{second(other)}{middle}{first(value)}{tail}"

    key.__doc__ = doc
    key.template = template
    return key


# The hash tags of the order, user and shard parts (the bookkeeping and files tags above).
ORDER_TAG = "{o:<id>}"
USER_TAG = "{u:<id>}"
SHARD_TAG = "{s<shard>}"
shard_tag = _key(SHARD_TAG, "The hash tag of a shard's slot.", "shard")
user_tag = _key(USER_TAG, "The hash tag of a user's slot.")


def hash_tag(key: str) -> str:
    """The {...} part of a key that decides its slot."""
    start = key.index("{")
    return key[start:key.index("}", start) + 1]


order_key = _key(f"order:{ORDER_TAG}",
                 "The claim of an order id, holding its fingerprint for the dedup window.")

user_key = _key(f"user:{USER_TAG}",
                "Hash of one user's totals (the seeds' fields, under user:{u:<id>}).")
# Not under user:*, where each key is one user's totals hash.
user_days_key = _key(f"user-days:{USER_TAG}",
                     'Hash of one user\'s days: field YYYY-MM-DD, value "<orders>:<cents>".')
user_applied_key = _key(f"applied:{USER_TAG}", "Sorted set of the orders the user part "
                        "applied, scored by time (the window's).")

global_key = _key(f"global:{SHARD_TAG}", "Hash of one shard's share of the platform's totals.",
                  "shard")
outcomes_key = _key(f"pipeline:outcomes:{SHARD_TAG}",
                    "Hash of one shard's counted and corrected orders.", "shard")
corrections_key = _key(f"corrections:{SHARD_TAG}", "Hash of what the mismatch policy changed, "
                       "by order id, for a shard's users.", "shard")
shard_applied_key = _key(f"applied:<part>:{SHARD_TAG}", "Sorted set of the orders a shard's "
                         "users or products part applied.", "shard", "part")
product_key = _key(f"product:{SHARD_TAG}:<id>",
                   "Hash of one product's sales (shard: shard_of(product_id)).", "id", "shard")
day_key = _key(f"day:{SHARD_TAG}:<day>", "Hash of one shard's share of a UTC day's KPIs (day "
               "is YYYY-MM-DD).", "day", "shard")
day_customers_key = _key(f"day:{SHARD_TAG}:<day>:customers", "Set of the distinct users of a "
                         "shard who ordered on a UTC day.", "day", "shard")
month_key = _key(f"month:{SHARD_TAG}:<month>", "Hash of one shard's share of a UTC month's "
                 "KPIs (YYYY-MM), the day hash's fields.", "month", "shard")


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


rejected_key = _key(f"rejected:{BOOKKEEPING_TAG}:<id>", "Hash of one rejected message: body, "
                    "reasons, time (expires after the retention).")
# A key per order rather than one hash, so each pointer expires with its record.
rejected_order_key = _key(f"rejected-order:{BOOKKEEPING_TAG}:<id>", "The message id of an "
                          "order id's latest rejection; expires with that record.")


def applied_mark(order_id: str, fingerprint: str) -> str:
    """An order's member in the applied sets: its id and a digest of its content."""
    # The content too, so another order under the same id (after its claim expired or was
    # dropped) never passes for one already applied.
    digest = hashlib.sha256(fingerprint.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{order_id}:{digest[:16]}"


order_kpi_key = _key(f"kpi:{FILES_TAG}:orders:<date>",
                     "Hash of one order_date's order KPIs (OrderKPIs item).", "date")
category_kpi_key = _key(f"kpi:{FILES_TAG}:categories:<date>", "Hash of one order_date's "
                        "category KPIs: field category, value a JSON array.", "date")
# table -> the last version whose changes the stored KPIs include (see write_kpis.lua).
KPI_WATERMARKS_KEY = f"kpi:{FILES_TAG}:watermarks"

execution_key = _key(f"files:{FILES_TAG}:execution:<id>", "JSON record of one files execution "
                     "(the copy of results/<id>.json the API serves).")
execution_settled_key = _key(f"files:{FILES_TAG}:execution-settled:<id>", "Marker that an "
                             "execution's outcome (finished or failed) was announced once.")
execution_plan_key = _key(f"files:{FILES_TAG}:execution-plan:<id>", "What an execution was "
                          "started to do: its files at their versions, its events.")
execution_steps_key = _key(f"files:{FILES_TAG}:execution-steps:<id>", "Hash of an execution's "
                           "step results: each staged file by key, then its KPIs.")
execution_attempts_key = _key(f"files:{FILES_TAG}:execution-attempts:<id>", "Hash of how many "
                              "times each step of an execution started (a killed step comes "
                              "back).")

# input/ key -> JSON [sequencer as a number, event time] of the newest upload of it staged.
APPLIED_UPLOADS_KEY = f"files:{FILES_TAG}:applied-uploads"
upload_lock_key = _key(f"files:{FILES_TAG}:upload-lock:<id>",
                       "Lock held while one upload of an input/ key is checked and merged.")
