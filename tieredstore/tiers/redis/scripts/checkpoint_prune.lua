-- checkpoint_prune: drop a thread's checkpoints older than the ones kept.
-- KEYS  gt gc gv gw gd gidx gfull (see includes/checkpoint.lua)
-- ARGV  n [ns keep]*n
-- In each namespace ns, every checkpoint (and write) with an id below `keep`
-- goes; newer ones, saved since the caller looked, stay.
-- Replies the number of checkpoints dropped.
-- @include checkpoint
if redis.call('EXISTS', GT) == 0 then return 0 end
local dropped = 0
for i = 1, tonumber(ARGV[1]) do
  local ns, keep = ARGV[2 * i], ARGV[2 * i + 1]
  local top = '(' .. ns .. '\0' .. keep
  for _, m in ipairs(redis.call('ZRANGEBYLEX', GC, lo(ns), top)) do
    drop_checkpoint(m)
    dropped = dropped + 1
  end
  local ws = redis.call('ZRANGEBYLEX', GW, lo(ns), top)
  for _, wm in ipairs(ws) do
    redis.call('HDEL', GV, 'w\0' .. wm, 'n\0' .. owner_of(wm))
  end
  if #ws > 0 then redis.call('ZREMRANGEBYLEX', GW, lo(ns), top) end
end
redis.call('HINCRBY', GT, 'ver', 1)
return dropped
