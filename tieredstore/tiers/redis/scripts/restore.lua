-- restore: write a session copied from another tier.
-- KEYS  m h x d ob idx exp own obx, then the user indexes named in ARGV[2]
-- ARGV  sid unames version created updated expires ttl user n b lead nmeta chan
--       [k v]* entries*
-- Writes the copy if the session is absent here, or over a fenced copy of an
-- older generation (then announcing it, and dropping the fenced copy's outbox,
-- which the reconciler has moved). Replies 1 written, 0 present, -1 refused:
-- the copy is of a deleted generation (created before the tombstone) or
-- already past its absolute expiry (-1: none); or {'users', user...}.
-- @include now
-- @include hash
-- @include index
local m, h, x, d, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
IX.idx, IX.exp, IX.own, IX.obx = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
users(ARGV[2], 10)
local sid, chan = ARGV[1], ARGV[13]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'created', 'f')
local live = f[1] and not (f[2] and tonumber(f[2]) <= now)
if live and not f[4] then return 0 end
if live and tonumber(ARGV[4]) <= tonumber(f[3]) then return 0 end
local tomb = redis.call('GET', d)
if tomb and tonumber(ARGV[4]) < tonumber(tomb) then return -1 end
local e, ttl, user, nmeta = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[12])
if e >= 0 and e <= now then return -1 end
if user == '' then user = nil end
need_owner(sid)
need(user)
if WANT then return demand() end
bury(m, h, x, sid)
if live then
  redis.call('DEL', ob)
  redis.call('ZREM', IX.obx, sid)
end
local fields = {'version', ARGV[3], 'created', ARGV[4], 'updated', ARGV[5],
                'n', ARGV[9], 'b', ARGV[10], 'lead', ARGV[11]}
if e >= 0 then fields[#fields + 1] = 'expires'; fields[#fields + 1] = ARGV[6] end
if ttl >= 0 then fields[#fields + 1] = 'ttl'; fields[#fields + 1] = ARGV[7] end
if user then
  fields[#fields + 1] = 'user'; fields[#fields + 1] = user
  redis.call('HSET', IX.own, sid, user)
end
for i = 0, nmeta - 1 do
  fields[#fields + 1] = 'm:' .. ARGV[14 + 2 * i]
  fields[#fields + 1] = ARGV[15 + 2 * i]
end
hset(h, fields)
push_raw(m, 14 + 2 * nmeta, #ARGV)
if e >= 0 then set_expiry(m, h, x, sid, ARGV[6]) end
touch(sid, user, ARGV[5])
if live then publish(chan, ARGV[4], ARGV[3], sid) end
return 1
