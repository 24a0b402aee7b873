-- The bucket's indexes. IX holds the index keys a script declares (idx, exp,
-- own, obx); UK maps a user id to its per-user index key, declared by the
-- caller at the end of KEYS (see users()). A script first asks need() for
-- every user index it will write; if one was not declared it replies
-- demand() before writing anything, and the caller calls again with it.
local IX, UK, WANT = {}, {}, nil
-- KEYS[first..] are the user indexes of the users named in `names` (space-separated).
local function users(names, first)
  local i = first
  for u in string.gmatch(names, '%S+') do
    UK[u] = KEYS[i]
    i = i + 1
  end
end
local function need(user)
  if user and not UK[user] then
    WANT = WANT or {}
    WANT[#WANT + 1] = user
    UK[user] = false
  end
end
-- need() the user index that holds sid, as `own` records it.
local function need_owner(sid)
  local owner = redis.call('HGET', IX.own, sid)
  if owner then need(owner) end
  return owner or nil
end
local function demand() return {'users', unpack(WANT)} end
-- Drop every index entry of a session (its owner's index must be declared).
local function unindex(sid)
  redis.call('ZREM', IX.idx, sid)
  redis.call('ZREM', IX.exp, sid)
  local owner = redis.call('HGET', IX.own, sid)
  if owner then
    redis.call('ZREM', UK[owner], sid)
    redis.call('HDEL', IX.own, sid)
  end
end
-- Remove a dead (expired or deleted) session's keys and index entries.
local function bury(m, h, x, sid)
  redis.call('DEL', m, h, x)
  unindex(sid)
end
local function touch(sid, user, updated)
  redis.call('ZADD', IX.idx, updated, sid)
  if user then redis.call('ZADD', UK[user], updated, sid) end
end
-- The created time of a new generation: never before the session's tombstone
-- (key d), so copies of the deleted generation stay recognisably older.
local function born(d, now)
  local t = redis.call('GET', d)
  if t and tonumber(t) > now then return tonumber(t) end
  return now
end
-- Keep a write_through write in the session's outbox (hash ob: version ->
-- record) until the archive confirms it; obx indexes sessions with records.
local function outbox(ob, sid, op, version, first, nxt, created, updated, e, t, body, now)
  local head = op .. ' ' .. fmt(version) .. ' ' .. fmt(first) .. ' ' .. fmt(nxt) .. ' '
               .. created .. ' ' .. fmt(updated) .. ' ' .. (e or '-1') .. ' ' .. (t or '-1')
  redis.call('HSET', ob, fmt(version), head .. '\n' .. body)
  if e then redis.call('PEXPIREAT', ob, e) else redis.call('PERSIST', ob) end
  redis.call('ZADD', IX.obx, 'NX', now, sid)
  return redis.call('HLEN', ob)
end
local function set_expiry(m, h, x, sid, e)
  redis.call('PEXPIREAT', m, e)
  redis.call('PEXPIREAT', h, e)
  redis.call('PEXPIREAT', x, e)
  redis.call('ZADD', IX.exp, e, sid)
end
