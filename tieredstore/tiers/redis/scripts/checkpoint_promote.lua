-- checkpoint_promote: bring an archived checkpoint of a cold thread back.
-- KEYS  gt gc gv gw gd gidx gfull (see includes/checkpoint.lua)
-- ARGV  tid created expires member record n [suffix write record]*n
-- Only into a thread that is not here (a write or another promotion may have
-- come first), of a generation created no earlier than the thread's
-- tombstone, and not expired (expires 0: no expiry; kept as is).
-- Replies 1 (promoted), 0 (the thread is here, or expired) or -1 (deleted).
-- @include checkpoint
local tid, created, expires, member = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('EXISTS', GT) == 1 then return 0 end
local tomb = redis.call('GET', GD)
if tomb and tonumber(created) < tonumber(tomb) then return -1 end
local now = now_ms()
if expires > 0 and expires <= now then return 0 end
redis.call('HSET', GT, 'created', created, 'ver', 1, 'updated', fmt(now))
redis.call('ZADD', GC, 0, member)
redis.call('HSET', GV, 'c\0' .. member, ARGV[5])
for i = 1, tonumber(ARGV[6]) do
  local wm = member .. '\0' .. ARGV[5 + 2 * i]
  redis.call('HSET', GV, 'w\0' .. wm, ARGV[6 + 2 * i])
  redis.call('ZADD', GW, 0, wm)
end
if expires > 0 then
  redis.call('HSET', GT, 'expires', fmt(expires))
  for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], expires) end
end
redis.call('ZADD', GIDX, now, tid)
return 1
