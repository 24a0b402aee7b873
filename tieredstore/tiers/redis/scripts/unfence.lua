-- unfence: lift a fence.
-- KEYS h; ARGV created. Lift the fence of generation `created` (it proved current).
if redis.call('HGET', KEYS[1], 'created') == ARGV[1] then redis.call('HDEL', KEYS[1], 'f') end
return 1
