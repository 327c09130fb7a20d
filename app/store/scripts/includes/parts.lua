--- @include "includes/aggregates"
-- The parts of an order: check (does it fit under max_total, or was it applied already)
-- and write. Part ops: {kind = user | shard | products, order_id, mark (its member in the
-- applied set), keys, ...}: user {cents, day, ts}; shard {user_id, cents, units,
-- correction}; products {products = [{id, units, cents, keys = {product}}]}. Money is
-- integer cents in strings.

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
