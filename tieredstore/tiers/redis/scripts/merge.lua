-- merge: update some metadata keys of a live session.
-- KEYS  h ob obx idx, then the user indexes named in ARGV[2]
-- ARGV  sid unames chan outbox [key json-or-empty]*   (empty = remove the key)
-- With outbox = '1' the write is kept in the outbox, merged metadata as body.
-- Replies {'ok', version, created, updated, expires, ttl, n, pending, key, json, ...},
-- {'missing'}, {'fenced'} or {'users', user...}.
-- @include now
-- @include index
local h, ob = KEYS[1], KEYS[2]
IX.obx, IX.idx = KEYS[3], KEYS[4]
users(ARGV[2], 5)
local sid, chan, keep = ARGV[1], ARGV[3], ARGV[4] == '1'
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'updated', 'user', 'created', 'ttl', 'n',
                     'f')
if not f[1] or (f[2] and tonumber(f[2]) <= now) then return {'missing'} end
if f[8] then return {'fenced'} end
need(f[4] or nil)
if WANT then return demand() end
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', h, 'm:' .. ARGV[i])
  else redis.call('HSET', h, 'm:' .. ARGV[i], ARGV[i + 1]) end
end
local version = redis.call('HINCRBY', h, 'version', 1)
local updated = math.max(now, tonumber(f[3]))
redis.call('HSET', h, 'updated', fmt(updated))
touch(sid, f[4] or nil, updated)
publish(chan, f[5], fmt(version), sid)
local out = {'ok', version, f[5], updated, f[2] or false, f[6] or false, f[7] or '0', 0}
local flat = redis.call('HGETALL', h)
local parts = {}
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == 'm:' then
    out[#out + 1] = string.sub(flat[i], 3); out[#out + 1] = flat[i + 1]
    parts[#parts + 1] = cjson.encode(string.sub(flat[i], 3)) .. ':' .. flat[i + 1]
  end
end
if keep then
  local n = tonumber(f[7] or '0')
  out[8] = outbox(ob, sid, 'm', version, n, n, f[5], updated, f[2] or nil, f[6] or nil,
                  '{' .. table.concat(parts, ',') .. '}', now)
end
return out
