--- @include "includes/money"
--- @include "includes/figures"
-- The aggregates, in one place: the type of every key an op names (kinds, declared in
-- key_types.lua, which checks them), what a check adds to each figure (additions) and what
-- a write increments (writers); additions and writers name the same figures, part by
-- part. The Python side names the same keys (app/store/operations.py order_ops). Written
-- out per part rather than derived from one table of figures: a table-driven version cost
-- a fifth more redis-server instructions per order (bench.script_instructions).
kinds = {
  claim = {order = 'string'},
  user = {user = 'hash', days = 'hash', applied = 'zset'},
  shard = {global = 'hash', day = 'hash', customers = 'set', month = 'hash', spend = 'zset',
           orders = 'zset', day_spend = 'zset', day_orders = 'zset', month_spend = 'zset',
           month_orders = 'zset', outcomes = 'hash', corrections = 'hash', applied = 'zset'},
  products = {applied = 'zset', revenue = 'zset', units = 'zset', day_revenue = 'zset',
              day_units = 'zset'},
  book = {outcomes = 'hash', index = 'zset', entries = 'hash', tally = 'hash', by_field = 'hash',
          lag = 'hash'},
}

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
    list[#list + 1] = {K(op, 'day_revenue'), p.id, cents, true, 'cents', 'revenue that day', p.id}
    list[#list + 1] = {K(op, 'day_units'), p.id, units, true, 'units', 'units sold that day',
                       p.id}
  end
  return list
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
    redis.call('ZINCRBY', K(op, 'day_revenue'), p.cents, p.id)
    redis.call('ZINCRBY', K(op, 'day_units'), p.units, p.id)
  end
end
