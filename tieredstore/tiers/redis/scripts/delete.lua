-- delete: remove a session and leave a tombstone.
-- KEYS  m h x d ob idx exp own obx, then the user indexes named in ARGV[2]
-- ARGV  sid unames chan tomb_ms floor_ms
-- The tombstone T in d lives tomb_ms (0: none): T = max(now, floor, created + 1,
-- the previous tombstone), so T is later than the creation of every generation
-- deleted so far; T is announced as generation (T, 0). The outbox goes too.
-- Replies {existed, T} or {'users', user...}.
-- @include now
-- @include index
local m, h, x, d, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
IX.idx, IX.exp, IX.own, IX.obx = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
users(ARGV[2], 10)
local sid, chan, tomb, floor = ARGV[1], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
need_owner(sid)
if WANT then return demand() end
local f = redis.call('HMGET', h, 'version', 'expires', 'created')
local existed = f[1] and not (f[2] and tonumber(f[2]) <= now)
bury(m, h, x, sid)
redis.call('DEL', ob)
redis.call('ZREM', IX.obx, sid)
local g = math.max(now, floor)
if f[3] and tonumber(f[3]) >= g then g = tonumber(f[3]) + 1 end
local before = redis.call('GET', d)
if before and tonumber(before) > g then g = tonumber(before) end
if tomb > 0 then redis.call('SET', d, fmt(g), 'PX', tomb) end
publish(chan, fmt(g), '0', sid)
return {existed and 1 or 0, g}
