-- The request of an apply script: ARGV[1] decoded, and the limits every piece uses.
--   ARGV[1]: JSON {now, max_total, retention, window, ...} (the rest: the script's own).
--   K(op, name): the key an op names; op.keys maps a name to an index in KEYS, so no key
--   is addressed by position.
local req = cjson.decode(ARGV[1])
local now, max_total = tonumber(req.now), tonumber(req.max_total)
local retention, window = tonumber(req.retention), tonumber(req.window)
-- A number passed to redis.call is formatted ('%.17g') on every call: the repeated ones
-- are passed as strings made once (the same values: a score is read back as a double).
local now_score, window_seconds = string.format('%.17g', now), string.format('%d', window)
local trim_below = '(' .. (now - window)
local function K(op, name)
  local index = op.keys[name]
  return index and KEYS[index]
end
