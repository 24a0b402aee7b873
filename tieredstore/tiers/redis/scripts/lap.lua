-- lap: end a maintenance lap over the buckets (start the next one).
-- KEYS  lap (P:lap:<task>)
-- ARGV  lap
-- Moves the task's lap number from `lap` to lap + 1 (a missing key is lap 1);
-- a lap some other worker already ended stays ended. Replies the lap number now.
local now = tonumber(redis.call('GET', KEYS[1]) or '1')
if now == tonumber(ARGV[1]) then
  now = now + 1
  redis.call('SET', KEYS[1], now)
end
return now
