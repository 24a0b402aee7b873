-- checkpoint_read: one checkpoint of a thread and its pending writes.
-- KEYS  gt gc gv gw (see includes/checkpoint.lua)
-- ARGV  ns id have have_created
-- id '' asks for the namespace's newest checkpoint. have: the id of a record
-- the caller holds ('') of the generation have_created: it is not sent again.
-- Replies {} when the thread is not here, else {created, id, record, n,
-- [suffix, write record]*n}: id '' when the namespace has no checkpoint
-- here; record '' when its record is not here (its writes may be), '=' when
-- it is the caller's.
-- @include checkpoint
local ns, id, have, have_created = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local created = redis.call('HGET', GT, 'created')
if not created then return {} end
if id == '' then
  local newest = redis.call('ZREVRANGEBYLEX', GC, hi(ns), lo(ns), 'LIMIT', 0, 1)
  if not newest[1] then return {created, '', '', 0} end
  id = string.sub(newest[1], #ns + 2)
end
local member = ns .. '\0' .. id
local record
if id == have and created == have_created then
  record = redis.call('HEXISTS', GV, 'c\0' .. member) == 1 and '=' or ''
else
  record = redis.call('HGET', GV, 'c\0' .. member) or ''
end
local out = {created, id, record, 0}
local ws = writes_of(member)
for i = 1, #ws do
  out[#out + 1] = string.sub(ws[i], #member + 2)
  out[#out + 1] = redis.call('HGET', GV, 'w\0' .. ws[i]) or ''
end
out[4] = #ws
return out
