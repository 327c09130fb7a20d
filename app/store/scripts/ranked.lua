-- ranked: the first n members of one ranking: highest score first, equal scores by member
-- in byte order. A sorted set keeps ties in ascending member order, so ZREVRANGE lists them
-- backwards and its n-th entry may cut a tie group at the wrong end: that group is read
-- again from its first member. O(log N + n). A sum of several sets is ranked by
-- app.ranking instead.
--
-- KEYS[1]: the sorted set to rank by; KEYS[2], optional (in the same slot): the sorted set
--   of a second measure of the same members.
-- ARGV[1]: n.
-- Returns: member, score, second score (0 without KEYS[2] or without the member there),
--   ... (scores as integers).
local n = tonumber(ARGV[1])
local source = KEYS[1]
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
local result, members = {}, {}
for k = 1, #chosen, 2 do
  members[#members + 1] = chosen[k]
  result[#result + 1] = chosen[k]
  result[#result + 1] = tonumber(chosen[k + 1])
  result[#result + 1] = 0
end
if #members > 0 and KEYS[2] then
  local scores = redis.call('ZMSCORE', KEYS[2], unpack(members))
  for j = 1, #members do
    if scores[j] then result[3 * j] = tonumber(scores[j]) end
  end
end
return result
