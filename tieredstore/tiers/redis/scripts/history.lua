-- history: one page of a session's messages, hot window and spill list together.
-- KEYS m h x; ARGV before limit. The newest `limit` entries with seq < before
-- (every seq when before < 0) of the window and of the spill list.
-- @include now
-- @include seq
local m, h, x = KEYS[1], KEYS[2], KEYS[3]
local before, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'f', 'created', 'b')
if not f[1] or (f[2] and tonumber(f[2]) <= now) or f[3] then return {0} end
local function tail(L)
  local n = redis.call('LLEN', L)
  if before >= 0 then n = count_below(L, n, before) end
  if n == 0 then return {} end
  return redis.call('LRANGE', L, math.max(n - limit, 0), n - 1)
end
return {1, tail(m), tail(x), f[4], f[5] or '0'}
