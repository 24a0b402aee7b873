-- list: one bucket's page of live sessions after a keyset cursor.
-- KEYS  zset idx exp (zset: the bucket's idx, or one user's index in it)
-- ARGV  wanted order has_cursor score member is_user budget
-- Returns {done, last_score, last_member, sid, score, sid, score, ...} holding up
-- to wanted + 1 live sessions after the cursor. done = 0 means the scan budget
-- ran out first; resume after (last_score, last_member), the last entry scanned.
-- Entries of expired sessions (and, in a user's index, of sessions whose activity
-- moved on) are dropped from the walked set; the expire task removes the rest.
-- @include now
-- @include lt
local key, idx, exp = KEYS[1], KEYS[2], KEYS[3]
local wanted, rev = tonumber(ARGV[1]), ARGV[2] == 'desc'
local has_cursor, S, M = ARGV[3] == '1', tonumber(ARGV[4]), ARGV[5]
local is_user, budget = ARGV[6] == '1', tonumber(ARGV[7])
local now = now_ms()
local rank = 0
if has_cursor then
  local cur = redis.call('ZSCORE', key, M)
  if cur and tonumber(cur) == S then
    if rev then rank = redis.call('ZREVRANK', key, M) + 1
    else rank = redis.call('ZRANK', key, M) + 1 end
  else
    -- The cursor's session moved or left: count what sorts before (S, M).
    if rev then rank = redis.call('ZCOUNT', key, '(' .. ARGV[4], '+inf')
    else rank = redis.call('ZCOUNT', key, '-inf', '(' .. ARGV[4]) end
    local off = 0
    while true do
      local ties
      if rev then
        ties = redis.call('ZRANGE', key, ARGV[4], ARGV[4], 'BYSCORE', 'REV', 'LIMIT', off, 128)
      else
        ties = redis.call('ZRANGE', key, ARGV[4], ARGV[4], 'BYSCORE', 'LIMIT', off, 128)
      end
      local stop = false
      for _, t in ipairs(ties) do
        local before
        if rev then before = not lt(t, M) else before = not lt(M, t) end
        if before then rank = rank + 1 else stop = true; break end
      end
      if stop or #ties < 128 then break end
      off = off + 128
    end
  end
end
local out = {0, false, false}
local found, scanned, done = 0, 0, false
local dead, moved = {}, {}
while not done do
  local n = math.min(math.max(wanted + 1 - found, 16), budget - scanned, CHUNK)
  if n <= 0 then break end
  local items
  if rev then items = redis.call('ZRANGE', key, rank, rank + n - 1, 'REV', 'WITHSCORES')
  else items = redis.call('ZRANGE', key, rank, rank + n - 1, 'WITHSCORES') end
  local count = #items / 2
  if count == 0 then done = true; break end
  local sids = {}
  for i = 1, count do sids[i] = items[2 * i - 1] end
  local expires = redis.call('ZMSCORE', exp, unpack(sids))
  local current = is_user and redis.call('ZMSCORE', idx, unpack(sids)) or nil
  for i = 1, count do
    local sid, score = sids[i], items[2 * i]
    scanned = scanned + 1
    out[2] = score; out[3] = sid
    if expires[i] and tonumber(expires[i]) <= now then
      dead[#dead + 1] = sid
    elseif current and tonumber(current[i] or -1) ~= tonumber(score) then
      moved[#moved + 1] = sid
    else
      out[#out + 1] = sid; out[#out + 1] = score
      found = found + 1
      if found > wanted then done = true; break end
    end
  end
  rank = rank + count
  if count < n then done = true end
end
for _, sid in ipairs(dead) do redis.call('ZREM', key, sid) end
for _, sid in ipairs(moved) do redis.call('ZREM', key, sid) end
if done then out[1] = 1 end
return out
