-- apply_batch: counts a batch of orders and records its rejections on a standalone Redis
-- (every key on one node), every check before the first write. It applies the verdicts
-- the Python side decides from checks (app/store/writes.py verdict_of). An order without
-- one goes by the protocol alone when nothing needs deciding: new and fitting, it is
-- counted; a redelivery (its own claim from an earlier call, no part over) applies the
-- parts it has not yet and is counted, or is a duplicate when every part was applied.
-- Any other (a conflict, a total past the limit, an order twice in this call), and an
-- order whose checks differ from those its verdict was decided on, is left out of this
-- call, and its checks come back to be decided on and sent again.
--
-- KEYS: every key the orders and the book name; each op's `keys` maps a name to an index
--   in KEYS (a claim: order; a part: see includes/aggregates.lua; a record: rec, ref).
-- ARGV[1]: JSON {now, max_total, retention, window, orders, book}: orders[i] = {claim,
--   parts, decided}: the claim {order_id, fp, keys}, the parts (includes/parts.lua) and
--   decided, absent for an order expected new and fitting, else {checks, outcome, record}:
--   the checks the verdict was decided on, the verdict (counted, duplicate, rejected or
--   conflict) and, for a rejected or conflicting order, its rejection record
--   (includes/book.lua). book: the bookkeeping op, its rejections the records of messages
--   refused before Redis.
-- Returns: {outcomes, left out}: each order's outcome, '' for an order left out; and ''
--   or JSON [[i, checks], ...] for the orders left out (i from 0), checks = [[claim
--   state, fingerprint seen or ''], [part status, JSON reasons when over or ''], ...] (as
--   check_orders.lua answers).
--- @include "includes/request"
--- @include "includes/claims"
--- @include "includes/parts"
--- @include "includes/book"

-- Whether the checks are those the verdict was decided on.
local function as_decided(checks, decided)
  for k, check in ipairs(checks) do
    local was = decided.checks[k]
    if not was or was[1] ~= check[1] or was[2] ~= check[2] then return false end
  end
  return #checks == #decided.checks
end

-- The protocol's own outcome for an order nobody decided on, or nil when it needs a verdict.
local function protocol_outcome(state, claimed_in_call, checks)
  if state == 'conflict' or claimed_in_call then return nil end
  local fits = false
  for k = 2, #checks do
    local status = checks[k][1]
    if status == 'fits' then
      fits = true
    elseif status ~= 'applied' or state == 'new' then
      return nil
    end
  end
  if fits then return 'counted' end
  if state == 'seen' then return 'duplicate' end
  return nil
end

local verdicts, rejections, deferred = {}, {}, {}
for _, r in ipairs(req.book.rejections) do rejections[#rejections + 1] = r end
local duplicates = 0
for i, o in ipairs(req.orders) do
  local claimed_in_call = claimed[K(o.claim, 'order')] ~= nil
  local state, seen = claim_state(o.claim)
  local checks, fits = {{state, seen or ''}}, {}
  for _, part in ipairs(o.parts) do
    local status, payload = check_part(part)
    checks[#checks + 1] = {status, status == 'over' and cjson.encode(payload) or ''}
    if status == 'fits' then fits[#fits + 1] = {part, payload} end
  end
  local outcome
  if o.decided then
    outcome = as_decided(checks, o.decided) and o.decided.outcome or nil
  else
    outcome = protocol_outcome(state, claimed_in_call, checks)
  end
  if outcome then
    if outcome == 'counted' then
      for _, t in ipairs(fits) do commit(t[1], t[2]) end
      -- A later copy in this call sees its parts' checks before these writes: left out.
      claimed[K(o.claim, 'order')] = o.claim.fp
    elseif outcome == 'duplicate' then
      duplicates = duplicates + 1
    else
      local r = o.decided.record
      expect(K(r, 'rec'), 'hash'); expect(K(r, 'ref'), 'string')
      rejections[#rejections + 1] = r
    end
    verdicts[i] = {outcome = outcome, state = state, fits = fits}
  else
    verdicts[i] = {outcome = ''}
    deferred[#deferred + 1] = {i - 1, checks}
  end
end
check_book(req.book, rejections, duplicates)

local results = {}
for i, o in ipairs(req.orders) do
  local verdict = verdicts[i]
  results[i] = verdict.outcome
  if verdict.outcome == 'counted' then
    if verdict.state == 'new' then write_claim(o.claim) end
    for _, t in ipairs(verdict.fits) do apply_part(t[1], true) end
  elseif verdict.outcome == 'rejected' and verdict.state == 'seen' then
    -- A claim left by an interrupted attempt that applied nothing: the id is free again.
    drop_claim(o.claim)
  end
end
trim_applied()
write_book(req.book, rejections, duplicates)
return {results, #deferred > 0 and cjson.encode(deferred) or ''}
