-- checkpoint_drop: remove given checkpoints of a thread (delete_for_runs).
-- KEYS  gt gc gv gw gd gidx gfull (see includes/checkpoint.lua)
-- ARGV  n [member]*n
-- Each member's record, change count and writes go (a member whose record
-- is archived loses the writes Redis still holds for it).
-- Replies the number of members that had a record here.
-- @include checkpoint
if redis.call('EXISTS', GT) == 0 then return 0 end
local dropped = 0
for i = 1, tonumber(ARGV[1]) do
  local m = ARGV[1 + i]
  if redis.call('HEXISTS', GV, 'c\0' .. m) == 1 then dropped = dropped + 1 end
  drop_checkpoint(m)
end
redis.call('HINCRBY', GT, 'ver', 1)
return dropped
