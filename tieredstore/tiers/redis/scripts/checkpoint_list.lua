-- checkpoint_list: a thread's checkpoints here, newest first, with their writes.
-- KEYS  gt gc gv gw (see includes/checkpoint.lua)
-- ARGV  all ns before limit
-- all '1': every namespace (ns ignored), else namespace ns only. before: only
-- ids below it (''). limit: at most that many (0: all; per namespace).
-- Replies {} when the thread is not here, else {created, n, [member, record,
-- nw, [suffix, write record]*nw]*n, no, [write member, write record]*no}:
-- the checkpoints, then the writes whose checkpoint record is not here.
-- @include lt
-- @include checkpoint
local all, ns, before, limit = ARGV[1] == '1', ARGV[2], ARGV[3], tonumber(ARGV[4])
local created = redis.call('HGET', GT, 'created')
if not created then return {} end
local members
if all then
  members = {}
  for _, m in ipairs(redis.call('ZRANGE', GC, 0, -1)) do
    local cut = string.find(m, '\0', 1, true)
    if before == '' or lt(string.sub(m, cut + 1), before) then members[#members + 1] = m end
  end
else
  local top = before == '' and hi(ns) or '(' .. ns .. '\0' .. before
  if limit > 0 then
    members = redis.call('ZREVRANGEBYLEX', GC, top, lo(ns), 'LIMIT', 0, limit)
  else
    members = redis.call('ZREVRANGEBYLEX', GC, top, lo(ns))
  end
end
local out = {created, #members}
for _, m in ipairs(members) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', GV, 'c\0' .. m) or ''
  local ws = writes_of(m)
  out[#out + 1] = #ws
  for i = 1, #ws do
    out[#out + 1] = string.sub(ws[i], #m + 2)
    out[#out + 1] = redis.call('HGET', GV, 'w\0' .. ws[i]) or ''
  end
end
local orphans = {}
local range = all and redis.call('ZRANGE', GW, 0, -1)
  or redis.call('ZRANGEBYLEX', GW, lo(ns), hi(ns))
for _, wm in ipairs(range) do
  if redis.call('HEXISTS', GV, 'c\0' .. owner_of(wm)) == 0 then
    orphans[#orphans + 1] = wm
    orphans[#orphans + 1] = redis.call('HGET', GV, 'w\0' .. wm) or ''
  end
end
out[#out + 1] = #orphans / 2
for _, v in ipairs(orphans) do out[#out + 1] = v end
return out
