-- drain: drop spilled entries the archive now holds.
-- KEYS h x; ARGV upto created. Remove spilled entries with seq <= upto, only
-- from the incarnation made at `created` (any when created < 0).
-- @include seq
local h, x = KEYS[1], KEYS[2]
local upto, created = tonumber(ARGV[1]), tonumber(ARGV[2])
if created >= 0 then
  local c = redis.call('HGET', h, 'created')
  if not c or tonumber(c) ~= created then return 0 end
end
local n = redis.call('LLEN', x)
local k = count_below(x, n, upto + 1)
if k == n then redis.call('DEL', x)
elseif k > 0 then redis.call('LTRIM', x, k, -1) end
return k
