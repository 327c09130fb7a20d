--- @include "includes/figures"
-- The bookkeeping op (book): keys outcomes, index, by_field, lag; rejections, the records
-- to write, each {message_id, kind, order_id, body, reasons, fields, first_seen, keys
-- rec and ref, and body_bytes and body_sha256 for a body kept as its head}, built by the
-- Python side (app/store/operations.py); oldest_sent_ms, for the lag.
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
