-- checkpoint_capture: what archival copies of a thread.
-- KEYS  gt gc gv gw gd gidx gfull (see includes/checkpoint.lua)
-- ARGV  tid mode window
-- mode 'all': every checkpoint and write. mode 'surplus': the checkpoints of
-- each namespace below its newest `window`, and writes whose checkpoint
-- record is not here. A thread that is gone (expired) leaves the indexes.
-- Replies {} when gone, else {created, ver, updated, expires, n, [member,
-- record, changes, nw, [suffix, write record]*nw]*n}: record '' when not here;
-- changes counts the member's writes, for evict's compare-and-delete.
-- @include checkpoint
local tid, mode, window = ARGV[1], ARGV[2], tonumber(ARGV[3])
local head = redis.call('HMGET', GT, 'created', 'ver', 'updated', 'expires')
if not head[1] then
  redis.call('ZREM', GIDX, tid)
  redis.call('ZREM', GFULL, tid)
  return {}
end
local all = redis.call('ZRANGE', GC, 0, -1)
local chosen, seen = {}, {}
if mode == 'all' then
  chosen = all
else
  local count = {}
  for _, m in ipairs(all) do
    local ns = string.sub(m, 1, string.find(m, '\0', 1, true) - 1)
    count[ns] = (count[ns] or 0) + 1
  end
  local taken = {}
  for _, m in ipairs(all) do
    local ns = string.sub(m, 1, string.find(m, '\0', 1, true) - 1)
    taken[ns] = (taken[ns] or 0) + 1
    if taken[ns] <= count[ns] - window then chosen[#chosen + 1] = m end
  end
end
for _, m in ipairs(chosen) do seen[m] = true end
for _, wm in ipairs(redis.call('ZRANGE', GW, 0, -1)) do
  local m = owner_of(wm)
  if not seen[m] and redis.call('HEXISTS', GV, 'c\0' .. m) == 0 then
    seen[m] = true
    chosen[#chosen + 1] = m
  end
end
local out = {head[1], head[2], head[3], head[4] or '', #chosen}
for _, m in ipairs(chosen) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', GV, 'c\0' .. m) or ''
  out[#out + 1] = redis.call('HGET', GV, 'n\0' .. m) or '0'
  local ws = writes_of(m)
  out[#out + 1] = #ws
  for i = 1, #ws do
    out[#out + 1] = string.sub(ws[i], #m + 2)
    out[#out + 1] = redis.call('HGET', GV, 'w\0' .. ws[i]) or ''
  end
end
if mode ~= 'all' and #chosen == 0 then redis.call('ZREM', GFULL, tid) end
return out
