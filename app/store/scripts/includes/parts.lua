--- @include "includes/money"
--- @include "includes/figures"
-- The parts of an order: check (does it fit under max_total, or was it applied already)
-- and write. Part ops: {kind = user | shard | products, order_id, mark (its member in the
-- applied set), keys, ...}: user {cents, day, ts}; shard {user_id, cents, units,
-- correction}; products {products = [{id, units, cents, keys = {product}}]}. Money is
-- integer cents in strings.

-- When a conditional figure is added: read by a check, or decided by a write.
local CONDITIONS = {
  new_day_customer = {
    check = function(op) return not is_day_customer(K(op, 'customers'), op.user_id) end,
    write = function(op) return redis.call('SADD', K(op, 'customers'), op.user_id) == 1 end,
  },
  new_month_customer = {
    check = function(op) return current(K(op, 'month_orders'), op.user_id, true) == 0 end,
    -- After the month's orders ZINCRBY: a first order makes 1.
    write = function(_, replies) return tonumber(replies.month_orders) == 1 end,
  },
}

-- Calls visit(f, key, member or field, amount as digits, product id or nil) for each
-- figure of a part, in FIGURES' order.
local function each_figure(op, visit)
  local function of(holder, f, product)
    local key = (holder.keys[f[1]] and K(holder, f[1])) or K(op, f[1])
    local field = f[2]
    if field == '@user' then field = op.user_id
    elseif field == '@product' then field = holder.id end
    visit(f, key, field, f[3] == 'orders' and '1' or holder[f[3]], product)
  end
  if op.kind == 'products' then
    for _, p in ipairs(op.products) do
      for _, f in ipairs(FIGURES.products) do of(p, f, p.id) end
    end
  else
    for _, f in ipairs(FIGURES[op.kind]) do of(op, f, nil) end
  end
end
-- What applying one part adds, one entry per figure: {key, field, by, is_score, unit,
-- what, product}. unit is cents, units or orders; what names the figure (of the product,
-- if any) in a rejection. No figure appears twice.
local function additions(op)
  local list = {}
  each_figure(op, function(f, key, field, by, product)
    if not f.when or CONDITIONS[f.when].check(op) then
      list[#list + 1] = {key, field, tonumber(by), f.is_score, f[3], f[4], product}
    end
  end)
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
  local updates = additions(op)
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
local function write_figures(op)
  local replies = {}  -- key name -> the reply of its last increment
  each_figure(op, function(f, key, field, by)
    if f.when and not CONDITIONS[f.when].write(op, replies) then return end
    local reply
    if f.is_score then reply = redis.call('ZINCRBY', key, by, field)
    else reply = redis.call('HINCRBY', key, field, by) end
    replies[f[1]] = reply
    if f.mirror then redis.call('HSET', key, f.mirror, money(tonumber(reply))) end
  end)
end
-- What a part writes besides its figures.
local write_rest = {}
function write_rest.user(op)
  local u = K(op, 'user')
  local first = tonumber(redis.call('HGET', u, 'first_order_ts') or '')
  if not first or op.ts < first then redis.call('HSET', u, 'first_order_ts', op.ts) end
  local last = tonumber(redis.call('HGET', u, 'last_order_ts') or '')
  if not last or op.ts > last then redis.call('HSET', u, 'last_order_ts', op.ts) end
  -- One packed field per day keeps a user's days in one small (listpack) hash.
  local days = K(op, 'days')
  local day = parse_day(days, op.day, redis.call('HGET', days, op.day))
  redis.call('HSET', days, op.day,
             string.format('%d:%d', day[1] + 1, day[2] + tonumber(op.cents)))
end
function write_rest.shard(op)
  redis.call('HINCRBY', K(op, 'outcomes'), 'counted', '1')
  if op.correction ~= '' then
    redis.call('HSET', K(op, 'corrections'), op.order_id, op.correction)
    redis.call('HINCRBY', K(op, 'outcomes'), 'corrected', '1')
  end
end
function write_rest.products() end
-- Applies a part unless its applied set names the order (checked: this call's check said
-- it does not); 1 when applied now.
local touched, touched_keys = {}, {}
local function apply_part(op, checked)
  local applied = K(op, 'applied')
  if not checked and redis.call('ZSCORE', applied, op.mark) then return 0 end
  write_figures(op)
  write_rest[op.kind](op)
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
