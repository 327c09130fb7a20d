"""The Redis gateway: every key name, the batch scripts and the reads.

Key layout (one layout on a standalone Redis and on a Redis Cluster). Every key carries a
hash tag, and each script call touches the keys of one tag only, so a cluster can route it:

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
  the product rankings and ``applied:products:{s<j>}``.
- ``{p}``, the bookkeeping: rejection records and their index, the rejected, conflict and
  duplicate counters, rejections by field, the lag.

Exactly once across slots. One order touches several slots, so no single script makes it
atomic on a cluster; instead:

1. Claim: ``order:{o:<id>}`` is set to the fingerprint unless it exists. Another
   fingerprint there is a conflict: refused, recorded, nothing applied.
2. Check: every part reads the figures it would add to and tells whether the order fits
   under MAX_TOTAL (or that it applied that order already). An order that does not fit
   anywhere, with no part applied yet, is rejected whole and its claim removed.
3. Parts: each part applies the order unless its own ``applied`` set names it, and adds
   the order to that set in the same script (kept for the window), so running a part again
   changes nothing.

A crash, a timeout or a failover between any two steps leaves some parts applied, each
whole; the redelivered message finds its claim with the same fingerprint, checks the
parts, applies the missing ones and skips the rest. The "counted" counter is in the shard
part, so it moves once per order; an attempt that found nothing left to apply counts as a
duplicate. A redelivery after the window (claim and markers expired) is counted again.

Round trips: on a standalone Redis the same pieces run composed in one script call per
batch (no CROSSSLOT on one node): claims, checks and every part, atomically. On a cluster
the calls are grouped by node: one pipeline per node for claims and checks, one for the
parts and the bookkeeping, the nodes in parallel.

Limits of the split (cluster only): a check and its part's write are two calls, so two
workers adding within one order of MAX_TOTAL at the same moment could both pass and take
a figure past it; every later check of that figure then refuses it as corrupt (nothing
inexact is ever written on top). Within a batch, a slot's check counts the earlier orders
of the batch as added even if another slot rejects one of them: near the limit this
rejects too much, never too little. Two deliveries of one order running at the same
instant on two workers may finish different parts; both then say "counted" and the
counters record one message.
"""
from __future__ import annotations

import hashlib
import json
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from urllib.parse import quote

import redis
from redis.cluster import RedisCluster

from app import ranking
from app.orders import Evaluated, Order
from app.redis_client import connect
from app.settings import Settings

# The bookkeeping slot's keys.
BOOKKEEPING_TAG = "{p}"
OUTCOMES_KEY = "pipeline:outcomes:{p}"
REJECTED_INDEX = "rejected:{p}"
REJECTED_BY_FIELD = "pipeline:rejected-by-field:{p}"
# When the last batch was applied and when its oldest message had been sent (ms).
LAG_KEY = "pipeline:lag:{p}"
TASK_EVENTS_KEY = "pipeline:task-events"
OUTCOMES = ("counted", "duplicate", "rejected", "conflict")
# The day and month hashes' figures, in the order Store.kpis returns them.
KPI_FIELDS = ("total_orders", "total_revenue_cents", "total_items_sold", "unique_customers")
# The largest total kept (cents, units or orders, per user, product, day, month or shard):
# sorted-set scores and Lua numbers are doubles, exact up to 2^53. An order that would
# take any stored figure past it is rejected whole, with the figure named in its reasons.
MAX_TOTAL = 2**53 - 1
# What a rejection record keeps of a body larger than MAX_ORDER_BYTES.
KEPT_BODY_BYTES = 4096
# How long a WAIT for replicas may block; well below the client's 5 s socket timeout.
WAIT_TIMEOUT_MS = 1000


class NotReplicated(redis.RedisError):
    """Fewer replicas than REDIS_WAIT_REPLICAS confirmed a batch in time: retry it."""


class TopologyChanged(redis.ConnectionError):
    """A cluster node answered MOVED or ASK: the slots moved; retry once the map is fresh."""


class PartlyApplied(redis.ResponseError):
    """An order's applied parts leave no room for its missing ones under MAX_TOTAL."""


def _part(value: str) -> str:
    # Percent-encoding is injective and leaves plain ids (U5678) as they are, so
    # "a:b", "*", "{x}" or "é" can never spell another key or another hash tag.
    return quote(value, safe="")


def shard_of(value: str, shards: int) -> int:
    """The shard (0..shards-1) of a user or product id: the same in every process."""
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % shards


def shard_tag(shard: int) -> str:
    """The hash tag of a shard's slot."""
    return f"{{s{shard}}}"


def user_key(user_id: str) -> str:
    """Hash of one user's totals (the seeds' fields, under user:{u:<id>})."""
    return f"user:{{u:{_part(user_id)}}}"


def user_days_key(user_id: str) -> str:
    """Hash of one user's days: field YYYY-MM-DD, value "<orders>:<cents>"."""
    # Not under user:*, where each key is one user's totals hash.
    return f"user-days:{{u:{_part(user_id)}}}"


def user_applied_key(user_id: str) -> str:
    """Sorted set of the orders the user part applied, scored by time (the window's)."""
    return f"applied:{{u:{_part(user_id)}}}"


def order_key(order_id: str) -> str:
    """The claim of an order id, holding its fingerprint for the dedup window."""
    return f"order:{{o:{_part(order_id)}}}"


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
    return f"product:{shard_tag(shard)}:{_part(product_id)}"


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


def top_products_key(by: str, shard: int = 0) -> str:
    """One shard's products by revenue (cents) or units, all-time."""
    if by not in ("revenue", "units"):
        raise ValueError(f"no ranking of products by {by!r}")
    return f"top:products:{by}:{shard_tag(shard)}"


def rejected_key(message_id: str) -> str:
    """Hash of one rejected message: body, reasons, time (expires after the retention)."""
    return f"rejected:{{p}}:{_part(message_id)}"


def rejected_order_key(order_id: str) -> str:
    """The message id of an order id's latest rejection; expires with that record."""
    # A key per order rather than one hash, so each pointer expires with its record.
    return f"rejected-order:{{p}}:{_part(order_id)}"


def applied_mark(order_id: str, fingerprint: str) -> str:
    """An order's member in the applied sets: its id and a digest of its content."""
    # The content too, so another order under the same id (after its claim expired or was
    # dropped) never passes for one already applied.
    digest = hashlib.sha256(fingerprint.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{order_id}:{digest[:16]}"


def hash_tag(key: str) -> str:
    """The {...} part of a key that decides its slot."""
    start = key.index("{")
    return key[start:key.index("}", start) + 1]


# The pieces of an order's update, as one script. ARGV[1] is JSON: {mode, now, max_total,
# retention, window, ...}. Each op names its keys: op.keys maps a name to an index in
# KEYS (K(op, 'user') is the user hash), so no key is addressed by position.
#   mode 'batch' (one node holds every key: a standalone Redis): orders = [{claim, parts}],
#     book; every check runs before the first write, then claims, parts and bookkeeping.
#     Returns each order's outcome.
#   mode 'check' (a cluster's first phase, one slot): ops are claims (set unless present;
#     state new, seen or conflict) and parts' checks (applied, fits or over with reasons).
#   mode 'write' (the second phase, one slot): parts to apply (1 applied, 0 already),
#     claims to drop (rejected orders), the bookkeeping.
# Money arrives as integer cents in strings; the decimal strings kept beside them
# (total_spend, total_revenue) are for readers of the seeds' layout.
APPLY = """
local req = cjson.decode(ARGV[1])
local now, max_total = tonumber(req.now), tonumber(req.max_total)
local retention, window = tonumber(req.retention), tonumber(req.window)
-- A number passed to redis.call is formatted ('%.17g') on every call: the repeated ones
-- are passed as strings made once (the same values: a score is read back as a double).
local now_score, window_seconds = string.format('%.17g', now), string.format('%d', window)
local trim_below = '(' .. (now - window)
local function K(op, name)
  local index = op.keys[name]
  return index and KEYS[index]
end

local function money(cents)
  -- From the digits, not from a division of doubles: exact for every total up to max_total.
  local sign = ''
  if cents < 0 then sign = '-'; cents = -cents end
  local digits = string.format('%03d', cents)
  return sign .. string.sub(digits, 1, -3) .. '.' .. string.sub(digits, -2)
end

-- Redis does not roll a script back when a command fails half-way, so everything that
-- could fail is checked before the first write: 1. the type of every key. A check's reads
-- (redis.pcall) type the keys they read: only the keys no read touched cost a TYPE.
local typed = {}
local function expect(key, kind)
  if not key or typed[key] then return end
  local actual = redis.call('TYPE', key).ok
  if actual ~= 'none' and actual ~= kind then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. actual .. ', not a ' .. kind})
  end
  typed[key] = kind
end
-- A read's reply, its key typed; a WRONGTYPE refused as expect refuses it, by name.
local function read(command, key, kind, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    expect(key, kind)
    error(reply)
  end
  typed[key] = kind
  return reply
end
local kinds = {
  claim = {order = 'string'},
  user = {user = 'hash', days = 'hash', applied = 'zset'},
  shard = {global = 'hash', day = 'hash', customers = 'set', month = 'hash', spend = 'zset',
           orders = 'zset', day_spend = 'zset', day_orders = 'zset', month_spend = 'zset',
           month_orders = 'zset', outcomes = 'hash', corrections = 'hash', applied = 'zset'},
  products = {applied = 'zset', revenue = 'zset', units = 'zset'},
  book = {outcomes = 'hash', index = 'zset', by_field = 'hash', lag = 'hash'},
}
local function expect_op(op)
  local kind_of = kinds[op.kind]
  for name, index in pairs(op.keys) do
    local key, kind = KEYS[index], kind_of[name]
    if kind and not typed[key] then expect(key, kind) end
  end
  for _, p in ipairs(op.products or {}) do expect(K(p, 'product'), 'hash') end
  for _, r in ipairs(op.rejections or {}) do
    expect(K(r, 'rec'), 'hash'); expect(K(r, 'ref'), 'string')
  end
end

-- 2. Every figure an increment touches: a whole number within max_total now, and still
-- within it after the increment. Scores and Lua numbers are doubles, exact only up to
-- 2^53, so max_total bounds the integer hash fields too. values holds each figure as the
-- orders accepted so far in this call leave it.
local values = {}
local function remember(key, field, raw, is_score)
  local value = 0
  if raw then
    value = tonumber(raw)
    -- HINCRBY takes only canonical digits: not '1e3', '007' or '-0' as Lua would.
    local digits = is_score or raw == '0' or string.match(raw, '^%-?[1-9]%d*$')
    if not digits or not value or value % 1 ~= 0 or value > max_total or value < -max_total then
      error({err = 'ERR corrupt figure ' .. key .. ' ' .. field .. ': ' .. raw})
    end
  end
  values[key] = values[key] or {}
  values[key][field] = value
  return value
end
local function current(key, field, is_score)
  local value = values[key] and values[key][field]
  if value ~= nil then return value end
  local raw
  if is_score then raw = read('ZSCORE', key, 'zset', field)
  else raw = read('HGET', key, 'hash', field) end
  return remember(key, field, raw, is_score)
end
-- Reads the hash fields of additions not read yet, one HMGET per key.
local function read_ahead(list)
  local wanted, order = {}, {}
  for _, a in ipairs(list) do
    local key, field, is_score = a[1], a[2], a[4]
    if not is_score and not (values[key] and values[key][field]) then
      local fields = wanted[key]
      if not fields then fields = {}; wanted[key] = fields; order[#order + 1] = key end
      fields[#fields + 1] = field
    end
  end
  for _, key in ipairs(order) do
    local raws = read('HMGET', key, 'hash', unpack(wanted[key]))
    for i, field in ipairs(wanted[key]) do remember(key, field, raws[i], false) end
  end
end
local function parse_day(key, day, raw)
  if not raw then return {0, 0} end
  local orders, cents = string.match(raw, '^(%d+):(%d+)$')
  local pair = {tonumber(orders), tonumber(cents)}
  if not orders or pair[1] > max_total or pair[2] > max_total then
    error({err = 'ERR corrupt figure ' .. key .. ' ' .. day .. ': ' .. raw})
  end
  return pair
end
-- A user's day is one packed field "<orders>:<cents>".
local function current_day(key, day)
  values[key] = values[key] or {}
  if values[key][day] == nil then
    values[key][day] = parse_day(key, day, read('HGET', key, 'hash', day))
  end
  return values[key][day]
end
local customers = {}  -- set key -> user -> true: day customers added earlier in this call
local function is_day_customer(key, user)
  customers[key] = customers[key] or {}
  return customers[key][user] or read('SISMEMBER', key, 'set', user) == 1
end

-- What applying one part adds, one entry per figure: {key, field, by, is_score, unit,
-- what, product}. unit is cents, units or orders; what names the figure (of the product,
-- if any) in a rejection. No figure appears twice: lines arrive merged per product.
local additions = {}
function additions.user(op)
  local cents, u = tonumber(op.cents), K(op, 'user')
  return {
    {u, 'total_spend_cents', cents, false, 'cents', "the user's spend"},
    {u, 'order_count', 1, false, 'orders', "the user's order count"},
  }
end
function additions.shard(op)
  local cents, units, u = tonumber(op.cents), tonumber(op.units), op.user_id
  local day, month = K(op, 'day'), K(op, 'month')
  local list = {
    {K(op, 'global'), 'total_revenue_cents', cents, false, 'cents', 'the total revenue'},
    {K(op, 'global'), 'total_orders', 1, false, 'orders', 'the total order count'},
    {K(op, 'spend'), u, cents, true, 'cents', "the user's spend"},
    {K(op, 'orders'), u, 1, true, 'orders', "the user's order count"},
    {day, 'total_orders', 1, false, 'orders', "the day's order count"},
    {day, 'total_revenue_cents', cents, false, 'cents', "the day's revenue"},
    {day, 'total_items_sold', units, false, 'units', "the day's items sold"},
    {K(op, 'day_spend'), u, cents, true, 'cents', "the user's spend that day"},
    {K(op, 'day_orders'), u, 1, true, 'orders', "the user's orders that day"},
    {K(op, 'month_spend'), u, cents, true, 'cents', "the user's spend that month"},
    {K(op, 'month_orders'), u, 1, true, 'orders', "the user's orders that month"},
    {month, 'total_orders', 1, false, 'orders', "the month's order count"},
    {month, 'total_revenue_cents', cents, false, 'cents', "the month's revenue"},
    {month, 'total_items_sold', units, false, 'units', "the month's items sold"},
  }
  if not is_day_customer(K(op, 'customers'), u) then
    list[#list + 1] = {day, 'unique_customers', 1, false, 'orders', "the day's customers"}
  end
  if current(K(op, 'month_orders'), u, true) == 0 then
    list[#list + 1] = {month, 'unique_customers', 1, false, 'orders', "the month's customers"}
  end
  return list
end
function additions.products(op)
  local list = {}
  for _, p in ipairs(op.products) do
    local key, units, cents = K(p, 'product'), tonumber(p.units), tonumber(p.cents)
    list[#list + 1] = {key, 'units_sold', units, false, 'units', 'units sold', p.id}
    list[#list + 1] = {key, 'revenue_cents', cents, false, 'cents', 'revenue', p.id}
    list[#list + 1] = {key, 'orders', 1, false, 'orders', 'order count', p.id}
    list[#list + 1] = {K(op, 'revenue'), p.id, cents, true, 'cents', 'revenue', p.id}
    list[#list + 1] = {K(op, 'units'), p.id, units, true, 'units', 'units sold', p.id}
  end
  return list
end
-- The order's field a rejection names: a product's figures blame its items.
local blamed = {cents = 'order_value', units = 'items', orders = '_schema'}
local function past_limit(a)
  local field, what = blamed[a[5]], a[6]
  if a[7] then field, what = 'items', 'product ' .. a[7] .. "'s " .. what end
  local limit = a[5] == 'cents' and money(max_total) or string.format('%d', max_total)
  return {[field] = {'Counting this order would take ' .. what .. ' past ' .. limit ..
                     ', the largest total kept exactly.'}}
end
local function full(key, field, room)
  if current(key, field, false) + room > max_total then
    error({err = 'ERR counter ' .. key .. ' ' .. field .. ' is full'})
  end
end

-- Parts applied earlier in this call: applied key -> order id -> true.
local marked = {}
local function is_applied(op)
  local key = K(op, 'applied')
  return (marked[key] and marked[key][op.mark])
    or read('ZSCORE', key, 'zset', op.mark) ~= false
end
-- A part's check: 'applied', or 'fits' and what the figures become, or 'over' and reasons.
local function check_part(op)
  if is_applied(op) then expect_op(op); return 'applied' end
  local updates = additions[op.kind](op)
  read_ahead(updates)
  -- Each entry's by becomes what its figure would be: {key, field, value} is an update.
  for _, a in ipairs(updates) do
    a[3] = current(a[1], a[2], a[4]) + a[3]
    if a[3] > max_total then expect_op(op); return 'over', past_limit(a) end
  end
  if op.kind == 'user' then
    local key, cents = K(op, 'days'), tonumber(op.cents)
    local day = current_day(key, op.day)
    if day[1] + 1 > max_total or day[2] + cents > max_total then
      expect_op(op)
      return 'over', {order_value = {"Counting this order would take the user's day past "
                                     .. 'the largest total kept exactly.'}}
    end
    updates[#updates + 1] = {key, op.day, {day[1] + 1, day[2] + cents}}
  elseif op.kind == 'shard' then
    full(K(op, 'outcomes'), 'counted', 1)
    full(K(op, 'outcomes'), 'corrected', 1)
  end
  expect_op(op)
  return 'fits', updates
end
local function commit(op, updates)
  for _, u in ipairs(updates) do values[u[1]][u[2]] = u[3] end
  if op.kind == 'shard' then customers[K(op, 'customers')][op.user_id] = true end
  local key = K(op, 'applied')
  marked[key] = marked[key] or {}
  marked[key][op.mark] = true
end

-- Writes from here on; none of them can fail.
local writers = {}
function writers.user(op)
  local u, cents = K(op, 'user'), op.cents
  local spend = redis.call('HINCRBY', u, 'total_spend_cents', cents)
  redis.call('HINCRBY', u, 'order_count', '1')
  redis.call('HSET', u, 'total_spend', money(spend))
  local first = tonumber(redis.call('HGET', u, 'first_order_ts') or '')
  if not first or op.ts < first then redis.call('HSET', u, 'first_order_ts', op.ts) end
  local last = tonumber(redis.call('HGET', u, 'last_order_ts') or '')
  if not last or op.ts > last then redis.call('HSET', u, 'last_order_ts', op.ts) end
  -- One packed field per day keeps a user's days in one small (listpack) hash.
  local days = K(op, 'days')
  local day = parse_day(days, op.day, redis.call('HGET', days, op.day))
  redis.call('HSET', days, op.day, string.format('%d:%d', day[1] + 1, day[2] + tonumber(cents)))
end
function writers.shard(op)
  local cents, units, u = op.cents, op.units, op.user_id
  local global, day, month = K(op, 'global'), K(op, 'day'), K(op, 'month')
  local revenue = redis.call('HINCRBY', global, 'total_revenue_cents', cents)
  redis.call('HINCRBY', global, 'total_orders', '1')
  redis.call('HSET', global, 'total_revenue', money(revenue))
  redis.call('ZINCRBY', K(op, 'spend'), cents, u)
  redis.call('ZINCRBY', K(op, 'orders'), '1', u)
  redis.call('HINCRBY', day, 'total_orders', '1')
  redis.call('HINCRBY', day, 'total_revenue_cents', cents)
  redis.call('HINCRBY', day, 'total_items_sold', units)
  if redis.call('SADD', K(op, 'customers'), u) == 1 then
    redis.call('HINCRBY', day, 'unique_customers', '1')
  end
  redis.call('ZINCRBY', K(op, 'day_spend'), cents, u)
  redis.call('ZINCRBY', K(op, 'day_orders'), '1', u)
  redis.call('ZINCRBY', K(op, 'month_spend'), cents, u)
  -- The month's order ranking doubles as its set of customers: a first order makes 1.
  if tonumber(redis.call('ZINCRBY', K(op, 'month_orders'), '1', u)) == 1 then
    redis.call('HINCRBY', month, 'unique_customers', '1')
  end
  redis.call('HINCRBY', month, 'total_orders', '1')
  redis.call('HINCRBY', month, 'total_revenue_cents', cents)
  redis.call('HINCRBY', month, 'total_items_sold', units)
  redis.call('HINCRBY', K(op, 'outcomes'), 'counted', '1')
  if op.correction ~= '' then
    redis.call('HSET', K(op, 'corrections'), op.order_id, op.correction)
    redis.call('HINCRBY', K(op, 'outcomes'), 'corrected', '1')
  end
end
function writers.products(op)
  -- One entry per product, so 'orders' counts the order once however many lines.
  for _, p in ipairs(op.products) do
    local key = K(p, 'product')
    redis.call('HINCRBY', key, 'units_sold', p.units)
    redis.call('HINCRBY', key, 'revenue_cents', p.cents)
    redis.call('HINCRBY', key, 'orders', '1')
    redis.call('ZINCRBY', K(op, 'revenue'), p.cents, p.id)
    redis.call('ZINCRBY', K(op, 'units'), p.units, p.id)
  end
end
-- Applies a part unless its applied set names the order (checked: this call's check said
-- it does not); 1 when applied now.
local touched, touched_keys = {}, {}
local function apply_part(op, checked)
  local applied = K(op, 'applied')
  if not checked and redis.call('ZSCORE', applied, op.mark) then return 0 end
  writers[op.kind](op)
  redis.call('ZADD', applied, now_score, op.mark)
  if not touched[applied] then
    touched[applied] = true; touched_keys[#touched_keys + 1] = applied
  end
  return 1
end
-- Each applied set keeps the window's orders; a key nobody adds to any more expires whole.
local function trim_applied()
  for _, key in ipairs(touched_keys) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', trim_below)
    redis.call('EXPIRE', key, window_seconds)
  end
end

-- The claim: new (absent), seen (same fingerprint) or conflict (and the one seen).
local claimed = {}  -- order key -> fingerprint claimed earlier in this call
local function claim_state(op)
  local key = K(op, 'order')
  local seen = claimed[key] or read('GET', key, 'string')
  expect_op(op)
  if not seen then return 'new' end
  if seen == op.fp then return 'seen' end
  return 'conflict', seen
end
local function write_claim(op)
  redis.call('SET', K(op, 'order'), op.fp, 'EX', window_seconds)
  claimed[K(op, 'order')] = op.fp
end
local function drop_claim(op)
  if redis.call('GET', K(op, 'order')) == op.fp then redis.call('DEL', K(op, 'order')) end
end

-- The bookkeeping: rejection records, the outcome counters of the {p} slot, the lag.
local function check_book(book, rejections, duplicates)
  local room = #rejections + duplicates
  for _, name in ipairs({'duplicate', 'conflict', 'rejected'}) do
    full(K(book, 'outcomes'), name, room)
  end
  for _, r in ipairs(rejections) do
    for _, f in ipairs(r.fields) do full(K(book, 'by_field'), f, room) end
  end
  expect_op(book)
end
local function record_rejection(book, r)
  -- A message rejected again (redelivered, or requeued and still invalid) replaces its
  -- record, with a fresh time and expiry, and is not counted twice.
  local key, ref = K(r, 'rec'), K(r, 'ref')
  local fresh = redis.call('EXISTS', key) == 0
  redis.call('DEL', key)
  redis.call('HSET', key, 'message_id', r.message_id, 'kind', r.kind, 'body', r.body,
             'reasons', r.reasons, 'order_id', r.order_id, 'at', now,
             'first_seen', r.first_seen)
  if r.body_sha256 then
    redis.call('HSET', key, 'body_bytes', r.body_bytes, 'body_sha256', r.body_sha256)
  end
  redis.call('EXPIRE', key, retention)
  redis.call('ZADD', K(book, 'index'), now, r.message_id)
  if ref then redis.call('SET', ref, r.message_id, 'EX', retention) end
  if fresh then
    redis.call('HINCRBY', K(book, 'outcomes'), r.kind == 'conflict' and 'conflict' or 'rejected', 1)
    for _, f in ipairs(r.fields) do redis.call('HINCRBY', K(book, 'by_field'), f, 1) end
  end
end
local function write_book(book, rejections, duplicates)
  for _, r in ipairs(rejections) do record_rejection(book, r) end
  if #rejections > 0 then
    -- Records expire by themselves; their index entries go once older than the retention.
    redis.call('ZREMRANGEBYSCORE', K(book, 'index'), '-inf', '(' .. (now - retention))
  end
  if duplicates > 0 then redis.call('HINCRBY', K(book, 'outcomes'), 'duplicate', duplicates) end
  if (book.oldest_sent_ms or 0) > 0 then
    redis.call('HSET', K(book, 'lag'), 'oldest_sent_ms', book.oldest_sent_ms,
               'applied_ms', math.floor(now * 1000))
  end
end
-- An order's rejection record: a conflict, or a total past the limit.
local function order_rejection(o, verdict)
  local r, fields = o.rejection, {}
  expect(K(r, 'rec'), 'hash'); expect(K(r, 'ref'), 'string')
  for f in pairs(verdict.reasons) do fields[#fields + 1] = f end
  table.sort(fields)
  r.kind = verdict.outcome == 'conflict' and 'conflict' or 'invalid'
  r.first_seen = verdict.first_seen or ''
  r.fields = fields
  r.reasons = cjson.encode(verdict.reasons)
  return r
end

if req.mode == 'check' then
  local out = {}
  for i, op in ipairs(req.ops) do
    if op.kind == 'claim' then
      local state, seen = claim_state(op)
      if state == 'new' then write_claim(op) end
      out[i] = {state, seen or ''}
    else
      local status, payload = check_part(op)
      if status == 'fits' then commit(op, payload) end
      out[i] = {status, status == 'over' and cjson.encode(payload) or ''}
    end
  end
  return cjson.encode(out)
end

if req.mode == 'write' then
  local rejections, duplicates = req.book and req.book.rejections or {}, req.duplicates or 0
  if req.book then check_book(req.book, rejections, duplicates) end
  for _, op in ipairs(req.ops) do expect_op(op) end
  local out = {}
  for i, op in ipairs(req.ops) do
    if op.kind == 'claim' then drop_claim(op); out[i] = 0 else out[i] = apply_part(op) end
  end
  trim_applied()
  if req.book then write_book(req.book, rejections, duplicates) end
  return out
end

-- mode 'batch': each order's verdict, decided before any write.
local verdicts, rejections = {}, {}
for _, r in ipairs(req.book.rejections) do rejections[#rejections + 1] = r end
local duplicates = 0
for i, o in ipairs(req.orders) do
  local state, seen = claim_state(o.claim)
  local verdict
  if state == 'conflict' then
    verdict = {outcome = 'conflict', first_seen = seen,
               reasons = {order_id = {'Already counted with different content.'}}}
  else
    local todo, applied, reasons = {}, 0, nil
    for _, part in ipairs(o.parts) do
      local status, payload = check_part(part)
      if status == 'applied' then applied = applied + 1
      elseif status == 'over' then reasons = reasons or payload
      else todo[#todo + 1] = {part, payload} end
    end
    if reasons and applied > 0 then
      error({err = 'ERR order ' .. o.claim.order_id .. ' is partly applied and its other '
                   .. 'parts would pass the largest total'})
    elseif reasons then
      -- A claim left by an interrupted attempt that applied nothing: the id is free again.
      verdict = {outcome = 'rejected', reasons = reasons, drop = state == 'seen'}
    elseif #todo == 0 then
      verdict = {outcome = 'duplicate'}
      duplicates = duplicates + 1
    else
      for _, t in ipairs(todo) do commit(t[1], t[2]) end
      if state == 'new' then claimed[K(o.claim, 'order')] = o.claim.fp end
      verdict = {outcome = 'counted', new = state == 'new', todo = todo}
    end
  end
  if verdict.reasons then rejections[#rejections + 1] = order_rejection(o, verdict) end
  verdicts[i] = verdict
end
check_book(req.book, rejections, duplicates)

local results = {}
for i, o in ipairs(req.orders) do
  local verdict = verdicts[i]
  results[i] = verdict.outcome
  if verdict.outcome == 'counted' then
    if verdict.new then write_claim(o.claim) end
    for _, t in ipairs(verdict.todo) do apply_part(t[1], true) end
  elseif verdict.drop then
    drop_claim(o.claim)
  end
end
trim_applied()
write_book(req.book, rejections, duplicates)
return results
"""

FORGET_REJECTION = """
local record_key, rejected_index, outcomes_key, order_ref_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local record = redis.call('HGETALL', record_key)
if #record == 0 then return 0 end
local fields = {}
for i = 1, #record, 2 do fields[record[i]] = record[i + 1] end
if tonumber(fields.at) ~= tonumber(ARGV[1]) then return 0 end
local outcome = fields.kind == 'conflict' and 'conflict' or 'rejected'
local count = redis.call('HGET', outcomes_key, outcome) or '0'
if count ~= '0' and not string.match(count, '^%-?[1-9]%d*$') then
  return redis.error_reply('ERR corrupt figure ' .. outcomes_key .. ' ' .. outcome)
end
redis.call('DEL', record_key)
redis.call('ZREM', rejected_index, fields.message_id)
if order_ref_key and redis.call('GET', order_ref_key) == fields.message_id then
  redis.call('DEL', order_ref_key)
end
redis.call('HINCRBY', outcomes_key, outcome, -1)
return 1
"""

# The first n members of one ranking: highest score first, equal scores by member in byte
# order. A sorted set keeps ties in ascending member order, so ZREVRANGE lists them
# backwards and its n-th entry may cut a tie group at the wrong end: that group is read
# again from its first member. O(log N + n). KEYS: the sorted set to rank by, then,
# optionally (on one slot), the sorted set of a second measure of the same bucket.
# ARGV[1]: n. Returns member, score, second score (0 without KEYS[2]), ... (scores as
# integers). A sum of several sets is ranked by app.ranking instead.
RANKED = """
local n = tonumber(ARGV[1])
local source = KEYS[1]
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
local result, members = {}, {}
for k = 1, #chosen, 2 do
  members[#members + 1] = chosen[k]
  result[#result + 1] = chosen[k]
  result[#result + 1] = tonumber(chosen[k + 1])
  result[#result + 1] = 0
end
if #members > 0 and KEYS[2] then
  local scores = redis.call('ZMSCORE', KEYS[2], unpack(members))
  for j = 1, #members do
    if scores[j] then result[3 * j] = tonumber(scores[j]) end
  end
end
return result
"""


class _SortedSets:
    """app.ranking's sources on Redis: one pipeline per batch, each command on one key
    and bounded (a page, or a lookup of at most a page of members), so it runs on a
    cluster whose sets sit on different nodes. A source is the key its pages come from
    and the keys whose scores it sums (several for a bounded source)."""

    def __init__(self, client: redis.Redis, sources: list[tuple[str, list[str]]]):
        self.client, self.sources = client, sources

    def pages(self, reads):
        pipe = self.client.pipeline(transaction=False)
        for source, start, stop in reads:
            pipe.zrevrange(self.sources[source][0], start, stop, withscores=True)
        return pipe.execute()

    def scores(self, lookups):
        pipe = self.client.pipeline(transaction=False)
        for source, members in lookups:
            for key in self.sources[source][1]:
                pipe.zmscore(key, members)
        replies = iter(pipe.execute())
        results = []
        for source, members in lookups:
            parts = [next(replies) for _ in self.sources[source][1]]
            results.append([None if all(p[i] is None for p in parts)
                            else sum(p[i] or 0 for p in parts) for i in range(len(members))])
        return results


def _sources(keys: list[str], second_keys: list[str], bounds: list[str | None]
             ) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]], set[int]]:
    """Ranked and second sources of ranked(): keys sharing a bound read as one source."""
    groups: dict[object, list[int]] = {}
    for i, bound in enumerate(bounds):
        groups.setdefault(bound or i, []).append(i)
    ranked_by, second, bounded = [], [], set()
    for bound, members in groups.items():
        if len(members) > 1:
            bounded.add(len(ranked_by))
            ranked_by.append((bound, [keys[i] for i in members]))
        else:
            ranked_by.append((keys[members[0]], [keys[members[0]]]))
        second.append((second_keys[members[0]], [second_keys[i] for i in members]))
    return ranked_by, second, bounded


@dataclass(frozen=True)
class UserStats:
    """All-time figures of one user."""

    user_id: str
    order_count: int
    total_spend_cents: int


@dataclass(frozen=True)
class UserRecord:
    """Everything the user hash holds: totals and first/last order times (ms since epoch)."""

    user_id: str
    order_count: int
    total_spend_cents: int
    first_order_ms: int | None
    last_order_ms: int | None


@dataclass(frozen=True)
class GlobalStats:
    """All-time figures of the platform."""

    total_orders: int
    total_revenue_cents: int



class _Call:
    """One script call: its KEYS, and ops whose key names point into them."""

    def __init__(self):
        self.keys: list[str] = []
        self._index: dict[str, int] = {}

    def bind(self, value):
        """value with each 'keys' mapping (name -> key) turned into name -> KEYS index."""
        if isinstance(value, list):
            return [self.bind(item) for item in value]
        if not isinstance(value, dict):
            return value
        # Scalars are copied as they are, not visited: most of a payload is scalars.
        return {name: ({n: self._at(k) for n, k in item.items()} if name == "keys"
                       else self.bind(item) if isinstance(item, (dict, list)) else item)
                for name, item in value.items()}

    def _at(self, key: str) -> int:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)  # Lua counts from 1
        return index


class Store:
    """Reads and exactly-once writes of the aggregates, on a standalone Redis or a cluster."""

    def __init__(self, client: redis.Redis | RedisCluster, settings: Settings | None = None):
        settings = settings or Settings()
        self.redis = client
        self.cluster = isinstance(client, RedisCluster)
        # The claim / check / parts protocol, call by call; a standalone Redis runs the
        # same pieces composed in one call unless this is set (tests of each step set it).
        self.phased = self.cluster
        self.shards = settings.redis_shards
        self.window_seconds = settings.dedup_window_days * 86400
        self.wait_replicas = settings.redis_wait_replicas
        self.retention_seconds = settings.rejected_retention_days * 86400
        self.max_body_bytes = settings.max_order_bytes
        self._apply = client.register_script(APPLY)
        self._forget_rejection = client.register_script(FORGET_REJECTION)
        self._ranked = client.register_script(RANKED)
        self._nodes = ThreadPoolExecutor(max_workers=8) if self.cluster else None

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None, **options) -> "Store":
        """A Store on a new client for the Redis URL (a cluster node: a cluster client)."""
        options.setdefault("socket_timeout", 5)
        options.setdefault("socket_connect_timeout", 5)
        return cls(connect(url, decode_responses=True, **options), settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        """The Store of REDIS_URL with the settings' retention, body limit and WAIT."""
        return cls.from_url(settings.redis_url, settings)

    def user_shard(self, user_id: str) -> int:
        """The shard holding a user's share of the totals and rankings."""
        return shard_of(user_id, self.shards)

    def product_shard(self, product_id: str) -> int:
        """The shard holding a product's hash and rankings."""
        return shard_of(product_id, self.shards)

    def applied_keys(self, fingerprint: str) -> list[str]:
        """The applied sets a counted order with this fingerprint is named in (migrations)."""
        user_id, _, _, lines = json.loads(fingerprint)
        products = sorted({self.product_shard(product_id) for product_id, _, _ in lines})
        return [user_applied_key(user_id),
                shard_applied_key(self.user_shard(user_id), "users"),
                *(shard_applied_key(j, "products") for j in products)]

    # --- Writes ---------------------------------------------------------------------------

    def apply(self, evaluated: list[Evaluated]) -> list[str]:
        """Count the orders and record the rejections of a batch, each order exactly once.

        Returns one outcome per item, in order: counted, duplicate, conflict or rejected
        (an order that would take a total past MAX_TOTAL is rejected too). With
        REDIS_WAIT_REPLICAS it raises NotReplicated when too few replicas confirmed.
        """
        orders = [self._order_ops(e.order, e) for e in evaluated if e.order]
        rejections = [self._rejection_entry(r.message_id, r.kind, e.body, r.order_id, r.reasons)
                      for e in evaluated if (r := e.rejection)]
        oldest = min((int(e.incoming.sent_at.timestamp() * 1000)
                      for e in evaluated if e.incoming.sent_at), default=0)
        book = self._book(rejections, oldest)
        if self.phased:
            outcomes = self._apply_phased(orders, book)
        else:
            call = _Call()
            payload = {"mode": "batch", **self._limits(), "orders": call.bind(orders),
                       "book": call.bind(book)}
            [outcomes] = self._run_calls("batch", [(call.keys, payload)], writes=True)
        by_order = iter(outcomes)
        return [next(by_order) if e.order else "rejected" for e in evaluated]

    def _limits(self) -> dict:
        return {"now": time.time(), "max_total": MAX_TOTAL, "retention": self.retention_seconds,
                "window": self.window_seconds}

    def _book(self, rejections: list[dict], oldest_sent_ms: int) -> dict:
        return {"kind": "book", "rejections": rejections, "oldest_sent_ms": oldest_sent_ms,
                "keys": {"outcomes": OUTCOMES_KEY, "index": REJECTED_INDEX,
                         "by_field": REJECTED_BY_FIELD, "lag": LAG_KEY}}

    def _apply_phased(self, orders: list[dict], book: dict) -> list[str]:
        """The claim / check / parts protocol of the module docstring, call by call."""
        # 1. Claims and checks, one call per slot.
        steps = [(i, None, o["claim"]) for i, o in enumerate(orders)]
        steps += [(i, j, part) for i, o in enumerate(orders) for j, part in enumerate(o["parts"])]
        replies = self._run_slots("check", steps, writes=True, keep_errors=True)
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            # Nothing was applied: take back the claims this attempt made, then fail.
            ours = [op for (_, j, op), r in zip(steps, replies)
                    if j is None and not isinstance(r, Exception) and r[0] == "new"]
            if ours:
                self._run_slots("write", [(None, op) for op in ours], writes=True)
            raise failed[0]
        claims = {i: replies[n] for n, (i, j, _) in enumerate(steps) if j is None}
        checks = {(i, j): replies[n] for n, (i, j, _) in enumerate(steps) if j is not None}

        verdicts, todo, drops, first_of = [], [], [], {}
        for i, o in enumerate(orders):
            claim = o["claim"]
            state, seen = claims[i]
            statuses = [checks[i, j] for j in range(len(o["parts"]))]
            earlier = first_of.setdefault(claim["order_id"], i)
            if earlier != i and orders[earlier]["claim"]["fp"] == claim["fp"]:
                # The same order twice in one batch: the first one decides.
                verdict = dict(verdicts[earlier])
                if verdict["outcome"] == "counted":
                    verdict = {"outcome": "duplicate"}
            elif state == "conflict":
                verdict = {"outcome": "conflict", "first_seen": seen,
                           "reasons": {"order_id": ["Already counted with different content."]}}
            elif any(status == "over" for status, _ in statuses):
                if any(status == "applied" for status, _ in statuses):
                    raise PartlyApplied(f"order {claim['order_id']} is partly applied and its "
                                        "other parts would pass the largest total")
                reasons = next(json.loads(r) for status, r in statuses if status == "over")
                verdict = {"outcome": "rejected", "reasons": reasons}
                drops.append(claim)  # nothing of it was applied: the id is free again
            elif all(status == "applied" for status, _ in statuses):
                verdict = {"outcome": "duplicate"}
            else:
                verdict = {"outcome": "counted"}
                todo += [(i, part) for part, (status, _) in zip(o["parts"], statuses)
                         if status == "fits"]
            verdicts.append(verdict)

        # 2. The parts, the dropped claims and the bookkeeping, one call per slot.
        for i, verdict in enumerate(verdicts):
            if verdict.get("reasons"):
                book["rejections"].append(_order_rejection(orders[i]["rejection"], verdict))
        duplicates = sum(v["outcome"] == "duplicate" for v in verdicts)
        steps = [(i, part) for i, part in todo] + [(None, claim) for claim in drops]
        applied = self._run_slots("write", steps, writes=True, book=book, duplicates=duplicates)
        done = {i for (i, _), now_applied in zip(steps, applied) if i is not None and now_applied}
        outcomes = [v["outcome"] for v in verdicts]
        late = 0
        for i in {i for i, _ in todo} - done:
            outcomes[i] = "duplicate"  # another delivery applied every part meanwhile
            late += 1
        if late:
            self._run_slots("write", [], writes=True, book=self._book([], 0), duplicates=late)
        return outcomes

    def _run_slots(self, mode: str, steps: list[tuple], writes: bool, book: dict | None = None,
                   duplicates: int = 0, keep_errors: bool = False) -> list:
        """Run the steps' ops grouped into one call per slot; one reply per step, in order."""
        by_tag: dict[str, list[int]] = {}
        for n, (*_, op) in enumerate(steps):
            by_tag.setdefault(hash_tag(next(iter(op["keys"].values()))), []).append(n)
        if book is not None:
            by_tag.setdefault(BOOKKEEPING_TAG, [])
        calls, order = [], []
        for tag, members in by_tag.items():
            call = _Call()
            payload = {"mode": mode, **self._limits(),
                       "ops": call.bind([steps[n][-1] for n in members])}
            if tag == BOOKKEEPING_TAG and book is not None:
                payload["book"], payload["duplicates"] = call.bind(book), duplicates
            calls.append((call.keys, payload))
            order.append(members)
        replies = [None] * len(steps)
        for members, reply in zip(order, self._run_calls(mode, calls, writes, keep_errors)):
            if isinstance(reply, Exception):
                reply = [reply] * len(members)
            elif mode == "check":
                reply = json.loads(reply)
            for n, value in zip(members, reply or []):
                replies[n] = value
        return replies

    def _run_calls(self, phase: str, calls: list[tuple[list[str], dict]], writes: bool,
                   keep_errors: bool = False) -> list:
        """Run script calls: one pipeline per node, the nodes in parallel; replies in order.

        A call's error is raised, or with keep_errors left in its place.
        """
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        for n, (keys, _) in enumerate(calls):
            client = self._client_for(keys[0])
            groups.setdefault(_node_name(client), (client, []))[1].append(n)
        jobs = [(client, [calls[n] for n in members]) for client, members in groups.values()]
        if self._nodes and len(jobs) > 1:
            results = list(self._nodes.map(lambda job: self._pipeline_calls(*job, writes), jobs))
        else:
            results = [self._pipeline_calls(*job, writes) for job in jobs]
        replies = [None] * len(calls)
        for (_, members), node_replies in zip(groups.values(), results):
            for n, reply in zip(members, node_replies):
                replies[n] = reply
        if not keep_errors:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def _client_for(self, key: str) -> redis.Redis:
        if not self.cluster:
            return self.redis
        node = self.redis.nodes_manager.get_node_from_slot(self.redis.keyslot(key))
        return self.redis.get_redis_connection(node)

    def _pipeline_calls(self, client: redis.Redis, calls: list, writes: bool) -> list:
        """One node's script calls in one pipeline (then WAIT): their replies, or raise."""
        wait = self.wait_replicas and writes
        # WAIT counts the replicas holding this connection's writes, so it goes on the
        # scripts' connection: all in one pipeline, one round trip.
        after = [("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)] if wait else []
        try:
            replies = _evalsha_each(client, self._apply, [
                (keys, [json.dumps(payload, ensure_ascii=False, separators=(",", ":"))])
                for keys, payload in calls], *after)
        except (redis.ConnectionError, redis.TimeoutError):
            self._refresh_topology()
            raise
        confirmed = replies.pop() if wait else None
        for reply in replies + [confirmed]:
            if isinstance(reply, (redis.exceptions.AskError, redis.exceptions.TryAgainError,
                                  redis.exceptions.ClusterDownError)):
                self._refresh_topology()
                name = type(reply).__name__.removesuffix("Error").upper()
                raise TopologyChanged(f"{name} {reply}: the cluster's slots changed; retry")
        if wait and isinstance(confirmed, Exception):
            raise confirmed
        failed = any(isinstance(reply, Exception) for reply in replies)
        if wait and confirmed < self.wait_replicas and not failed:
            # The calls ran: a retry finds these orders applied and calls them duplicates.
            raise NotReplicated(f"{confirmed} of {self.wait_replicas} replica(s) confirmed "
                                f"the batch within {WAIT_TIMEOUT_MS} ms")
        return replies

    def _refresh_topology(self):
        if self.cluster:
            self.redis.nodes_manager.initialize()

    def _order_ops(self, order: Order, evaluated: Evaluated) -> dict:
        """The claim, the parts and the would-be rejection record of one order."""
        order_id, user_id = order.order_id, order.user_id
        day = order.placed_at.date().isoformat()
        month, shard = day[:7], self.user_shard(user_id)
        cents = str(order.value_cents)
        claim = {"kind": "claim", "order_id": order_id, "fp": order.fingerprint,
                 "keys": {"order": order_key(order_id)}}
        mark = applied_mark(order_id, order.fingerprint)
        user = {"kind": "user", "order_id": order_id, "mark": mark, "cents": cents, "day": day,
                "ts": int(order.placed_at.timestamp() * 1000),
                "keys": {"user": user_key(user_id), "days": user_days_key(user_id),
                         "applied": user_applied_key(user_id)}}
        totals = {"kind": "shard", "order_id": order_id, "mark": mark, "user_id": user_id,
                  "cents": cents,
                  "units": str(sum(line.quantity for line in order.lines)),
                  "correction": _correction(order),
                  "keys": {"global": global_key(shard), "day": day_key(day, shard),
                           "customers": day_customers_key(day, shard),
                           "month": month_key(month, shard),
                           "spend": top_users_key("spend", shard=shard),
                           "orders": top_users_key("orders", shard=shard),
                           "day_spend": top_users_key("spend", day=day, shard=shard),
                           "day_orders": top_users_key("orders", day=day, shard=shard),
                           "month_spend": top_users_key("spend", month=month, shard=shard),
                           "month_orders": top_users_key("orders", month=month, shard=shard),
                           "outcomes": outcomes_key(shard),
                           "corrections": corrections_key(shard),
                           "applied": shard_applied_key(shard, "users")}}
        by_shard: dict[int, list[dict]] = {}
        for product_id, units, line_cents in _products(order):
            j = self.product_shard(product_id)
            by_shard.setdefault(j, []).append({"id": product_id, "units": str(units),
                                               "cents": str(line_cents),
                                               "keys": {"product": product_key(product_id, j)}})
        products = [{"kind": "products", "order_id": order_id, "mark": mark, "products": entries,
                     "keys": {"applied": shard_applied_key(j, "products"),
                              "revenue": top_products_key("revenue", j),
                              "units": top_products_key("units", j)}}
                    for j, entries in sorted(by_shard.items())]
        # Needed only if the order is rejected here: a conflict or a total past the limit.
        message_id = evaluated.incoming.message_id
        rejection = {"message_id": message_id, "order_id": order_id,
                     "keys": {"rec": rejected_key(message_id),
                              "ref": rejected_order_key(order_id)},
                     **kept_body(evaluated.body, self.max_body_bytes)}
        return {"claim": claim, "parts": [user, totals, *products], "rejection": rejection}

    def _rejection_entry(self, message_id: str, kind: str, body: str, order_id: str | None,
                         reasons: dict, first_seen: str = "") -> dict:
        keys = {"rec": rejected_key(message_id)}
        if order_id:
            keys["ref"] = rejected_order_key(order_id)
        return {"message_id": message_id, "kind": kind, "order_id": order_id or "",
                "first_seen": first_seen, "reasons": json.dumps(reasons, ensure_ascii=False),
                "fields": sorted(reasons), "keys": keys, **kept_body(body, self.max_body_bytes)}

    # --- Reads ----------------------------------------------------------------------------

    def _pipeline(self, one_slot: bool = False):
        # MULTI/EXEC gives a consistent snapshot where the keys allow it: on a cluster only
        # within one slot.
        return self.redis.pipeline(transaction=one_slot or not self.cluster)

    def _summed(self, keys: list[str], fields: tuple[str, ...]) -> list[int]:
        """The fields summed over the hashes."""
        pipe = self._pipeline()
        for key in keys:
            pipe.hmget(key, *fields)
        totals = [0] * len(fields)
        for values in pipe.execute():
            totals = [t + int(v or 0) for t, v in zip(totals, values)]
        return totals

    def user(self, user_id: str) -> UserRecord | None:
        """The user's hash, or None when the user has no counted order: O(1)."""
        count, cents, first, last = self.redis.hmget(
            user_key(user_id), "order_count", "total_spend_cents", "first_order_ts",
            "last_order_ts")
        if count is None:
            return None
        return UserRecord(user_id, int(count), int(cents or 0), _int_or_none(first),
                          _int_or_none(last))

    def user_stats(self, user_id: str) -> UserStats | None:
        """A user's all-time totals, or None when the user has no counted order."""
        record = self.user(user_id)
        return record and UserStats(user_id, record.order_count, record.total_spend_cents)

    def user_days(self, user_id: str, days: list[str]) -> list[tuple[int, int]] | None:
        """(orders, cents) of a user on each day (YYYY-MM-DD), or None for an unknown user."""
        pipe = self._pipeline(one_slot=True)
        pipe.hexists(user_key(user_id), "order_count")
        pipe.hmget(user_days_key(user_id), days)
        known, packed = pipe.execute()
        if not known:
            return None
        return [tuple(map(int, value.split(":"))) if value else (0, 0) for value in packed]

    def kpis(self, buckets: list[str], monthly: bool = False) -> list[tuple[int, ...]]:
        """KPI_FIELDS of each day (YYYY-MM-DD) or month (YYYY-MM), summed over the shards."""
        key = month_key if monthly else day_key
        # One pipeline, O(buckets x shards); a consistent snapshot on a standalone Redis.
        pipe = self._pipeline()
        for bucket in buckets:
            for shard in range(self.shards):
                pipe.hmget(key(bucket, shard), *KPI_FIELDS)
        replies = pipe.execute()
        figures = []
        for b in range(len(buckets)):
            shares = replies[b * self.shards:(b + 1) * self.shards]
            figures.append(tuple(sum(int(share[f] or 0) for share in shares)
                                 for f in range(len(KPI_FIELDS))))
        return figures

    def product(self, product_id: str) -> tuple[int, int, int] | None:
        """A product's (units sold, revenue cents, orders), or None if never sold: O(1)."""
        units, cents, orders = self.redis.hmget(
            product_key(product_id, self.product_shard(product_id)), "units_sold",
            "revenue_cents", "orders")
        if orders is None:
            return None
        return int(units or 0), int(cents or 0), int(orders)

    def global_stats(self) -> GlobalStats:
        """The platform's all-time totals, summed over the shards (zeros when empty)."""
        return GlobalStats(*self._summed([global_key(s) for s in range(self.shards)],
                                         ("total_orders", "total_revenue_cents")))

    def outcomes(self) -> dict[str, int]:
        """How many messages ended in each outcome."""
        keys = [outcomes_key(s) for s in range(self.shards)] + [OUTCOMES_KEY]
        return dict(zip(OUTCOMES, self._summed(keys, OUTCOMES)))

    def corrected(self) -> int:
        """How many counted orders had their value corrected (ORDER_VALUE_MISMATCH=correct)."""
        [count] = self._summed([outcomes_key(s) for s in range(self.shards)], ("corrected",))
        return count

    def correction(self, order_id: str, user_id: str) -> dict | None:
        """What the mismatch policy changed in a counted order, or None."""
        raw = self.redis.hget(corrections_key(self.user_shard(user_id)), order_id)
        return json.loads(raw) if raw else None

    def top(self, keys_of, second_keys_of, n: int, bounds_of=None) -> list[tuple[str, int, int]]:
        """ranked() over every shard, merged: exact, as each member lives in one shard.

        keys_of(shard), second_keys_of(shard) and bounds_of(shard) give that shard's sorted
        sets and their bounds (see ranked).
        """
        shards = range(self.shards)
        if any(len(keys_of(shard)) > 1 for shard in shards):
            # Several sets per shard (a range of days and months): one pass over all shards.
            return self._ranked_shards([(keys_of(shard), second_keys_of(shard),
                                         bounds_of(shard) if bounds_of else None)
                                        for shard in shards], n)
        if not self.cluster:
            # One set per shard (all-time, a day, a month): every shard's top in one pipeline.
            replies = _evalsha_each(self.redis, self._ranked, [
                ([*keys_of(shard), *second_keys_of(shard)], [n]) for shard in shards])
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            merged = [entry for flat in replies for entry in _triples(flat)]
        else:
            merged = [entry for shard in shards
                      for entry in self.ranked(keys_of(shard), second_keys_of(shard), n)]
        return sorted(merged, key=lambda entry: (-entry[1], entry[0].encode("utf-8",
                                                                              "surrogatepass")))[:n]

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
        """Rejected messages within the retention, newest first."""
        ids = self.redis.zrevrangebyscore(REJECTED_INDEX, "+inf",
                                          time.time() - self.retention_seconds,
                                          start=offset, num=limit)
        # A record may have expired since the index was last trimmed: skipped.
        return [r for r in map(self.rejection, ids) if r]

    def rejection(self, some_id: str) -> dict | None:
        """One rejected message by message id or order id, with its body and reasons.

        A body larger than MAX_ORDER_BYTES was kept as its first KEPT_BODY_BYTES, with
        body_bytes (its size) and body_sha256.
        """
        record = self.redis.hgetall(rejected_key(some_id))
        if not record:
            message_id = self.redis.get(rejected_order_key(some_id))
            record = self.redis.hgetall(rejected_key(message_id)) if message_id else {}
        if not record:
            return None
        record["reasons"] = json.loads(record["reasons"])
        record["at"] = float(record["at"])
        if "body_bytes" in record:
            record["body_bytes"] = int(record["body_bytes"])
        return record

    def forget_rejection(self, record: dict) -> bool:
        """Delete a rejection record as read by rejection() and uncount it.

        False when it is gone, or was written again since (the message was rejected anew).
        """
        keys = [rejected_key(record["message_id"]), REJECTED_INDEX, OUTCOMES_KEY]
        if record.get("order_id"):
            keys.append(rejected_order_key(record["order_id"]))
        return bool(self._forget_rejection(keys=keys, args=[repr(record["at"])]))

    def ranked(self, keys: list[str], second_keys: list[str], n: int,
               bounds: list[str | None] | None = None) -> list[tuple[str, int, int]]:
        """The n best members of the summed sorted sets, ties by member, with a second measure.

        One set: one round trip, O(log N + n). Several: app.ranking reads them a page at a
        time in the API process, every command bounded, two pipelined round trips a round.
        bounds[i], if any: a set holding every member of keys[i] with at least its score
        there (a month's ranking for one of its days); keys sharing one read through it.
        """
        bounds = bounds or [None] * len(keys)
        if not keys or not len(keys) == len(second_keys) == len(bounds) or n < 1:
            raise ValueError("ranked needs as many second keys and bounds as keys, and n >= 1")
        if len(keys) == 1:
            # On a cluster two keys in two slots cannot share a call: the second measure
            # then comes next (a shard's rankings share its slot, so they can).
            apart = self.cluster and (self.redis.keyslot(keys[0])
                                      != self.redis.keyslot(second_keys[0]))
            flat = self._ranked(keys=keys if apart else [*keys, *second_keys], args=[n])
            top = _triples(flat)
            if apart and top:
                seconds = self.redis.zmscore(second_keys[0], [member for member, _, _ in top])
                top = [(member, score, int(second or 0))
                       for (member, score, _), second in zip(top, seconds)]
            return top
        return self._ranked_shards([(keys, second_keys, bounds)], n)

    def _ranked_shards(self, shards: list[tuple[list[str], list[str], list[str | None] | None]],
                       n: int) -> list[tuple[str, int, int]]:
        """ranked() over the (keys, second keys, bounds) of shards, each member in one shard.

        One pass (app.ranking.ranked_groups): the shards' reads of a round share one
        pipeline, and they share the n-th total, so a shard holding little of the top is
        read no deeper than that needs.
        """
        sources, groups, bounded = [], [], set()
        for keys, second_keys, bounds in shards:
            ranked_by, second, shard_bounded = _sources(keys, second_keys,
                                                        bounds or [None] * len(keys))
            first = len(sources)
            bounded |= {first + i for i in shard_bounded}
            groups.append((range(first, first + len(ranked_by)),
                           range(first + len(ranked_by), first + len(ranked_by) + len(second))))
            sources += [*ranked_by, *second]
        top = ranking.ranked_groups(_SortedSets(self.redis, sources), groups, n, bounded=bounded)
        return [(member, int(score), int(second)) for member, score, second in top]

    def ping(self) -> bool:
        """True when Redis answers."""
        return bool(self.redis.ping())



def _evalsha_each(client: redis.Redis, script, calls: list[tuple[list[str], list]],
                  *after: tuple) -> list:
    """EVALSHA of script per (keys, args) call, then the after commands, in one pipeline.

    The replies in order, errors in their place. A NoScriptError (a new or restarted Redis:
    no call ran) loads the script and sends the pipeline once more.
    """
    # EVALSHA itself: a registered script in a pipeline costs a SCRIPT EXISTS round trip.
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        for command in after:
            pipe.execute_command(*command)
        replies = pipe.execute(raise_on_error=False)
        if attempt or not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            return replies
        client.script_load(script.script)


def _triples(flat: list) -> list[tuple[str, int, int]]:
    """The RANKED script's flat reply as (member, score, second score) triples."""
    return [(flat[i], int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw is not None else None


def _products(order: Order) -> list[tuple[str, int, int]]:
    """(product id, units, cents) per product: lines of the same product merged."""
    merged: dict[str, tuple[int, int]] = {}
    for line in order.lines:
        units, cents = merged.get(line.product_id, (0, 0))
        merged[line.product_id] = (units + line.quantity, cents + line.line_cents)
    return [(product_id, units, cents) for product_id, (units, cents) in merged.items()]


def _node_name(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def _order_rejection(entry: dict, verdict: dict) -> dict:
    """The rejection record of an order refused here: a conflict or a total past the limit."""
    reasons = verdict["reasons"]
    return {**entry, "kind": "conflict" if verdict["outcome"] == "conflict" else "invalid",
            "first_seen": verdict.get("first_seen", ""), "fields": sorted(reasons),
            "reasons": json.dumps(reasons, ensure_ascii=False)}


def _correction(order: Order) -> str:
    """What the mismatch policy changed, as JSON, or '' when nothing."""
    if order.corrected_from_cents is None:
        return ""
    return json.dumps({"sent_cents": order.corrected_from_cents,
                       "counted_cents": order.value_cents})


def kept_body(body: str, max_bytes: int) -> dict:
    """What a rejection record keeps of a body: whole, or the head, size and SHA-256."""
    data = body.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return {"body": body}
    # Cut on a character boundary: a split UTF-8 sequence at the end is dropped.
    return {"body": data[:KEPT_BODY_BYTES].decode("utf-8", "ignore"),
            "body_bytes": len(data), "body_sha256": hashlib.sha256(data).hexdigest()}




# --- Batch files (app/files): KPI tables and execution records ---------------------------
# The seed's DynamoDB tables, in Redis: OrderKPIs by order_date, CategoryKPIs by
# (category, order_date). Exact integers are stored; rates and averages are derived on read.

# Every key of the files path shares the {files} hash tag: WRITE_KPIS touches several at
# once, which a cluster runs only within one slot (the KPI tables are small).
KPI_DATES_KEY = "kpi:{files}:orders:dates"
# order_date -> rank of the table snapshot its KPIs were computed from (see WRITE_KPIS).
KPI_SNAPSHOTS_KEY = "kpi:{files}:snapshots"
EXECUTIONS_KEY = "files:{files}:executions"
ORDER_KPI_FIELDS = ("total_orders", "total_revenue_cents", "total_items_sold",
                    "unique_customers", "returned_orders")


def order_kpi_key(order_date: str) -> str:
    """Hash of one order_date's order KPIs (OrderKPIs item)."""
    return f"kpi:{{files}}:orders:{order_date}"


def category_kpi_key(order_date: str) -> str:
    """Hash of one order_date's category KPIs: field category, value a JSON array."""
    return f"kpi:{{files}}:categories:{order_date}"


def execution_key(execution_id: str) -> str:
    """JSON record of one files execution (the copy of results/<id>.json the API serves)."""
    return f"files:{{files}}:execution:{_part(execution_id)}"


def execution_settled_key(execution_id: str) -> str:
    """Marker that an execution was settled (finished or failed) once."""
    return f"files:{{files}}:execution-settled:{_part(execution_id)}"


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
        return cls(connect(url, decode_responses=True, socket_timeout=10,
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
