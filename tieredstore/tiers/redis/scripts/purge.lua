-- purge: bury expired sessions of one bucket.
-- KEYS  idx exp own, then m h x of each session, then the user indexes named in ARGV[1]
-- ARGV  unames n sid*n
-- Each session whose hash is gone or expired is buried (keys and index
-- entries); one whose hash lives on gets its true expiry back in exp.
-- Replies the number of sessions looked at, or {'users', user...}.
-- @include now
-- @include index
IX.idx, IX.exp, IX.own = KEYS[1], KEYS[2], KEYS[3]
local n = tonumber(ARGV[2])
users(ARGV[1], 4 + 3 * n)
local now = now_ms()
local live = {}
for i = 1, n do
  local e = redis.call('HGET', KEYS[3 + 3 * (i - 1) + 2], 'expires')
  if e and tonumber(e) > now then live[i] = e else need_owner(ARGV[2 + i]) end
end
if WANT then return demand() end
for i = 1, n do
  local sid, base = ARGV[2 + i], 3 + 3 * (i - 1)
  if live[i] then
    redis.call('ZADD', IX.exp, live[i], sid)
  else
    bury(KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], sid)
  end
end
return n
