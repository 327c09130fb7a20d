--- @include "includes/figures"
-- The bookkeeping op (book): keys outcomes, index, entries, tally, by_field, lag;
-- rejections, the records to write, each {message_id, kind, order_id, body, reasons,
-- fields, first_seen, keys rec and ref, and body_bytes and body_sha256 for a body kept as
-- its head}, built by the Python side (app/store/operations.py); max_records and
-- max_bytes, the caps of the records kept; oldest_sent_ms, for the lag.
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
-- What a record keeps, as the byte cap counts it: its values (ids, body, reasons).
local function record_bytes(r)
  return #r.message_id + #r.order_id + #r.body + #r.reasons + #r.first_seen
end
-- Forgets an indexed rejection's record, its order id's pointer (unless a newer rejection
-- of that order took it) and its entry; returns the bytes it held. An index entry left
-- without one (written before the caps) holds none: its record goes when it expires.
local function forget_indexed(book, message_id)
  local entry = redis.call('HGET', K(book, 'entries'), message_id)
  redis.call('ZREM', K(book, 'index'), message_id)
  if not entry then return 0 end
  local bytes, key, ref = unpack(cjson.decode(entry))
  redis.call('DEL', key)
  if ref ~= '' and redis.call('GET', ref) == message_id then redis.call('DEL', ref) end
  redis.call('HDEL', K(book, 'entries'), message_id)
  return bytes
end
-- Records expired by age leave the index; then the oldest records go, ties by message id,
-- until both caps hold. Returns the change of the byte total and the records dropped.
local function trim_rejections(book, bytes)
  local index, before = K(book, 'index'), bytes
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. (now - retention))) do
    bytes = bytes - forget_indexed(book, id)
  end
  local count, dropped = redis.call('ZCARD', index), 0
  while count > 0 and (count > book.max_records or bytes > book.max_bytes) do
    local oldest = redis.call('ZRANGE', index, 0, 0)[1]
    bytes = bytes - forget_indexed(book, oldest)
    count, dropped = count - 1, dropped + 1
  end
  return bytes - before, dropped
end
-- Writes one record; returns the change of the byte total.
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
  local bytes, entry = record_bytes(r), redis.call('HGET', K(book, 'entries'), r.message_id)
  redis.call('HSET', K(book, 'entries'), r.message_id, cjson.encode({bytes, key, ref or ''}))
  if fresh then
    redis.call('HINCRBY', K(book, 'outcomes'), r.kind == 'conflict' and 'conflict' or 'rejected', 1)
    for _, f in ipairs(r.fields) do redis.call('HINCRBY', K(book, 'by_field'), f, 1) end
  end
  return bytes - (entry and cjson.decode(entry)[1] or 0)
end
local function write_book(book, rejections, duplicates)
  if #rejections > 0 then
    local tally = K(book, 'tally')
    local bytes = tonumber(redis.call('HGET', tally, 'bytes') or '0')
    local added = 0
    for _, r in ipairs(rejections) do added = added + record_rejection(book, r) end
    -- Records expire by themselves; their index entries go once older than the retention.
    local trimmed, dropped = trim_rejections(book, bytes + added)
    redis.call('HINCRBY', tally, 'bytes', added + trimmed)
    if dropped > 0 then redis.call('HINCRBY', tally, 'dropped', dropped) end
  end
  if duplicates > 0 then redis.call('HINCRBY', K(book, 'outcomes'), 'duplicate', duplicates) end
  if (book.oldest_sent_ms or 0) > 0 then
    redis.call('HSET', K(book, 'lag'), 'oldest_sent_ms', book.oldest_sent_ms,
               'applied_ms', math.floor(now * 1000))
  end
end
