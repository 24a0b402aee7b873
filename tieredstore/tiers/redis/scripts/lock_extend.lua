-- lock_extend: extend a session lock held with this token.
-- KEYS lock; ARGV token ttl_ms. Returns 1 if extended, 0 if the token no longer holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
