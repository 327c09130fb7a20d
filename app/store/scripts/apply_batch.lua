-- apply_batch: counts a batch of orders and records its rejections in one atomic call, on
-- a standalone Redis (every key on one node): every order's verdict is decided before the
-- first write.
--
-- KEYS: every key the orders and the book name; each op's `keys` maps a name to an index
--   in KEYS (a claim: order; a part: see includes/aggregates.lua; a record: rec, ref).
-- ARGV[1]: JSON {now, max_total, retention, window, orders, book}: orders[i] = {claim,
--   parts, record}: the claim {order_id, fp, keys}, the parts (includes/parts.lua) and,
--   only once a call asked for it, record: the order's rejection record (includes/book.lua)
--   with verdict, the verdict it was built for; book: the bookkeeping op, its rejections
--   the records of messages refused before Redis.
-- Returns: each order's outcome (counted, duplicate, conflict or rejected); or, having
--   written nothing, JSON [[i, outcome, first_seen, reasons], ...]: the orders (from 0)
--   refused here whose record the call lacks, and the verdict to build each one for
--   (reasons: JSON, '' for a conflict). Valid orders thus ship no body unless refused.
--- @include "includes/request"
--- @include "includes/claims"
--- @include "includes/parts"
--- @include "includes/book"

local verdicts, rejections, missing = {}, {}, {}
for _, r in ipairs(req.book.rejections) do rejections[#rejections + 1] = r end
local duplicates = 0
for i, o in ipairs(req.orders) do
  local state, seen = claim_state(o.claim)
  local verdict
  if state == 'conflict' then
    verdict = {outcome = 'conflict', first_seen = seen}
  else
    local todo, applied, reasons = {}, 0, nil
    for _, part in ipairs(o.parts) do
      local status, payload = check_part(part)
      if status == 'applied' then applied = applied + 1
      elseif status == 'over' then reasons = reasons or payload
      else todo[#todo + 1] = {part, payload} end
    end
    if reasons and applied > 0 then
      error({err = 'ERR order ' .. o.claim.order_id .. ' is partly applied and its other '
                   .. 'parts would pass the largest total'})
    elseif reasons then
      -- A claim left by an interrupted attempt that applied nothing: the id is free again.
      verdict = {outcome = 'rejected', reasons = cjson.encode(reasons), drop = state == 'seen'}
    elseif #todo == 0 then
      verdict = {outcome = 'duplicate'}
      duplicates = duplicates + 1
    else
      for _, t in ipairs(todo) do commit(t[1], t[2]) end
      if state == 'new' then claimed[K(o.claim, 'order')] = o.claim.fp end
      verdict = {outcome = 'counted', new = state == 'new', todo = todo}
    end
  end
  if verdict.outcome == 'conflict' or verdict.outcome == 'rejected' then
    local asked = {i - 1, verdict.outcome, verdict.first_seen or '', verdict.reasons or ''}
    local r = o.record
    if r and r.verdict == table.concat(asked, '\n', 2) then
      expect(K(r, 'rec'), 'hash'); expect(K(r, 'ref'), 'string')
      rejections[#rejections + 1] = r
    else
      missing[#missing + 1] = asked
    end
  end
  verdicts[i] = verdict
end
if #missing > 0 then return cjson.encode(missing) end
check_book(req.book, rejections, duplicates)

local results = {}
for i, o in ipairs(req.orders) do
  local verdict = verdicts[i]
  results[i] = verdict.outcome
  if verdict.outcome == 'counted' then
    if verdict.new then write_claim(o.claim) end
    for _, t in ipairs(verdict.todo) do apply_part(t[1], true) end
  elseif verdict.drop then
    drop_claim(o.claim)
  end
end
trim_applied()
write_book(req.book, rejections, duplicates)
return results
