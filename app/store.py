"""The Redis gateway: every key name, the atomic update script and the reads."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date
from urllib.parse import quote

import redis

from app.orders import Evaluated, Order

GLOBAL_KEY = "global:stats"
OUTCOMES_KEY = "pipeline:outcomes"
REJECTED_INDEX = "rejected"
REJECTED_BY_ORDER = "rejected-by-order"
TOP_USERS_BY_SPEND = "top:users:spend"
TOP_USERS_BY_ORDERS = "top:users:orders"
TOP_PRODUCTS_BY_REVENUE = "top:products:revenue"
TOP_PRODUCTS_BY_UNITS = "top:products:units"
CORRECTIONS_KEY = "corrections"
# Where RANKED adds up several sorted sets; it exists only while the script runs.
RANKED_SCRATCH = "ranked:scratch"
REJECTED_BY_FIELD = "pipeline:rejected-by-field"
# When the last batch was applied and when its oldest message had been sent (ms).
LAG_KEY = "pipeline:lag"
TASK_EVENTS_KEY = "pipeline:task-events"
OUTCOMES = ("counted", "duplicate", "rejected", "conflict", "corrected")


def _part(value: str) -> str:
    # Percent-encoding is injective and leaves plain ids (U5678) as they are, so
    # "a:b", "*" or "é" can never spell another key.
    return quote(value, safe="")


def user_key(user_id: str) -> str:
    """Hash of one user's totals (the seeds' layout: user:<id>)."""
    return f"user:{_part(user_id)}"


def order_key(order_id: str) -> str:
    """The 'already counted' marker of an order, holding its fingerprint."""
    return f"order:{_part(order_id)}"


def product_key(product_id: str) -> str:
    """Hash of one product's sales."""
    return f"product:{_part(product_id)}"


def day_key(day: str) -> str:
    """Hash of one UTC day's KPIs (day is YYYY-MM-DD)."""
    return f"day:{day}"


def day_customers_key(day: str) -> str:
    """Set of the distinct users who ordered on a UTC day."""
    return f"day:{day}:customers"


def month_key(month: str) -> str:
    """Hash of one UTC month's KPIs (month is YYYY-MM), the day hash's fields."""
    return f"month:{month}"


def top_users_key(by: str, day: str = "", month: str = "") -> str:
    """Sorted set of users by spend (cents) or orders: all-time, of one day or one month."""
    if by not in ("spend", "orders"):
        raise ValueError(f"no ranking of users by {by!r}")
    if day:
        return f"top:users:{by}:day:{day}"
    if month:
        return f"top:users:{by}:month:{month}"
    return f"top:users:{by}"


def top_products_key(by: str) -> str:
    """Sorted set of products by revenue (cents) or units, all-time."""
    if by not in ("revenue", "units"):
        raise ValueError(f"no ranking of products by {by!r}")
    return f"top:products:{by}"


def user_days_key(user_id: str) -> str:
    """Hash of one user's days: field YYYY-MM-DD, value "<orders>:<cents>"."""
    # Not under user:*, where each key is one user's totals hash.
    return f"user-days:{_part(user_id)}"


def rejected_key(message_id: str) -> str:
    """Hash of one rejected message: body, reasons, time."""
    return f"rejected:{_part(message_id)}"


# One call applies a whole batch: for each order the 'seen' check and every increment
# happen together, so a crash or a redelivery can never count half an order or count it
# twice. Money arrives as integer cents in strings; the decimal strings kept beside them
# (total_spend, total_revenue) are for readers of the seeds' layout.
APPLY_BATCH = """
local function money(c)
  local sign = ''
  if c < 0 then sign = '-'; c = -c end
  return string.format('%s%d.%02d', sign, math.floor(c / 100), c % 100)
end
local function record_rejection(r, now)
  if redis.call('EXISTS', r.key) == 1 then return 0 end
  redis.call('HSET', r.key, 'message_id', r.message_id, 'kind', r.kind, 'body', r.body,
             'reasons', r.reasons, 'order_id', r.order_id, 'at', now,
             'first_seen', r.first_seen)
  redis.call('ZADD', KEYS[3], now, r.message_id)
  if r.order_id ~= '' then redis.call('HSET', KEYS[9], r.order_id, r.message_id) end
  redis.call('HINCRBY', KEYS[2], r.kind == 'conflict' and 'conflict' or 'rejected', 1)
  for _, field in ipairs(r.fields) do redis.call('HINCRBY', KEYS[10], field, 1) end
  return 1
end
local batch = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
-- Redis does not roll a script back when a command fails half-way, so every key is
-- checked first: a key of the wrong type fails the whole call before anything is written.
local expected = {}
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[8], KEYS[9], KEYS[10], KEYS[11]}) do
  expected[key] = 'hash'
end
for i = 3, 7 do expected[KEYS[i]] = 'zset' end
for _, o in ipairs(batch.orders) do
  expected[o.order_key] = 'string'
  expected[o.user_key] = 'hash'
  expected[o.day_key] = 'hash'
  expected[o.day_customers_key] = 'set'
  expected[o.month_key] = 'hash'
  expected[o.user_days_key] = 'hash'
  for _, key in ipairs(o.user_rankings) do expected[key] = 'zset' end
  for _, p in ipairs(o.products) do expected[p[1]] = 'hash' end
  expected[o.conflict_key] = 'hash'
end
for _, r in ipairs(batch.rejections) do expected[r.key] = 'hash' end
for key, kind in pairs(expected) do
  local actual = redis.call('TYPE', key).ok
  if actual ~= 'none' and actual ~= kind then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. actual .. ', not a ' .. kind)
  end
end
local results = {}
for i, o in ipairs(batch.orders) do
  local seen = redis.call('GET', o.order_key)
  if seen == o.fingerprint then
    redis.call('HINCRBY', KEYS[2], 'duplicate', 1)
    results[i] = 'duplicate'
  elseif seen then
    record_rejection({key = o.conflict_key, message_id = o.message_id, kind = 'conflict',
      body = o.body, order_id = o.order_id, first_seen = seen, fields = {'order_id'},
      reasons = cjson.encode({order_id = {'Already counted with different content.'}})}, now)
    results[i] = 'conflict'
  else
    redis.call('SET', o.order_key, o.fingerprint)
    local spend = redis.call('HINCRBY', o.user_key, 'total_spend_cents', o.cents)
    redis.call('HINCRBY', o.user_key, 'order_count', 1)
    redis.call('HSET', o.user_key, 'total_spend', money(spend))
    local first = tonumber(redis.call('HGET', o.user_key, 'first_order_ts') or '')
    if not first or o.ts < first then redis.call('HSET', o.user_key, 'first_order_ts', o.ts) end
    local last = tonumber(redis.call('HGET', o.user_key, 'last_order_ts') or '')
    if not last or o.ts > last then redis.call('HSET', o.user_key, 'last_order_ts', o.ts) end
    local revenue = redis.call('HINCRBY', KEYS[1], 'total_revenue_cents', o.cents)
    redis.call('HINCRBY', KEYS[1], 'total_orders', 1)
    redis.call('HSET', KEYS[1], 'total_revenue', money(revenue))
    redis.call('ZINCRBY', KEYS[4], o.cents, o.user_id)
    redis.call('ZINCRBY', KEYS[5], 1, o.user_id)
    redis.call('HINCRBY', o.day_key, 'total_orders', 1)
    redis.call('HINCRBY', o.day_key, 'total_revenue_cents', o.cents)
    redis.call('HINCRBY', o.day_key, 'total_items_sold', o.units)
    if redis.call('SADD', o.day_customers_key, o.user_id) == 1 then
      redis.call('HINCRBY', o.day_key, 'unique_customers', 1)
    end
    -- user_rankings: spend and orders of the order's day, then of its month.
    local r = o.user_rankings
    redis.call('ZINCRBY', r[1], o.cents, o.user_id)
    redis.call('ZINCRBY', r[2], 1, o.user_id)
    redis.call('ZINCRBY', r[3], o.cents, o.user_id)
    -- The month's order ranking doubles as its set of customers: a first order makes 1.
    if tonumber(redis.call('ZINCRBY', r[4], 1, o.user_id)) == 1 then
      redis.call('HINCRBY', o.month_key, 'unique_customers', 1)
    end
    redis.call('HINCRBY', o.month_key, 'total_orders', 1)
    redis.call('HINCRBY', o.month_key, 'total_revenue_cents', o.cents)
    redis.call('HINCRBY', o.month_key, 'total_items_sold', o.units)
    -- One packed field per day keeps a user's days in one small (listpack) hash.
    local day_orders, day_cents = 0, 0
    local packed = redis.call('HGET', o.user_days_key, o.day)
    if packed then
      local sep = string.find(packed, ':', 1, true)
      day_orders = tonumber(string.sub(packed, 1, sep - 1))
      day_cents = tonumber(string.sub(packed, sep + 1))
    end
    redis.call('HSET', o.user_days_key, o.day,
               string.format('%d:%d', day_orders + 1, day_cents + tonumber(o.cents)))
    for _, p in ipairs(o.products) do
      redis.call('HINCRBY', p[1], 'units_sold', p[3])
      redis.call('HINCRBY', p[1], 'revenue_cents', p[4])
      redis.call('HINCRBY', p[1], 'orders', 1)
      redis.call('ZINCRBY', KEYS[6], p[4], p[2])
      redis.call('ZINCRBY', KEYS[7], p[3], p[2])
    end
    redis.call('HINCRBY', KEYS[2], 'counted', 1)
    if o.correction ~= '' then
      redis.call('HSET', KEYS[8], o.order_id, o.correction)
      redis.call('HINCRBY', KEYS[2], 'corrected', 1)
    end
    results[i] = 'counted'
  end
end
for _, r in ipairs(batch.rejections) do
  record_rejection(r, now)
end
if batch.oldest_sent_ms > 0 then
  redis.call('HSET', KEYS[11], 'oldest_sent_ms', batch.oldest_sent_ms,
             'applied_ms', math.floor(now * 1000))
end
return results
"""
BATCH_KEYS = [GLOBAL_KEY, OUTCOMES_KEY, REJECTED_INDEX, TOP_USERS_BY_SPEND,
              TOP_USERS_BY_ORDERS, TOP_PRODUCTS_BY_REVENUE, TOP_PRODUCTS_BY_UNITS, CORRECTIONS_KEY,
              REJECTED_BY_ORDER, REJECTED_BY_FIELD, LAG_KEY]

# Removes a rejection record (before its body is sent again) and its count, together.
FORGET_REJECTION = """
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then return 0 end
local fields = {}
for i = 1, #record, 2 do fields[record[i]] = record[i + 1] end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], fields.message_id)
if fields.order_id ~= '' and redis.call('HGET', KEYS[3], fields.order_id) == fields.message_id then
  redis.call('HDEL', KEYS[3], fields.order_id)
end
redis.call('HINCRBY', KEYS[4], fields.kind == 'conflict' and 'conflict' or 'rejected', -1)
return 1
"""

# The first n members of a ranking: highest score first, equal scores by member in byte
# order. A sorted set keeps ties in ascending member order, so ZREVRANGE lists them
# backwards and its n-th entry may cut a tie group at the wrong end: that group is read
# again from its first member. KEYS: p sorted sets to rank by (their scores added up),
# then p sorted sets of a second measure of the same buckets, added up for the chosen
# members, then a scratch key for the sum of several sets, deleted before the script
# returns. ARGV[1]: n. Returns member, score, second score, ... (scores as integers).
RANKED = """
local n = tonumber(ARGV[1])
local p = (#KEYS - 1) / 2
local source = KEYS[1]
if p > 1 then
  -- O(N + M log M), N entries in the p sets and M distinct members, all in C: the M
  -- members never travel to Lua.
  source = KEYS[#KEYS]
  local union = {'ZUNIONSTORE', source, p}
  for k = 1, p do union[#union + 1] = KEYS[k] end
  redis.call(unpack(union))
end
-- O(log M + n) from here on.
local top = redis.call('ZREVRANGE', source, 0, n - 1, 'WITHSCORES')
local boundary = nil
if #top == 2 * n then boundary = top[#top] end
local stop = #top
if boundary then
  while stop > 0 and top[stop] == boundary do stop = stop - 2 end
end
-- Above the boundary score: each tie group turned into ascending member order.
local chosen = {}
local i = 2
while i <= stop do
  local j = i
  while j + 2 <= stop and top[j + 2] == top[i] do j = j + 2 end
  for k = j, i, -2 do
    chosen[#chosen + 1] = top[k - 1]
    chosen[#chosen + 1] = top[k]
  end
  i = j + 2
end
if boundary then
  local group = redis.call('ZRANGEBYSCORE', source, boundary, boundary, 'WITHSCORES',
                           'LIMIT', 0, n - #chosen / 2)
  for k = 1, #group do chosen[#chosen + 1] = group[k] end
end
if p > 1 then redis.call('UNLINK', source) end
local result, members = {}, {}
for k = 1, #chosen, 2 do
  members[#members + 1] = chosen[k]
  result[#result + 1] = chosen[k]
  result[#result + 1] = tonumber(chosen[k + 1])
  result[#result + 1] = 0
end
if #members > 0 then
  for k = p + 1, 2 * p do
    local scores = redis.call('ZMSCORE', KEYS[k], unpack(members))
    for j = 1, #members do
      if scores[j] then result[3 * j] = result[3 * j] + tonumber(scores[j]) end
    end
  end
end
return result
"""


@dataclass(frozen=True)
class UserStats:
    """All-time figures of one user."""

    user_id: str
    order_count: int
    total_spend_cents: int


@dataclass(frozen=True)
class GlobalStats:
    """All-time figures of the platform."""

    total_orders: int
    total_revenue_cents: int


class Store:
    """Reads and atomic writes of the aggregates in one Redis database."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._apply_batch = client.register_script(APPLY_BATCH)
        self._forget_rejection = client.register_script(FORGET_REJECTION)
        self._ranked = client.register_script(RANKED)

    @classmethod
    def from_url(cls, url: str, **options) -> "Store":
        """A Store on a new client for the Redis URL."""
        options.setdefault("socket_timeout", 5)
        options.setdefault("socket_connect_timeout", 5)
        return cls(redis.Redis.from_url(url, decode_responses=True, **options))

    def apply(self, evaluated: list[Evaluated]) -> list[str]:
        """Count the orders and record the rejections of a batch in one round trip.

        Returns one outcome per item, in order: counted, duplicate, conflict or rejected.
        """
        orders = [e for e in evaluated if e.order]
        batch = {
            "orders": [_order_entry(e.order, e) for e in orders],
            "rejections": [_rejection_entry(r.message_id, r.kind, r.body, r.order_id, r.reasons)
                           for r in (e.rejection for e in evaluated) if r],
            "oldest_sent_ms": min((int(e.incoming.sent_at.timestamp() * 1000)
                                   for e in evaluated if e.incoming.sent_at), default=0),
        }
        by_order = iter(self._run_batch(batch))
        return [next(by_order) if e.order else "rejected" for e in evaluated]

    def restore_rejection(self, record: dict):
        """Put back a record taken by forget_rejection (when sending it again failed)."""
        entry = _rejection_entry(record["message_id"], record["kind"], record["body"],
                                 record["order_id"], record["reasons"], record["first_seen"])
        self._run_batch({"orders": [], "rejections": [entry], "oldest_sent_ms": 0})

    def _run_batch(self, batch: dict) -> list[str]:
        return self._apply_batch(keys=BATCH_KEYS,
                                 args=[json.dumps(batch, ensure_ascii=False), time.time()])

    def user_stats(self, user_id: str) -> UserStats | None:
        """A user's all-time totals, or None when the user has no counted order."""
        count, cents = self.redis.hmget(user_key(user_id), "order_count", "total_spend_cents")
        if count is None:
            return None
        return UserStats(user_id, int(count), int(cents or 0))

    def global_stats(self) -> GlobalStats:
        """The platform's all-time totals (zeros when nothing was counted)."""
        orders, cents = self.redis.hmget(GLOBAL_KEY, "total_orders", "total_revenue_cents")
        return GlobalStats(int(orders or 0), int(cents or 0))

    def outcomes(self) -> dict[str, int]:
        """How many messages ended in each outcome."""
        raw = self.redis.hgetall(OUTCOMES_KEY)
        return {name: int(raw.get(name, 0)) for name in OUTCOMES}

    def rejected_by_field(self) -> dict[str, int]:
        """How many rejections named each field ('_schema': the body as a whole)."""
        return {field: int(n) for field, n in self.redis.hgetall(REJECTED_BY_FIELD).items()}

    def lag(self) -> tuple[int, int] | None:
        """(oldest SentTimestamp, applied time) of the last applied batch, in ms, or None."""
        sent, applied = self.redis.hmget(LAG_KEY, "oldest_sent_ms", "applied_ms")
        return (int(sent), int(applied)) if sent and applied else None

    def count_task_event(self, event: str):
        """Count a task event such as a retry or a failure."""
        self.redis.hincrby(TASK_EVENTS_KEY, event, 1)

    def task_events(self) -> dict[str, int]:
        """Counts of task events (retried, failed)."""
        return {event: int(n) for event, n in self.redis.hgetall(TASK_EVENTS_KEY).items()}

    def rejected(self, offset: int = 0, limit: int = 50) -> list[dict]:
        """Rejected messages, newest first."""
        ids = self.redis.zrevrange(REJECTED_INDEX, offset, offset + limit - 1)
        return [r for r in map(self.rejection, ids) if r]

    def rejection(self, some_id: str) -> dict | None:
        """One rejected message by message id or order id, with its body and reasons."""
        record = self.redis.hgetall(rejected_key(some_id))
        if not record:
            message_id = self.redis.hget(REJECTED_BY_ORDER, some_id)
            record = self.redis.hgetall(rejected_key(message_id)) if message_id else {}
        if not record:
            return None
        record["reasons"] = json.loads(record["reasons"])
        record["at"] = float(record["at"])
        return record

    def forget_rejection(self, message_id: str) -> bool:
        """Delete a rejection record and uncount it; False when there was none."""
        return bool(self._forget_rejection(
            keys=[rejected_key(message_id), REJECTED_INDEX, REJECTED_BY_ORDER, OUTCOMES_KEY]))

    def ranked(self, keys: list[str], second_keys: list[str], n: int
               ) -> list[tuple[str, int, int]]:
        """The n best members of the summed sorted sets, ties by member, with a second measure.

        One round trip: O(log N + n) for one set, O(N + M log M) to add up several
        (N entries, M distinct members).
        """
        if not keys or len(keys) != len(second_keys) or n < 1:
            raise ValueError("ranked needs as many second keys as keys, and n >= 1")
        flat = self._ranked(keys=[*keys, *second_keys, RANKED_SCRATCH], args=[n])
        return [(flat[i], int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]

    def ping(self) -> bool:
        """True when Redis answers."""
        return bool(self.redis.ping())


def _order_entry(order: Order, evaluated: Evaluated) -> dict:
    day = order.placed_at.date().isoformat()
    return {
        "order_id": order.order_id,
        "order_key": order_key(order.order_id),
        "fingerprint": order.fingerprint,
        "user_id": order.user_id,
        "user_key": user_key(order.user_id),
        "cents": str(order.value_cents),
        "ts": int(order.placed_at.timestamp() * 1000),
        "day_key": day_key(day),
        "day_customers_key": day_customers_key(day),
        "day": day,
        "month_key": month_key(day[:7]),
        "user_days_key": user_days_key(order.user_id),
        "user_rankings": [top_users_key("spend", day=day), top_users_key("orders", day=day),
                          top_users_key("spend", month=day[:7]),
                          top_users_key("orders", month=day[:7])],
        "units": sum(line.quantity for line in order.lines),
        "products": [[product_key(line.product_id), line.product_id, line.quantity,
                      str(line.line_cents)] for line in order.lines],
        "correction": _correction(order),
        # Needed only if the order turns out to conflict with an earlier one.
        "message_id": evaluated.incoming.message_id,
        "conflict_key": rejected_key(evaluated.incoming.message_id),
        "body": evaluated.raw_body,
    }


def _correction(order: Order) -> str:
    """What the mismatch policy changed, as JSON, or '' when nothing."""
    if order.corrected_from_cents is None:
        return ""
    return json.dumps({"sent_cents": order.corrected_from_cents,
                       "counted_cents": order.value_cents})


def _rejection_entry(message_id: str, kind: str, body: str, order_id: str | None,
                     reasons: dict, first_seen: str = "") -> dict:
    return {"key": rejected_key(message_id), "message_id": message_id, "kind": kind,
            "body": body, "order_id": order_id or "", "first_seen": first_seen,
            "reasons": json.dumps(reasons, ensure_ascii=False), "fields": sorted(reasons)}


# --- Batch files (app/files): KPI tables and execution records ---------------------------
# The seed's DynamoDB tables, in Redis: OrderKPIs by order_date, CategoryKPIs by
# (category, order_date). Exact integers are stored; rates and averages are derived on read.

KPI_DATES_KEY = "kpi:orders:dates"
# order_date -> rank of the table snapshot its KPIs were computed from (see WRITE_KPIS).
KPI_SNAPSHOTS_KEY = "kpi:snapshots"
EXECUTIONS_KEY = "files:executions"
ORDER_KPI_FIELDS = ("total_orders", "total_revenue_cents", "total_items_sold",
                    "unique_customers", "returned_orders")


def order_kpi_key(order_date: str) -> str:
    """Hash of one order_date's order KPIs (OrderKPIs item)."""
    return f"kpi:orders:{order_date}"


def category_kpi_key(order_date: str) -> str:
    """Hash of one order_date's category KPIs: field category, value a JSON array."""
    return f"kpi:categories:{order_date}"


def execution_key(execution_id: str) -> str:
    """JSON record of one files execution (the copy of results/<id>.json the API serves)."""
    return f"files:execution:{_part(execution_id)}"


def execution_settled_key(execution_id: str) -> str:
    """Marker that an execution was settled (finished or failed) once."""
    return f"files:execution-settled:{_part(execution_id)}"


# One call writes every date of an execution, so a reader sees all of its KPIs or none.
# A date already written from a later snapshot of the tables (a concurrent execution that
# read after us) is left alone: an older computation never overwrites a newer one.
WRITE_KPIS = """
local rank = tonumber(ARGV[1])
local days = cjson.decode(ARGV[2])
local written = 0
for i, day in ipairs(days) do
  local order_key, category_key = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local seen = tonumber(redis.call('HGET', KEYS[1], day.date) or '-1')
  if seen <= rank then
    redis.call('DEL', order_key, category_key)
    if day.order then
      redis.call('HSET', order_key, unpack(day.order))
      redis.call('ZADD', KEYS[2], day.ordinal, day.date)
      if #day.categories > 0 then redis.call('HSET', category_key, unpack(day.categories)) end
    else
      redis.call('ZREM', KEYS[2], day.date)
    end
    redis.call('HSET', KEYS[1], day.date, rank)
    written = written + 1
  end
end
return written
"""


class FilesStore:
    """KPI tables and execution records of the batch files path, in the aggregates' Redis."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._write_kpis = client.register_script(WRITE_KPIS)

    @classmethod
    def from_url(cls, url: str) -> "FilesStore":
        """A FilesStore on a new client for the Redis URL."""
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10,
                                        socket_connect_timeout=5))

    def write_kpis(self, rank: int, dates: list[str], order_kpis, category_kpis) -> int:
        """Replace the KPIs of the dates in one atomic call; return the dates written."""
        orders = {k.order_date: k for k in order_kpis}
        categories: dict[str, list[str]] = {d: [] for d in dates}
        for k in category_kpis:
            categories.setdefault(k.order_date, []).extend(
                [k.category, json.dumps([k.daily_revenue_cents, k.orders, k.items,
                                         k.returned_items])])
        days, keys = [], [KPI_SNAPSHOTS_KEY, KPI_DATES_KEY]
        for day in dates:
            entry = {"date": day, "ordinal": date.fromisoformat(day).toordinal(),
                     "categories": categories.get(day, [])}
            if day in orders:
                entry["order"] = [x for f in ORDER_KPI_FIELDS
                                  for x in (f, str(getattr(orders[day], f)))]
            days.append(entry)
            keys += [order_kpi_key(day), category_kpi_key(day)]
        # cjson turns an empty Lua table into {}: send the categories as arrays explicitly.
        payload = json.dumps(days, ensure_ascii=False)
        return int(self._write_kpis(keys=keys, args=[rank, payload]))

    def _dates(self, start: str, end: str) -> list[str]:
        return self.redis.zrangebyscore(KPI_DATES_KEY, date.fromisoformat(start).toordinal(),
                                        date.fromisoformat(end).toordinal())

    def order_kpis(self, start: str, end: str) -> list[dict]:
        """Raw order KPIs of the dates with orders in [start, end], by date."""
        dates = self._dates(start, end)
        pipe = self.redis.pipeline(transaction=True)
        for day in dates:
            pipe.hgetall(order_kpi_key(day))
        return [{"order_date": day, **{f: int(raw.get(f, 0)) for f in ORDER_KPI_FIELDS}}
                for day, raw in zip(dates, pipe.execute()) if raw]

    def category_kpis(self, start: str, end: str, category: str | None = None) -> list[dict]:
        """Raw category KPIs in [start, end] (one category or all), by category then date."""
        dates = self._dates(start, end)
        pipe = self.redis.pipeline(transaction=True)
        for day in dates:
            if category is None:
                pipe.hgetall(category_kpi_key(day))
            else:
                pipe.hmget(category_kpi_key(day), [category])
        rows = []
        for day, raw in zip(dates, pipe.execute()):
            pairs = raw.items() if category is None else zip([category], raw)
            for name, value in pairs:
                if value is None:
                    continue
                revenue, orders, items, returned = json.loads(value)
                rows.append({"category": name, "order_date": day, "daily_revenue_cents": revenue,
                             "orders": orders, "items": items, "returned_items": returned})
        return sorted(rows, key=lambda r: (r["category"], r["order_date"]))

    def save_execution(self, record: dict) -> None:
        """Store (or replace) an execution's record and list it by start time."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(execution_key(record["execution_id"]),
                 json.dumps(record, ensure_ascii=False, default=str))
        pipe.zadd(EXECUTIONS_KEY, {record["execution_id"]: record["started_at_ms"]})
        pipe.execute()

    def execution(self, execution_id: str) -> dict | None:
        """One execution's record, or None."""
        raw = self.redis.get(execution_key(execution_id))
        return json.loads(raw) if raw else None

    def executions(self, limit: int = 20) -> list[dict]:
        """The latest executions' records, newest first."""
        ids = self.redis.zrevrange(EXECUTIONS_KEY, 0, max(limit, 1) - 1)
        if not ids:
            return []
        return [json.loads(raw) for raw in self.redis.mget([execution_key(i) for i in ids]) if raw]

    def settled(self, execution_id: str) -> str | None:
        """How an execution was announced ("succeeded" or "failed"), or None."""
        return self.redis.get(execution_settled_key(execution_id))

    def mark_settled(self, execution_id: str, status: str, ttl_seconds: int = 7 * 86400):
        """Remember that an execution's outcome was announced (for a week)."""
        self.redis.set(execution_settled_key(execution_id), status, ex=ttl_seconds)
