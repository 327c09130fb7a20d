--- @include "includes/key_types"
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
-- A counter that must keep room for `room` more.
local function full(key, field, room)
  if current(key, field, false) + room > max_total then
    error({err = 'ERR counter ' .. key .. ' ' .. field .. ' is full'})
  end
end
