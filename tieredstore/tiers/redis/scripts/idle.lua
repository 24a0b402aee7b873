-- idle: sessions of one bucket last active before a cutoff, oldest first.
-- KEYS  idx
-- ARGV  cutoff limit has_pos pos_score pos_member
-- Up to `limit` {sid, score} pairs with score < cutoff, strictly after
-- (pos_score, pos_member) when has_pos = '1'.
-- @include lt
local limit, has_pos = tonumber(ARGV[2]), ARGV[3] == '1'
local S, M = tonumber(ARGV[4]), ARGV[5]
local lo = has_pos and ARGV[4] or '-inf'
local out, off = {}, 0
while true do
  local items = redis.call('ZRANGE', KEYS[1], lo, '(' .. ARGV[1], 'BYSCORE', 'LIMIT', off, limit,
                           'WITHSCORES')
  for i = 1, #items, 2 do
    if not has_pos or tonumber(items[i + 1]) > S or lt(M, items[i]) then
      out[#out + 1] = items[i]; out[#out + 1] = items[i + 1]
      if #out >= 2 * limit then return out end
    end
  end
  if #items < 2 * limit then return out end
  off = off + limit
end
