--- @include "includes/request"
-- Redis does not roll a script back when a command fails half-way, so everything that
-- could fail is checked before the first write: 1. the type of every key. A check's reads
-- (redis.pcall) type the keys they read: only the keys no read touched cost a TYPE.
local typed = {}
local function expect(key, kind)
  if not key or typed[key] then return end
  local actual = redis.call('TYPE', key).ok
  if actual ~= 'none' and actual ~= kind then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. actual .. ', not a ' .. kind})
  end
  typed[key] = kind
end
-- A read's reply, its key typed; a WRONGTYPE refused as expect refuses it, by name.
local function read(command, key, kind, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    expect(key, kind)
    error(reply)
  end
  typed[key] = kind
  return reply
end
-- Key name -> type, of each op kind: set by aggregates.lua.
local kinds
local function expect_op(op)
  local kind_of = kinds[op.kind]
  for name, index in pairs(op.keys) do
    local key, kind = KEYS[index], kind_of[name]
    if kind and not typed[key] then expect(key, kind) end
  end
  for _, p in ipairs(op.products or {}) do expect(K(p, 'product'), 'hash') end
  for _, r in ipairs(op.rejections or {}) do
    expect(K(r, 'rec'), 'hash'); expect(K(r, 'ref'), 'string')
  end
end
