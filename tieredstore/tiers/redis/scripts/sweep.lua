-- sweep: check index entries of one bucket against the sessions' keys.
-- KEYS  idx exp own, then m h x of each session, then the user indexes named in ARGV[1]
-- ARGV  unames n dry sid*n
-- Buries the sessions whose hash is gone or expired; gives keys that lost
-- their TTL the expiry their hash records (and exp its entry). With dry = '1'
-- only counts. Replies {gone, ttl_fixed, expired} or {'users', user...}.
-- @include now
-- @include index
IX.idx, IX.exp, IX.own = KEYS[1], KEYS[2], KEYS[3]
local n, dry = tonumber(ARGV[2]), ARGV[3] == '1'
users(ARGV[1], 4 + 3 * n)
local now = now_ms()
local state = {}
for i = 1, n do
  local f = redis.call('HMGET', KEYS[3 + 3 * (i - 1) + 2], 'version', 'expires')
  if not f[1] then state[i] = 'gone'
  elseif f[2] and tonumber(f[2]) <= now then state[i] = 'dead'
  else state[i] = f[2] or false end
  if not dry and (state[i] == 'gone' or state[i] == 'dead') then need_owner(ARGV[3 + i]) end
end
if WANT then return demand() end
local gone, fixed, dead = 0, 0, 0
for i = 1, n do
  local sid, base, s = ARGV[3 + i], 3 + 3 * (i - 1), state[i]
  local m, h, x = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  if s == 'gone' or s == 'dead' then
    if s == 'gone' then gone = gone + 1 else dead = dead + 1 end
    if not dry then bury(m, h, x, sid) end
  elseif s then
    local broken = false
    for _, k in ipairs({m, h, x}) do
      if redis.call('PTTL', k) == -1 then
        broken = true
        if not dry then redis.call('PEXPIREAT', k, s) end
      end
    end
    local indexed = redis.call('ZSCORE', IX.exp, sid)
    if not indexed or tonumber(indexed) ~= tonumber(s) then
      broken = true
      if not dry then redis.call('ZADD', IX.exp, s, sid) end
    end
    if broken then fixed = fixed + 1 end
  end
end
return {gone, fixed, dead}
