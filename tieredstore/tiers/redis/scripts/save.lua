-- save: replace a session's messages (and optionally metadata and user).
-- KEYS  m h x d ob idx exp own obx, then the user indexes named in ARGV[2]
-- ARGV  sid unames expected ttl user nmeta lead kinds create chan plead drop spill body
--       [k v]* payloads*
-- `kinds` are all the call's messages; plan_trim keeps kinds[1..plead] and
-- kinds[plead+drop+1..] and drops the rest (spilled when spill = '1'). The
-- payloads are all of them with spill, else only the kept ones. A non-empty
-- `body` keeps the write in the outbox (write_through).
-- Replies {'ok', version, first, next, created, updated, expires, ttl, pending},
-- {'absent'}, {'fenced'}, {'conflict', version} or {'users', user...}.
-- @include now
-- @include hash
-- @include push
-- @include index
local m, h, x, d, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
IX.idx, IX.exp, IX.own, IX.obx = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
users(ARGV[2], 10)
local sid = ARGV[1]
local expected, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local user, nmeta, lead, kinds = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local create, chan = ARGV[9] == '1', ARGV[10]
local plead, drop, spilling = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13] == '1'
local body = ARGV[14]
local now = now_ms()
local o = tohash(redis.call('HGETALL', h))
local live = is_live(o, now)
if live and o.f then return {'fenced'} end
if not live and not create then return {'absent'} end
local version = live and tonumber(o.version) or 0
if expected >= 0 and expected ~= version then return {'conflict', version} end
if not live then
  need_owner(sid)
  o = {}
end
if user == '' then user = o.user end
need(o.user)
need(user)
if WANT then return demand() end
local first = live and tonumber(o.n or '0') or 0
if live then redis.call('DEL', m, h, x) else bury(m, h, x, sid) end
if o.user and o.user ~= user then
  redis.call('ZREM', UK[o.user], sid)
  redis.call('HDEL', IX.own, sid)
end
if user and user ~= o.user then redis.call('HSET', IX.own, sid, user) end
local e, t = o.expires, o.ttl
if ttl >= 0 then t = fmt(ttl); e = fmt(now + ttl) end
local created, updated = o.created or fmt(born(d, now)), now
if live then updated = math.max(now, tonumber(o.updated)) end
local fields = {'version', fmt(version + 1), 'created', created, 'updated', fmt(updated),
                'lead', lead, 'n', fmt(first + #kinds), 'b', fmt(first)}
if e then fields[#fields + 1] = 'expires'; fields[#fields + 1] = e end
if t then fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t end
if user then fields[#fields + 1] = 'user'; fields[#fields + 1] = user end
if nmeta >= 0 then
  for i = 0, nmeta - 1 do
    fields[#fields + 1] = 'm:' .. ARGV[15 + 2 * i]
    fields[#fields + 1] = ARGV[16 + 2 * i]
  end
else
  for k, v in pairs(o) do
    if string.sub(k, 1, 2) == 'm:' then fields[#fields + 1] = k; fields[#fields + 1] = v end
  end
end
hset(h, fields)
local p = 15 + 2 * math.max(nmeta, 0)
push_entries(m, string.sub(kinds, 1, plead), p, first, now)
if spilling then
  push_entries(x, string.sub(kinds, plead + 1, plead + drop), p + plead, first + plead, now)
  p = p + drop
end
push_entries(m, string.sub(kinds, plead + drop + 1), p + plead, first + plead + drop, now)
if e then set_expiry(m, h, x, sid, e) end
touch(sid, user, updated)
publish(chan, created, fmt(version + 1), sid)
local pending = 0
if body ~= '' then
  pending = outbox(ob, sid, 's', version + 1, first, first + #kinds, created, updated, e, t,
                   body, now)
end
return {'ok', version + 1, first, first + #kinds, created, updated, e or false, t or false,
        pending}
