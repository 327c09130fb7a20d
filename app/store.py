"""The Redis gateway: every key name, the atomic update script and the reads."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import date
from urllib.parse import quote

import redis

from app.orders import Evaluated, Order
from app.settings import Settings

GLOBAL_KEY = "global:stats"
OUTCOMES_KEY = "pipeline:outcomes"
REJECTED_INDEX = "rejected"
CORRECTIONS_KEY = "corrections"
# Where RANKED adds up several sorted sets; it exists only while the script runs.
RANKED_SCRATCH = "ranked:scratch"
REJECTED_BY_FIELD = "pipeline:rejected-by-field"
# When the last batch was applied and when its oldest message had been sent (ms).
LAG_KEY = "pipeline:lag"
TASK_EVENTS_KEY = "pipeline:task-events"
OUTCOMES = ("counted", "duplicate", "rejected", "conflict")
# The day and month hashes' figures, in the order Store.kpis returns them.
KPI_FIELDS = ("total_orders", "total_revenue_cents", "total_items_sold", "unique_customers")
# The largest total kept (cents, units or orders, per user, product, day, month or all):
# sorted-set scores and Lua numbers are doubles, exact up to 2^53. An order that would
# take any total past it is rejected whole, with the figure named in its reasons.
MAX_TOTAL = 2**53 - 1
# What a rejection record keeps of a body larger than MAX_ORDER_BYTES.
KEPT_BODY_BYTES = 4096
# How long a WAIT for replicas may block; well below the client's 5 s socket timeout.
WAIT_TIMEOUT_MS = 1000


class NotReplicated(redis.RedisError):
    """Fewer replicas than REDIS_WAIT_REPLICAS confirmed a batch in time: retry it."""


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
    """Hash of one rejected message: body, reasons, time (expires after the retention)."""
    return f"rejected:{_part(message_id)}"


def rejected_order_key(order_id: str) -> str:
    """The message id of an order id's latest rejection; expires with that record."""
    # A key per order rather than one hash, so each pointer expires with its record.
    return f"rejected-order:{_part(order_id)}"


# One call applies a whole batch: for each order the 'seen' check and every increment
# happen together, so a crash or a redelivery can never count half an order or count it
# twice. Money arrives as integer cents in strings; the decimal strings kept beside them
# (total_spend, total_revenue) are for readers of the seeds' layout. ARGV: the batch as
# JSON, the time, MAX_TOTAL, the rejected records' retention in seconds.
APPLY_BATCH = """
local global_key, outcomes_key, rejected_index = KEYS[1], KEYS[2], KEYS[3]
local top_users_spend, top_users_orders = KEYS[4], KEYS[5]
local top_products_revenue, top_products_units = KEYS[6], KEYS[7]
local corrections_key, rejected_by_field, lag_key = KEYS[8], KEYS[9], KEYS[10]
local batch = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
local max_total = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])

local function money(cents)
  -- From the digits, not from a division of doubles: exact for every total up to max_total.
  local sign = ''
  if cents < 0 then sign = '-'; cents = -cents end
  local digits = string.format('%03d', cents)
  return sign .. string.sub(digits, 1, -3) .. '.' .. string.sub(digits, -2)
end

-- Redis does not roll a script back when a command fails half-way, so everything that
-- could fail is checked before the first write: 1. the type of every key.
local expected = {}
for _, key in ipairs({global_key, outcomes_key, corrections_key, rejected_by_field,
                      lag_key}) do
  expected[key] = 'hash'
end
for _, key in ipairs({rejected_index, top_users_spend, top_users_orders,
                      top_products_revenue, top_products_units}) do
  expected[key] = 'zset'
end
for _, o in ipairs(batch.orders) do
  expected[o.order_key] = 'string'
  expected[o.user_key] = 'hash'
  expected[o.day_key] = 'hash'
  expected[o.day_customers_key] = 'set'
  expected[o.month_key] = 'hash'
  expected[o.user_days_key] = 'hash'
  for _, key in ipairs(o.user_rankings) do expected[key] = 'zset' end
  for _, p in ipairs(o.products) do expected[p[1]] = 'hash' end
  expected[o.rejection_key] = 'hash'
  if o.order_ref_key ~= '' then expected[o.order_ref_key] = 'string' end
end
for _, r in ipairs(batch.rejections) do
  expected[r.key] = 'hash'
  if r.order_ref_key ~= '' then expected[r.order_ref_key] = 'string' end
end
for key, kind in pairs(expected) do
  local actual = redis.call('TYPE', key).ok
  if actual ~= 'none' and actual ~= kind then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. actual .. ', not a ' .. kind)
  end
end

-- 2. Every figure an increment touches: a whole number within max_total now, and still
-- within it after the increment. Scores and Lua numbers are doubles, exact only up to
-- 2^53, so max_total bounds the integer hash fields too. values holds each figure as the
-- orders accepted so far in this batch leave it.
local values = {}
local function remember(key, field, raw, is_score)
  local value = 0
  if raw then
    value = tonumber(raw)
    -- HINCRBY takes only canonical digits: not '1e3', '007' or '-0' as Lua would.
    local digits = is_score or raw == '0' or string.match(raw, '^%-?[1-9]%d*$')
    if not digits or not value or value ~= math.floor(value) or math.abs(value) > max_total then
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
  if is_score then raw = redis.call('ZSCORE', key, field)
  else raw = redis.call('HGET', key, field) end
  return remember(key, field, raw, is_score)
end
-- Reads the hash fields of additions not read yet, one HMGET per key.
local function read_ahead(list)
  local wanted, order = {}, {}
  for _, a in ipairs(list) do
    local key, field, is_score = a[1], a[2], a[4]
    if not is_score and not (values[key] and values[key][field]) then
      if not wanted[key] then wanted[key] = {}; order[#order + 1] = key end
      table.insert(wanted[key], field)
    end
  end
  for _, key in ipairs(order) do
    local raws = redis.call('HMGET', key, unpack(wanted[key]))
    for i, field in ipairs(wanted[key]) do remember(key, field, raws[i], false) end
  end
end
-- A user's day is one packed field "<orders>:<cents>".
local function current_day(key, day)
  values[key] = values[key] or {}
  local pair = values[key][day]
  if pair == nil then
    pair = {0, 0}
    local raw = redis.call('HGET', key, day)
    if raw then
      local orders, cents = string.match(raw, '^(%d+):(%d+)$')
      pair = {tonumber(orders), tonumber(cents)}
      if not orders or pair[1] > max_total or pair[2] > max_total then
        error({err = 'ERR corrupt figure ' .. key .. ' ' .. day .. ': ' .. raw})
      end
    end
    values[key][day] = pair
  end
  return pair
end
local customers = {}  -- set key -> user -> true: day customers added earlier in this batch
local function is_day_customer(o)
  customers[o.day_customers_key] = customers[o.day_customers_key] or {}
  return customers[o.day_customers_key][o.user_id]
    or redis.call('SISMEMBER', o.day_customers_key, o.user_id) == 1
end

-- What counting one order adds, one entry per figure: {key, field, by, is_score, unit,
-- what, product}. unit is cents, units or orders; what names the figure (of the product,
-- if any) in a rejection. No figure appears twice: lines arrive merged per product.
local function additions(o)
  local cents, units, u, r = tonumber(o.cents), tonumber(o.units), o.user_id, o.user_rankings
  local list = {
    {o.user_key, 'total_spend_cents', cents, false, 'cents', "the user's spend"},
    {o.user_key, 'order_count', 1, false, 'orders', "the user's order count"},
    {global_key, 'total_revenue_cents', cents, false, 'cents', 'the total revenue'},
    {global_key, 'total_orders', 1, false, 'orders', 'the total order count'},
    {top_users_spend, u, cents, true, 'cents', "the user's spend"},
    {top_users_orders, u, 1, true, 'orders', "the user's order count"},
    {o.day_key, 'total_orders', 1, false, 'orders', "the day's order count"},
    {o.day_key, 'total_revenue_cents', cents, false, 'cents', "the day's revenue"},
    {o.day_key, 'total_items_sold', units, false, 'units', "the day's items sold"},
    {r[1], u, cents, true, 'cents', "the user's spend that day"},
    {r[2], u, 1, true, 'orders', "the user's orders that day"},
    {r[3], u, cents, true, 'cents', "the user's spend that month"},
    {r[4], u, 1, true, 'orders', "the user's orders that month"},
    {o.month_key, 'total_orders', 1, false, 'orders', "the month's order count"},
    {o.month_key, 'total_revenue_cents', cents, false, 'cents', "the month's revenue"},
    {o.month_key, 'total_items_sold', units, false, 'units', "the month's items sold"},
  }
  if not is_day_customer(o) then
    list[#list + 1] = {o.day_key, 'unique_customers', 1, false, 'orders', "the day's customers"}
  end
  if current(r[4], u, true) == 0 then
    list[#list + 1] = {o.month_key, 'unique_customers', 1, false, 'orders',
                       "the month's customers"}
  end
  for _, p in ipairs(o.products) do
    local p_units, p_cents = tonumber(p[3]), tonumber(p[4])
    list[#list + 1] = {p[1], 'units_sold', p_units, false, 'units', 'units sold', p[2]}
    list[#list + 1] = {p[1], 'revenue_cents', p_cents, false, 'cents', 'revenue', p[2]}
    list[#list + 1] = {p[1], 'orders', 1, false, 'orders', 'order count', p[2]}
    list[#list + 1] = {top_products_revenue, p[2], p_cents, true, 'cents', 'revenue', p[2]}
    list[#list + 1] = {top_products_units, p[2], p_units, true, 'units', 'units sold', p[2]}
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
-- Reasons (marshmallow's shape) when counting o would take a figure past max_total, or nil;
-- when it fits, values moves on to the figures counting it leaves.
local function over_limit(o)
  local list, after = additions(o), {}
  read_ahead(list)
  for i, a in ipairs(list) do
    after[i] = current(a[1], a[2], a[4]) + a[3]
    if after[i] > max_total then return past_limit(a) end
  end
  local day = current_day(o.user_days_key, o.day)
  if day[1] + 1 > max_total or day[2] + tonumber(o.cents) > max_total then
    return {order_value = {"Counting this order would take the user's day past the largest "
                           .. 'total kept exactly.'}}
  end
  for i, a in ipairs(list) do values[a[1]][a[2]] = after[i] end
  values[o.user_days_key][o.day] = {day[1] + 1, day[2] + tonumber(o.cents)}
  customers[o.day_customers_key][o.user_id] = true
  return nil
end

-- Each order's verdict, decided before any write.
local verdicts = {}
local markers = {}  -- order key -> fingerprint of an order counted earlier in this batch
local counters = {}  -- fields of the bookkeeping hashes the batch will add to
for _, field in ipairs({'counted', 'duplicate', 'conflict', 'rejected', 'corrected'}) do
  counters[#counters + 1] = {outcomes_key, field}
end
for i, o in ipairs(batch.orders) do
  local seen = markers[o.order_key] or redis.call('GET', o.order_key)
  if seen == o.fingerprint then
    verdicts[i] = {outcome = 'duplicate'}
  elseif seen then
    verdicts[i] = {outcome = 'conflict', first_seen = seen,
                   reasons = {order_id = {'Already counted with different content.'}}}
  else
    local reasons = over_limit(o)
    if reasons then
      verdicts[i] = {outcome = 'rejected', reasons = reasons}
    else
      markers[o.order_key] = o.fingerprint
      verdicts[i] = {outcome = 'counted'}
    end
  end
  for field in pairs(verdicts[i].reasons or {}) do
    counters[#counters + 1] = {rejected_by_field, field}
  end
end
for _, r in ipairs(batch.rejections) do
  for _, field in ipairs(r.fields) do counters[#counters + 1] = {rejected_by_field, field} end
end
local room = #batch.orders + #batch.rejections
for _, c in ipairs(counters) do
  if current(c[1], c[2], false) + room > max_total then
    return redis.error_reply('ERR counter ' .. c[1] .. ' ' .. c[2] .. ' is full')
  end
end

-- Writes from here on; none of them can fail.
local recorded = false
local function record_rejection(r)
  -- A message rejected again (redelivered, or requeued and still invalid) replaces its
  -- record, with a fresh time and expiry, and is not counted twice.
  local fresh = redis.call('EXISTS', r.key) == 0
  redis.call('DEL', r.key)
  redis.call('HSET', r.key, 'message_id', r.message_id, 'kind', r.kind, 'body', r.body,
             'reasons', r.reasons, 'order_id', r.order_id, 'at', now,
             'first_seen', r.first_seen)
  if r.body_sha256 then
    redis.call('HSET', r.key, 'body_bytes', r.body_bytes, 'body_sha256', r.body_sha256)
  end
  redis.call('EXPIRE', r.key, retention)
  redis.call('ZADD', rejected_index, now, r.message_id)
  if r.order_ref_key ~= '' then
    redis.call('SET', r.order_ref_key, r.message_id, 'EX', retention)
  end
  if fresh then
    redis.call('HINCRBY', outcomes_key, r.kind == 'conflict' and 'conflict' or 'rejected', 1)
    for _, field in ipairs(r.fields) do redis.call('HINCRBY', rejected_by_field, field, 1) end
  end
  recorded = true
end
local function order_rejection(o, verdict)
  local fields = {}
  for field in pairs(verdict.reasons) do fields[#fields + 1] = field end
  return {key = o.rejection_key, message_id = o.message_id,
          kind = verdict.outcome == 'conflict' and 'conflict' or 'invalid', body = o.body,
          body_bytes = o.body_bytes, body_sha256 = o.body_sha256, order_id = o.order_id,
          order_ref_key = o.order_ref_key, first_seen = verdict.first_seen or '',
          fields = fields, reasons = cjson.encode(verdict.reasons)}
end
local results = {}
for i, o in ipairs(batch.orders) do
  local verdict = verdicts[i]
  results[i] = verdict.outcome
  if verdict.outcome == 'duplicate' then
    redis.call('HINCRBY', outcomes_key, 'duplicate', 1)
  elseif verdict.outcome ~= 'counted' then
    record_rejection(order_rejection(o, verdict))
  else
    redis.call('SET', o.order_key, o.fingerprint)
    local spend = redis.call('HINCRBY', o.user_key, 'total_spend_cents', o.cents)
    redis.call('HINCRBY', o.user_key, 'order_count', 1)
    redis.call('HSET', o.user_key, 'total_spend', money(spend))
    local first = tonumber(redis.call('HGET', o.user_key, 'first_order_ts') or '')
    if not first or o.ts < first then redis.call('HSET', o.user_key, 'first_order_ts', o.ts) end
    local last = tonumber(redis.call('HGET', o.user_key, 'last_order_ts') or '')
    if not last or o.ts > last then redis.call('HSET', o.user_key, 'last_order_ts', o.ts) end
    local revenue = redis.call('HINCRBY', global_key, 'total_revenue_cents', o.cents)
    redis.call('HINCRBY', global_key, 'total_orders', 1)
    redis.call('HSET', global_key, 'total_revenue', money(revenue))
    redis.call('ZINCRBY', top_users_spend, o.cents, o.user_id)
    redis.call('ZINCRBY', top_users_orders, 1, o.user_id)
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
    -- One packed field per day keeps a user's days in one small (listpack) hash; values
    -- already holds what it becomes.
    local day = values[o.user_days_key][o.day]
    redis.call('HSET', o.user_days_key, o.day, string.format('%d:%d', day[1], day[2]))
    -- One entry per product, so 'orders' counts the order once however many lines.
    for _, p in ipairs(o.products) do
      redis.call('HINCRBY', p[1], 'units_sold', p[3])
      redis.call('HINCRBY', p[1], 'revenue_cents', p[4])
      redis.call('HINCRBY', p[1], 'orders', 1)
      redis.call('ZINCRBY', top_products_revenue, p[4], p[2])
      redis.call('ZINCRBY', top_products_units, p[3], p[2])
    end
    redis.call('HINCRBY', outcomes_key, 'counted', 1)
    if o.correction ~= '' then
      redis.call('HSET', corrections_key, o.order_id, o.correction)
      redis.call('HINCRBY', outcomes_key, 'corrected', 1)
    end
  end
end
for _, r in ipairs(batch.rejections) do
  record_rejection(r)
end
if recorded then
  -- Records expire by themselves; their index entries go once older than the retention.
  redis.call('ZREMRANGEBYSCORE', rejected_index, '-inf', '(' .. (now - retention))
end
if batch.oldest_sent_ms > 0 then
  redis.call('HSET', lag_key, 'oldest_sent_ms', batch.oldest_sent_ms,
             'applied_ms', math.floor(now * 1000))
end
return results
"""
BATCH_KEYS = [GLOBAL_KEY, OUTCOMES_KEY, REJECTED_INDEX, top_users_key("spend"),
              top_users_key("orders"), top_products_key("revenue"), top_products_key("units"),
              CORRECTIONS_KEY, REJECTED_BY_FIELD, LAG_KEY]

# Removes a rejection record and its count, together, unless it was written again (its
# time changed) since it was read. KEYS: the record, the index, the outcomes, then the
# order's pointer if it has an order id. ARGV[1]: the record's time as read.
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


class Store:
    """Reads and atomic writes of the aggregates in one Redis database."""

    def __init__(self, client: redis.Redis, settings: Settings | None = None):
        settings = settings or Settings()
        self.redis = client
        self.wait_replicas = settings.redis_wait_replicas
        self.retention_seconds = settings.rejected_retention_days * 86400
        self.max_body_bytes = settings.max_order_bytes
        self._apply_batch = client.register_script(APPLY_BATCH)
        self._forget_rejection = client.register_script(FORGET_REJECTION)
        self._ranked = client.register_script(RANKED)

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None, **options) -> "Store":
        """A Store on a new client for the Redis URL."""
        options.setdefault("socket_timeout", 5)
        options.setdefault("socket_connect_timeout", 5)
        return cls(redis.Redis.from_url(url, decode_responses=True, **options), settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        """The Store of REDIS_URL with the settings' retention, body limit and WAIT."""
        return cls.from_url(settings.redis_url, settings)

    def apply(self, evaluated: list[Evaluated]) -> list[str]:
        """Count the orders and record the rejections of a batch in one round trip.

        Returns one outcome per item, in order: counted, duplicate, conflict or rejected
        (an order that would take a total past MAX_TOTAL is rejected too). With
        REDIS_WAIT_REPLICAS it raises NotReplicated when too few replicas confirmed.
        """
        orders = [e for e in evaluated if e.order]
        batch = {
            "orders": [self._order_entry(e.order, e) for e in orders],
            "rejections": [self._rejection_entry(r.message_id, r.kind, r.body, r.order_id,
                                                 r.reasons)
                           for r in (e.rejection for e in evaluated) if r],
            "oldest_sent_ms": min((int(e.incoming.sent_at.timestamp() * 1000)
                                   for e in evaluated if e.incoming.sent_at), default=0),
        }
        by_order = iter(self._run_batch(batch))
        return [next(by_order) if e.order else "rejected" for e in evaluated]

    def _run_batch(self, batch: dict) -> list[str]:
        args = [json.dumps(batch, ensure_ascii=False), time.time(), MAX_TOTAL,
                self.retention_seconds]
        if not self.wait_replicas:
            return self._apply_batch(keys=BATCH_KEYS, args=args)
        results, confirmed = self._script_then_wait(args)
        if isinstance(results, redis.exceptions.NoScriptError):  # a new or restarted primary
            self.redis.script_load(APPLY_BATCH)
            results, confirmed = self._script_then_wait(args)
        for reply in (results, confirmed):
            if isinstance(reply, Exception):
                raise reply
        if confirmed < self.wait_replicas:
            # The script ran: a retry finds these orders counted and calls them duplicates.
            raise NotReplicated(f"{confirmed} of {self.wait_replicas} replica(s) confirmed "
                                f"the batch within {WAIT_TIMEOUT_MS} ms")
        return results

    def _script_then_wait(self, args: list) -> list:
        """The batch script, then WAIT: the replies, errors included."""
        # WAIT counts the replicas holding this connection's writes, so it goes on the
        # script's connection: both in one pipeline, one round trip.
        pipe = self.redis.pipeline(transaction=False)
        pipe.evalsha(self._apply_batch.sha, len(BATCH_KEYS), *BATCH_KEYS, *args)
        pipe.wait(self.wait_replicas, WAIT_TIMEOUT_MS)
        return pipe.execute(raise_on_error=False)

    def _order_entry(self, order: Order, evaluated: Evaluated) -> dict:
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
            "units": str(sum(line.quantity for line in order.lines)),
            "products": _products(order),
            "correction": _correction(order),
            # Needed only if the order is rejected here: a conflict or a total past the limit.
            "message_id": evaluated.incoming.message_id,
            "rejection_key": rejected_key(evaluated.incoming.message_id),
            "order_ref_key": rejected_order_key(order.order_id),
            **kept_body(evaluated.raw_body, self.max_body_bytes),
        }

    def _rejection_entry(self, message_id: str, kind: str, body: str, order_id: str | None,
                         reasons: dict, first_seen: str = "") -> dict:
        return {"key": rejected_key(message_id), "message_id": message_id, "kind": kind,
                "order_id": order_id or "", "first_seen": first_seen,
                "order_ref_key": rejected_order_key(order_id) if order_id else "",
                "reasons": json.dumps(reasons, ensure_ascii=False), "fields": sorted(reasons),
                **kept_body(body, self.max_body_bytes)}

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
        pipe = self.redis.pipeline(transaction=True)
        pipe.hexists(user_key(user_id), "order_count")
        pipe.hmget(user_days_key(user_id), days)
        known, packed = pipe.execute()
        if not known:
            return None
        return [tuple(map(int, value.split(":"))) if value else (0, 0) for value in packed]

    def kpis(self, buckets: list[str], monthly: bool = False) -> list[tuple[int, ...]]:
        """KPI_FIELDS of each day (YYYY-MM-DD) or month (YYYY-MM), zeros where none."""
        key = month_key if monthly else day_key
        # One MULTI/EXEC: a consistent snapshot in one round trip, O(buckets).
        pipe = self.redis.pipeline(transaction=True)
        for bucket in buckets:
            pipe.hmget(key(bucket), *KPI_FIELDS)
        return [tuple(int(v or 0) for v in values) for values in pipe.execute()]

    def product(self, product_id: str) -> tuple[int, int, int] | None:
        """A product's (units sold, revenue cents, orders), or None if never sold: O(1)."""
        units, cents, orders = self.redis.hmget(product_key(product_id), "units_sold",
                                                "revenue_cents", "orders")
        if orders is None:
            return None
        return int(units or 0), int(cents or 0), int(orders)

    def global_stats(self) -> GlobalStats:
        """The platform's all-time totals (zeros when nothing was counted)."""
        orders, cents = self.redis.hmget(GLOBAL_KEY, "total_orders", "total_revenue_cents")
        return GlobalStats(int(orders or 0), int(cents or 0))

    def outcomes(self) -> dict[str, int]:
        """How many messages ended in each outcome."""
        raw = self.redis.hgetall(OUTCOMES_KEY)
        return {name: int(raw.get(name, 0)) for name in OUTCOMES}

    def corrected(self) -> int:
        """How many counted orders had their value corrected (ORDER_VALUE_MISMATCH=correct)."""
        return int(self.redis.hget(OUTCOMES_KEY, "corrected") or 0)

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


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw is not None else None


def _products(order: Order) -> list[list]:
    """[key, product id, units, cents] per product: lines of the same product merged."""
    merged: dict[str, tuple[int, int]] = {}
    for line in order.lines:
        units, cents = merged.get(line.product_id, (0, 0))
        merged[line.product_id] = (units + line.quantity, cents + line.line_cents)
    return [[product_key(product_id), product_id, str(units), str(cents)]
            for product_id, (units, cents) in merged.items()]


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
