-- append: add messages at the end of a session's window, trimming it.
-- KEYS  m h x d ob idx exp own obx, then the user indexes named in ARGV[2]
-- ARGV  sid unames expected ttl max kinds create chan spill body call payloads*
-- Replies as save. `call` names this call: a client that sends the script again
-- after losing its reply (redis-py's cluster client retries on a dropped
-- connection) gets the first reply back instead of appending twice.
-- @include now
-- @include hash
-- @include push
-- @include index
-- @include trim
local m, h, x, d, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
IX.idx, IX.exp, IX.own, IX.obx = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
users(ARGV[2], 10)
local sid = ARGV[1]
local expected, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local kinds, create, chan = ARGV[6], ARGV[7] == '1', ARGV[8]
if ARGV[9] == '1' then SPILL = x end
local body, call = ARGV[10], ARGV[11]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'ttl', 'updated', 'lead', 'user',
                      'created', 'n', 'f', 'w', 'wr')
local live = f[1] and not (f[2] and tonumber(f[2]) <= now)
if live and f[9] then return {'fenced'} end
if live and call ~= '' and f[10] == call then
  local r = {'ok'}
  for v in string.gmatch(f[11], '%S+') do r[#r + 1] = v end
  if r[7] == '-' then r[7] = false end
  if r[8] == '-' then r[8] = false end
  r[9] = body ~= '' and redis.call('HLEN', ob) or 0
  return r
end
if not live and not create then return {'absent'} end
local version = live and tonumber(f[1]) or 0
if expected >= 0 and expected ~= version then return {'conflict', version} end
if live then need(f[6] or nil) else need_owner(sid) end
if WANT then return demand() end
local lead, created, updated, user, e, t, first = 0, nil, now, nil, nil, nil, 0
if live then
  lead = tonumber(f[5])
  created = f[7]
  updated = math.max(now, tonumber(f[4]))
  user = f[6] or nil
  e = f[2] or nil
  t = f[3] or nil
  first = tonumber(f[8] or '0')
else
  bury(m, h, x, sid)
  created = fmt(born(d, now))
end
local n = push_entries(m, kinds, 12, first, now)
local before = n - #kinds
for i = 1, #kinds do
  if lead == before + i - 1 and string.byte(kinds, i) == 115 then lead = lead + 1 end
end
lead, n = trim(m, lead, n, max)
local fields = {'version', fmt(version + 1), 'created', created, 'updated', fmt(updated),
                'lead', fmt(lead), 'n', fmt(first + #kinds)}
if not live then fields[#fields + 1] = 'b'; fields[#fields + 1] = '0' end
if ttl >= 0 then t = fmt(ttl); e = fmt(now + ttl) end
if call ~= '' then
  fields[#fields + 1] = 'w'; fields[#fields + 1] = call
  fields[#fields + 1] = 'wr'
  fields[#fields + 1] = table.concat({fmt(version + 1), fmt(first), fmt(first + #kinds),
                                      created, fmt(updated), e or '-', t or '-'}, ' ')
end
if ttl >= 0 then
  fields[#fields + 1] = 'expires'; fields[#fields + 1] = e
  fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t
  hset(h, fields)
  set_expiry(m, h, x, sid, e)
else
  hset(h, fields)
  -- the hash keeps its TTL; the lists may be new (or re-made by the trim)
  if e then
    redis.call('PEXPIREAT', m, e)
    if SPILL then redis.call('PEXPIREAT', x, e) end
  end
end
touch(sid, user, updated)
publish(chan, created, fmt(version + 1), sid)
local pending = 0
if body ~= '' then
  pending = outbox(ob, sid, 'a', version + 1, first, first + #kinds, created, updated, e, t,
                   body, now)
end
return {'ok', version + 1, first, first + #kinds, created, updated, e or false, t or false,
        pending}
