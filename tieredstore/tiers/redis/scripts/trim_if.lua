-- trim_if: trim one session's window and drain its spill list if unchanged.
-- KEYS  m h x
-- ARGV  created version lead drop drain_upto chan sid
-- If the session is still generation (created, version): remove window entries
-- [lead, lead + drop), recount the leading system entries, bump and announce
-- the version (caches must drop the longer window); then drop spilled entries
-- with seq <= drain_upto (-1: none). Returns 1, or 0 if the session changed.
-- @include now
-- @include seq
-- @include trim
local m, h, x = KEYS[1], KEYS[2], KEYS[3]
local lead, drop, upto = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'created', 'expires')
if not f[1] or f[2] ~= ARGV[1] or f[1] ~= ARGV[2] then return 0 end
if f[3] and tonumber(f[3]) <= now then return 0 end
if drop > 0 then
  if lead == 0 then
    redis.call('LTRIM', m, drop, -1)
  else
    local saved = redis.call('LPOP', m, lead)
    redis.call('LTRIM', m, drop, -1)
    for i = #saved, 1, -1 do redis.call('LPUSH', m, saved[i]) end
  end
  local n = redis.call('LLEN', m)
  redis.call('HSET', h, 'lead', fmt(skip_kind(m, 0, n, 115)))
  local version = redis.call('HINCRBY', h, 'version', 1)
  if f[3] and n > 0 then redis.call('PEXPIREAT', m, f[3]) end
  publish(ARGV[6], f[2], fmt(version), ARGV[7])
end
if upto >= 0 then
  local n = redis.call('LLEN', x)
  local k = count_below(x, n, upto + 1)
  if k == n then redis.call('DEL', x)
  elseif k > 0 then redis.call('LTRIM', x, k, -1) end
end
return 1
