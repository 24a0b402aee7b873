-- peek: candidates for the expire task in one bucket, with their owners.
-- KEYS  zset own
-- ARGV  mode a b
-- mode 'due': up to `a` members of zset (the bucket's exp) whose score is due by
-- the server's clock; mode 'rank': the members at ranks a .. a + b - 1 (idx).
-- Returns {sid, owner-or-'', sid, owner-or-'', ...}.
-- @include now
local zset, own, a = KEYS[1], KEYS[2], tonumber(ARGV[2])
local sids
if ARGV[1] == 'due' then
  sids = redis.call('ZRANGE', zset, '-inf', fmt(now_ms()), 'BYSCORE', 'LIMIT', 0, a)
else
  sids = redis.call('ZRANGE', zset, a, a + tonumber(ARGV[3]) - 1)
end
local out = {}
if #sids == 0 then return out end
local owners = redis.call('HMGET', own, unpack(sids))
for i, sid in ipairs(sids) do
  out[#out + 1] = sid
  out[#out + 1] = owners[i] or ''
end
return out
