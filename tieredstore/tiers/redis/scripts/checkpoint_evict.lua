-- checkpoint_evict: compare-and-delete what the archive now holds.
-- KEYS  gt gc gv gw gd gidx gfull (see includes/checkpoint.lua)
-- ARGV  tid mode created ver n [member changes]*n
-- mode 'all': removes the whole thread if it is still at (created, ver), i.e.
-- nothing was written since the capture. mode 'surplus': removes each member
-- whose change count is still `changes`, in the same generation; the thread
-- leaves gfull when every member went and nothing was written meanwhile.
-- Replies {1 or 0} ('all') or {1 or 0 per member}.
-- @include checkpoint
local tid, mode, created, ver, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local head = redis.call('HMGET', GT, 'created', 'ver')
if mode == 'all' then
  if head[1] == created and head[2] == ver then
    redis.call('DEL', GT, GC, GV, GW)
    redis.call('ZREM', GIDX, tid)
    redis.call('ZREM', GFULL, tid)
    return {1}
  end
  return {0}
end
local out, every = {}, true
for i = 1, n do
  local m, changes = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if head[1] == created and (redis.call('HGET', GV, 'n\0' .. m) or '0') == changes then
    drop_checkpoint(m)
    out[i] = 1
  else
    out[i] = 0
    every = false
  end
end
if every and head[2] == ver then redis.call('ZREM', GFULL, tid) end
return out
