-- checkpoint_delete: remove a thread and leave its tombstone.
-- KEYS  gt gc gv gw gd gidx gfull (see includes/checkpoint.lua)
-- ARGV  tid tomb_ms
-- The tombstone T in gd lives tomb_ms: T = max(now, created + 1, the previous
-- tombstone), so T is later than the creation of every generation deleted
-- so far, and a later write starts a generation at or after T.
-- Replies {existed, T}.
-- @include checkpoint
local tid, tomb = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local created = redis.call('HGET', GT, 'created')
local g = now
if created and tonumber(created) >= g then g = tonumber(created) + 1 end
local before = redis.call('GET', GD)
if before and tonumber(before) > g then g = tonumber(before) end
redis.call('DEL', GT, GC, GV, GW)
redis.call('ZREM', GIDX, tid)
redis.call('ZREM', GFULL, tid)
redis.call('SET', GD, fmt(g), 'PX', tomb)
return {created and 1 or 0, g}
