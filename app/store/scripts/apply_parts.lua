-- apply_parts: a cluster's second phase, on one slot: applies the parts of counted orders,
-- drops the claims of rejected ones and, on the {p} slot, writes the bookkeeping.
--
-- KEYS: every key the ops and the book name, all in one slot; each op's `keys` maps a name
--   to an index in KEYS.
-- ARGV[1]: JSON {now, max_total, retention, window, ops, book, duplicates}: ops are parts
--   to apply (includes/parts.lua) and claims to drop {kind = 'claim', fp, keys}; book
--   (includes/book.lua) and duplicates, the count of duplicate messages, only on {p}.
-- Returns: one integer per op: a part 1 when applied now, 0 when its applied set named
--   the order already; a claim 0.
--- @include "includes/request"
--- @include "includes/claims"
--- @include "includes/parts"
--- @include "includes/book"

local rejections, duplicates = req.book and req.book.rejections or {}, req.duplicates or 0
if req.book then check_book(req.book, rejections, duplicates) end
for _, op in ipairs(req.ops) do expect_op(op) end
local out = {}
for i, op in ipairs(req.ops) do
  if op.kind == 'claim' then drop_claim(op); out[i] = 0 else out[i] = apply_part(op) end
end
trim_applied()
if req.book then write_book(req.book, rejections, duplicates) end
return out
