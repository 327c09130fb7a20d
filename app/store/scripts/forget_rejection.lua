-- forget_rejection: deletes one rejection record and uncounts it, unless it was written
-- again since it was read (a newer rejection of the same message stays).
--
-- KEYS[1]: the record (rejected:{p}:<message id>); KEYS[2]: the index of records
--   (rejected:{p}); KEYS[3]: the outcome counters (pipeline:outcomes:{p}); KEYS[4]: the
--   index's entries (rejected-entries:{p}); KEYS[5]: the rejected store's tally
--   (rejected-store:{p}: bytes); KEYS[6], optional: the order id's pointer to its latest
--   record (rejected-order:{p}:<order id>).
-- ARGV[1]: the record's `at` as read.
-- Returns: 1 when deleted, 0 when the record is gone or newer; an error when the counter
--   holds no whole number.
local record_key, rejected_index, outcomes_key = KEYS[1], KEYS[2], KEYS[3]
local entries_key, tally_key, order_ref_key = KEYS[4], KEYS[5], KEYS[6]
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
local entry = redis.call('HGET', entries_key, fields.message_id)
if entry then
  redis.call('HDEL', entries_key, fields.message_id)
  redis.call('HINCRBY', tally_key, 'bytes', -cjson.decode(entry)[1])
end
if order_ref_key and redis.call('GET', order_ref_key) == fields.message_id then
  redis.call('DEL', order_ref_key)
end
redis.call('HINCRBY', outcomes_key, outcome, -1)
return 1
