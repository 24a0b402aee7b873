-- checkpoint_put: store one checkpoint of a LangGraph thread.
-- KEYS  gt gc gv gw gd gidx gfull (see includes/checkpoint.lua)
-- ARGV  tid ns member record ttl_ms window
-- member = <ns>\0<checkpoint id>. Marks the thread in gfull when its
-- namespace now holds more than `window` checkpoints (0: never).
-- Replies {created, ver, expires}: the thread's generation, change counter and
-- expiry ('' none).
-- @include checkpoint
local tid, ns, member = ARGV[1], ARGV[2], ARGV[3]
local ttl, window = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local created, ver = begin_write(tid, now)
redis.call('ZADD', GC, 0, member)
redis.call('HSET', GV, 'c\0' .. member, ARGV[4])
redis.call('HINCRBY', GV, 'n\0' .. member, 1)
if window > 0 and redis.call('ZLEXCOUNT', GC, lo(ns), hi(ns)) > window then
  redis.call('ZADD', GFULL, 'NX', now, tid)
end
end_write(now, ttl)
return {created, ver, redis.call('HGET', GT, 'expires') or ''}
