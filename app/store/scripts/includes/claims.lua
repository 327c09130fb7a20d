--- @include "includes/key_types"
-- The claim: new (absent), seen (same fingerprint) or conflict (and the one seen).
local claimed = {}  -- order key -> fingerprint claimed earlier in this call
local function claim_state(op)
  local key = K(op, 'order')
  local seen = claimed[key] or read('GET', key, 'string')
  expect_op(op)
  if not seen then return 'new' end
  if seen == op.fp then return 'seen' end
  return 'conflict', seen
end
local function write_claim(op)
  redis.call('SET', K(op, 'order'), op.fp, 'EX', window_seconds)
  claimed[K(op, 'order')] = op.fp
end
local function drop_claim(op)
  if redis.call('GET', K(op, 'order')) == op.fp then redis.call('DEL', K(op, 'order')) end
end

