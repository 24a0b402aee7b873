-- fence: freeze a session for reconciliation.
-- KEYS h ob. Fence a live session: from now on writes reply 'fenced', reads
-- see it as fenced and archival leaves it, until a restore of a newer
-- generation replaces it (see TieredCore's reconciliation). Returns
-- {1, created, version, next seq, record...} (its outbox), or {0}.
-- @include now
local h, ob = KEYS[1], KEYS[2]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'created', 'n')
if not f[1] or (f[2] and tonumber(f[2]) <= now) then return {0} end
redis.call('HSET', h, 'f', '1')
local out = {1, f[3], f[1], f[4] or '0'}
for _, record in ipairs(redis.call('HVALS', ob)) do out[#out + 1] = record end
return out
