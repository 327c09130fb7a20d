-- check_orders: a cluster's first phase, on one slot: claims the orders' ids and checks
-- their parts (app/store/writes.py runs it, then apply_parts.lua).
--
-- KEYS: every key the ops name, all in one slot; each op's `keys` maps a name to an index
--   in KEYS (a claim: order; a part: see includes/aggregates.lua).
-- ARGV[1]: JSON {now, max_total, retention, window, ops}: ops are claims {kind = 'claim',
--   order_id, fp, keys} and parts (includes/parts.lua).
-- Returns: JSON, one entry per op: a claim {'new' (claimed now), ''}, {'seen', ''} or
--   {'conflict', fingerprint seen}; a part {'applied', ''}, {'fits', ''} (counted as added
--   for the later ops of this call) or {'over', JSON reasons}.
--- @include "includes/request"
--- @include "includes/claims"
--- @include "includes/parts"

local out = {}
for i, op in ipairs(req.ops) do
  if op.kind == 'claim' then
    local state, seen = claim_state(op)
    if state == 'new' then write_claim(op) end
    out[i] = {state, seen or ''}
  else
    local status, payload = check_part(op)
    if status == 'fits' then commit(op, payload) end
    out[i] = {status, status == 'over' and cjson.encode(payload) or ''}
  end
end
return cjson.encode(out)
