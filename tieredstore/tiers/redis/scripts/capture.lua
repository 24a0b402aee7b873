-- capture: read sessions of one bucket whole, atomically (archival, trims, fork).
-- KEYS  h m x of each session
-- Returns {seconds, microseconds, then per session: hash (flat), window, spill}.
local t = redis.call('TIME')
local out = {t[1], t[2]}
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
  out[#out + 1] = redis.call('LRANGE', KEYS[i + 1], 0, -1)
  out[#out + 1] = redis.call('LRANGE', KEYS[i + 2], 0, -1)
end
return out
