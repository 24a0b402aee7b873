-- ack: drop outbox records the archive now holds.
-- KEYS h ob obx; ARGV sid created version*. The archive holds these writes of
-- generation `created`: drop their outbox records (none if the session is now
-- another generation). Returns the records left.
local h, ob, obx = KEYS[1], KEYS[2], KEYS[3]
local c = redis.call('HGET', h, 'created')
if c ~= ARGV[2] then return redis.call('HLEN', ob) end
for i = 3, #ARGV do redis.call('HDEL', ob, ARGV[i]) end
local left = redis.call('HLEN', ob)
if left == 0 then redis.call('ZREM', obx, ARGV[1]) end
return left
