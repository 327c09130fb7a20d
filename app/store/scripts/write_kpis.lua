-- write_kpis: replaces the KPIs of an execution's dates in one call, so a reader sees all
-- of them or none. A date already written from a later snapshot of the tables (a
-- concurrent execution that read after this one) is left alone: an older computation
-- never overwrites a newer one. The tables' watermarks move up to the snapshot in the same
-- call: the next computation recomputes the dates of every commit after them.
--
-- KEYS[1]: order_date -> rank of the snapshot its KPIs came from (kpi:{files}:snapshots);
--   KEYS[2]: the dates with orders, scored by ordinal (kpi:{files}:orders:dates);
--   KEYS[3]: table -> last version whose changes the KPIs include (kpi:{files}:watermarks);
--   then, per date i, KEYS[2 + 2i]: its order KPIs hash, KEYS[3 + 2i]: its category KPIs
--   hash.
-- ARGV[1]: this execution's snapshot rank.
-- ARGV[2]: JSON [{date, ordinal, order = [field, value, ...] (absent: no orders that
--   day), categories = [category, JSON figures, ...]}, ...], in the order of the KEYS.
-- ARGV[3]: JSON {table: version} of the snapshot (tables not made yet left out).
-- Returns: how many dates were written.
local rank = tonumber(ARGV[1])
local days = cjson.decode(ARGV[2])
local written = 0
for i, day in ipairs(days) do
  local order_key, category_key = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
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
for table_name, version in pairs(cjson.decode(ARGV[3])) do
  local seen = tonumber(redis.call('HGET', KEYS[3], table_name) or '-1')
  if version > seen then redis.call('HSET', KEYS[3], table_name, version) end
end
return written
