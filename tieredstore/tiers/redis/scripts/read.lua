-- read: a session's window and bookkeeping (load, get, count, exists).
-- KEYS m h exp x; ARGV sid mode last sliding. mode: load | get | count | exists
-- Replies {0} missing, {2} fenced (see _FENCE), else {1, ...}.
-- @include now
-- @include hash
local m, h, exp, x = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sid, mode, last, sliding = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local now = now_ms()
local flat, o
if mode == 'get' then
  flat = redis.call('HGETALL', h)
  o = tohash(flat)
else
  local f = redis.call('HMGET', h, 'version', 'expires', 'ttl', 'f')
  o = {version = f[1] or nil, expires = f[2] or nil, ttl = f[3] or nil, f = f[4] or nil}
end
if not is_live(o, now) then return {0} end
if o.f then return {2} end
if mode == 'exists' then return {1} end
if mode == 'count' then return {1, redis.call('LLEN', m)} end
if sliding and o.ttl then
  local e = fmt(now + tonumber(o.ttl))
  redis.call('HSET', h, 'expires', e)
  redis.call('PEXPIREAT', m, e)
  redis.call('PEXPIREAT', h, e)
  redis.call('PEXPIREAT', x, e)
  redis.call('ZADD', exp, e, sid)
  if flat then
    for i = 1, #flat, 2 do if flat[i] == 'expires' then flat[i + 1] = e end end
  end
end
local entries
if last == 0 then entries = {}
elseif last > 0 then entries = redis.call('LRANGE', m, -last, -1)
else entries = redis.call('LRANGE', m, 0, -1) end
if mode == 'load' then return {1, entries} end
return {1, entries, flat, redis.call('LLEN', m)}
