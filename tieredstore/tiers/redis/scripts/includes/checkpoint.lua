-- A LangGraph thread's keys, declared in this order by every checkpoint_*
-- script: gt (head HASH: created, ver, updated, ttl, expires), gc (ZSET of
-- checkpoint members <ns>\0<id>, lexicographic), gv (HASH: c\0<member> ->
-- checkpoint record, w\0<member>\0<task>\0<idx> -> write record,
-- n\0<member> -> the checkpoint's change count), gw (ZSET of write members),
-- gd (tombstone), then the bucket's gidx (thread -> last write ms) and gfull
-- (threads holding more than the hot window of some namespace).
-- @include now
local GT, GC, GV, GW, GD, GIDX, GFULL = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
-- The lexicographic range of the members below `prefix` (which holds no NUL).
local function lo(prefix) return '[' .. prefix .. '\0' end
local function hi(prefix) return '(' .. prefix .. '\1' end
-- The write members of one checkpoint member.
local function writes_of(member) return redis.call('ZRANGEBYLEX', GW, lo(member), hi(member)) end
-- The checkpoint member <ns>\0<id> a write member <ns>\0<id>\0<task>\0<idx> belongs to.
local function owner_of(write_member)
  local a = string.find(write_member, '\0', 1, true)
  local b = string.find(write_member, '\0', a + 1, true)
  return string.sub(write_member, 1, b - 1)
end
-- Remove a checkpoint member with its record, change count and writes.
local function drop_checkpoint(member)
  local ws = writes_of(member)
  for i = 1, #ws do redis.call('HDEL', GV, 'w\0' .. ws[i]) end
  if #ws > 0 then redis.call('ZREMRANGEBYLEX', GW, lo(member), hi(member)) end
  redis.call('HDEL', GV, 'c\0' .. member, 'n\0' .. member)
  redis.call('ZREM', GC, member)
end
-- Start a write: the thread's generation (a new one never before its
-- tombstone), its change counter and activity. Returns created, ver.
local function begin_write(tid, now)
  local created = redis.call('HGET', GT, 'created')
  if not created then
    local tomb = tonumber(redis.call('GET', GD) or '0')
    created = fmt(math.max(now, tomb))
    redis.call('HSET', GT, 'created', created)
  end
  local ver = redis.call('HINCRBY', GT, 'ver', 1)
  redis.call('HSET', GT, 'updated', fmt(now))
  redis.call('ZADD', GIDX, now, tid)
  return created, ver
end
-- Finish a write: ttl_ms > 0 sets the thread to expire that long from now;
-- otherwise every key takes the expiry the thread already has, so the
-- thread's keys always expire together.
local function end_write(now, ttl_ms)
  local at
  if ttl_ms > 0 then
    at = now + ttl_ms
    redis.call('HSET', GT, 'ttl', fmt(ttl_ms), 'expires', fmt(at))
  else
    at = tonumber(redis.call('HGET', GT, 'expires') or '0')
  end
  if at > 0 then
    for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], at) end
  end
end
