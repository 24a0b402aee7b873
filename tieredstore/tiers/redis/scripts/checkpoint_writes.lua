-- checkpoint_writes: store pending writes of one checkpoint.
-- KEYS  gt gc gv gw gd gidx gfull (see includes/checkpoint.lua)
-- ARGV  tid member ttl_ms n [suffix record overwrite]*n
-- suffix = <task id>\0<idx>. A write already stored under its suffix is kept
-- unless `overwrite` is 1 (LangGraph's special channels, negative idx).
-- Writes to a checkpoint whose record is not here (it was archived) mark the
-- thread in gfull, so archival takes them to the archive.
-- Replies {created, ver, expires} (as checkpoint_put).
-- @include checkpoint
local tid, member, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local created, ver = begin_write(tid, now)
for i = 1, n do
  local base = 5 + 3 * (i - 1)
  local wm = member .. '\0' .. ARGV[base]
  local field = 'w\0' .. wm
  if ARGV[base + 2] == '1' or redis.call('HEXISTS', GV, field) == 0 then
    redis.call('HSET', GV, field, ARGV[base + 1])
    redis.call('ZADD', GW, 0, wm)
  end
end
redis.call('HINCRBY', GV, 'n\0' .. member, 1)
if redis.call('HEXISTS', GV, 'c\0' .. member) == 0 then redis.call('ZADD', GFULL, 'NX', now, tid) end
end_write(now, ttl)
return {created, ver, redis.call('HGET', GT, 'expires') or ''}
