-- RPUSH onto `key` the entries '<kind><seq>:<now>:<payload>' with kind i =
-- kinds[i], payload ARGV[first + i - 1] and seq seq0 + i - 1; returns the
-- list's length afterwards (0 when nothing was pushed).
local function push_entries(key, kinds, first, seq0, now)
  local stamp = ':' .. fmt(now) .. ':'
  local total, i, n = #kinds, 1, 0
  while i <= total do
    local j = math.min(i + CHUNK - 1, total)
    local batch = {}
    for k = i, j do
      batch[#batch + 1] = string.sub(kinds, k, k) .. fmt(seq0 + k - 1) .. stamp
                          .. ARGV[first + k - 1]
    end
    n = redis.call('RPUSH', key, unpack(batch))
    i = j + 1
  end
  return n
end
