-- layout: record the namespace's bucket count, or tell the one recorded.
-- KEYS  buckets (P:buckets)
-- ARGV  B
-- Replies the recorded count (B itself the first time).
local v = redis.call('GET', KEYS[1])
if v then return tonumber(v) end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])
