-- outbox: read a session's outbox records.
-- KEYS h ob obx; ARGV sid. The outbox of a live session: {created, version,
-- record...}, or {} (a session gone meanwhile: its outbox and index entry go too).
local h, ob = KEYS[1], KEYS[2]
local f = redis.call('HMGET', h, 'version', 'created')
if not f[1] then
  redis.call('DEL', ob)
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {}
end
local out = {f[2], f[1]}
for _, record in ipairs(redis.call('HVALS', ob)) do out[#out + 1] = record end
return out
