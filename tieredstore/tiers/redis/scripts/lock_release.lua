-- lock_release: release a session lock held with this token.
-- KEYS lock; ARGV token. Compare-and-delete (see tieredstore.locking): only the
-- holder's token may. Returns 1 if released, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
