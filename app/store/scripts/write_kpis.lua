-- write_kpis: replaces the KPIs of an execution's dates in one call, so a reader sees all
-- of them or none. A date already written from a later snapshot of the tables (a
-- concurrent execution that read after this one) is left alone: an older computation
-- never overwrites a newer one.
--
-- KEYS[1]: order_date -> rank of the snapshot its KPIs came from (kpi:{files}:snapshots);
--   KEYS[2]: the dates with orders, scored by ordinal (kpi:{files}:orders:dates); then,
--   per date i, KEYS[1 + 2i]: its order KPIs hash, KEYS[2 + 2i]: its category KPIs hash.
-- ARGV[1]: this execution's snapshot rank.
-- ARGV[2]: JSON [{date, ordinal, order = [field, value, ...] (absent: no orders that
--   day), categories = [category, JSON figures, ...]}, ...], in the order of the KEYS.
-- Returns: how many dates were written.
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
