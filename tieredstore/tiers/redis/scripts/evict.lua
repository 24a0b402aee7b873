-- evict: compare-and-delete sessions the archive now holds.
-- KEYS  idx exp own, then m h x ob of each session, then the user indexes named in ARGV[1]
-- ARGV  unames n [sid created version]*n
-- Removes each session still at generation (created, version), holding no
-- outbox record and no fence; no invalidation (the archive holds that very
-- state). Replies {1 or 0 per session} or {'users', user...}.
-- @include now
-- @include index
IX.idx, IX.exp, IX.own = KEYS[1], KEYS[2], KEYS[3]
local n = tonumber(ARGV[2])
users(ARGV[1], 4 + 4 * n)
local now = now_ms()
local chosen = {}
for i = 1, n do
  local base, a = 3 + 4 * (i - 1), 3 + 3 * (i - 1)
  local sid = ARGV[a]
  local f = redis.call('HMGET', KEYS[base + 2], 'version', 'expires', 'created', 'f')
  if f[1] and not (f[2] and tonumber(f[2]) <= now) and f[3] == ARGV[a + 1]
     and f[1] == ARGV[a + 2] and not f[4] and redis.call('EXISTS', KEYS[base + 4]) == 0 then
    chosen[i] = true
    need_owner(sid)
  end
end
if WANT then return demand() end
local out = {}
for i = 1, n do
  local base = 3 + 4 * (i - 1)
  if chosen[i] then
    bury(KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], ARGV[3 + 3 * (i - 1)])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
