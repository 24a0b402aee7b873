-- fork: create session dst as a copy of a source session read just before.
-- KEYS  m h x d idx exp own (dst's), then the user indexes named in ARGV[2]
-- ARGV  dst unames ttl chan lead n b src_ttl src_expires user nmeta nwindow
--       [k v]* window entries* spill entries*
-- The copy keeps the source's seqs (entries are copied verbatim); it is
-- generation (born, 1). ttl < 0 keeps the source's TTL; a source with an
-- expiry but no TTL passes its expiry on. Replies {'ok', 1}, {'exists'} or
-- {'users', user...}.
-- @include now
-- @include hash
-- @include index
local m, h, x, d = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
IX.idx, IX.exp, IX.own = KEYS[5], KEYS[6], KEYS[7]
users(ARGV[2], 8)
local dst, ttl, chan = ARGV[1], tonumber(ARGV[3]), ARGV[4]
local user, nmeta, nwin = ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
if user == '' then user = nil end
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires')
if f[1] and not (f[2] and tonumber(f[2]) <= now) then return {'exists'} end
need_owner(dst)
need(user)
if WANT then return demand() end
bury(m, h, x, dst)
local t = ARGV[8] ~= '' and ARGV[8] or nil
if ttl >= 0 then t = fmt(ttl) end
local e = t and fmt(now + tonumber(t)) or (ARGV[9] ~= '' and ARGV[9] or nil)
local created = fmt(born(d, now))
local fields = {'version', '1', 'created', created, 'updated', fmt(now), 'lead', ARGV[5],
                'n', ARGV[6], 'b', ARGV[7]}
if e then fields[#fields + 1] = 'expires'; fields[#fields + 1] = e end
if t then fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t end
if user then
  fields[#fields + 1] = 'user'; fields[#fields + 1] = user
  redis.call('HSET', IX.own, dst, user)
end
for i = 0, nmeta - 1 do
  fields[#fields + 1] = 'm:' .. ARGV[13 + 2 * i]
  fields[#fields + 1] = ARGV[14 + 2 * i]
end
hset(h, fields)
local first = 13 + 2 * nmeta
push_raw(m, first, first + nwin - 1)
push_raw(x, first + nwin, #ARGV)
if e then set_expiry(m, h, x, dst, e) end
touch(dst, user, now)
publish(chan, created, '1', dst)
return {'ok', 1}
