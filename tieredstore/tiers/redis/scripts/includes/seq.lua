-- Seqs of entries in a list sorted by seq.
local function seq_of(entry) return tonumber(string.match(entry, '^.(%d+):')) end
-- How many entries of list L (length n, ascending seqs) have seq < bound.
local function count_below(L, n, bound)
  if n == 0 then return 0 end
  if seq_of(redis.call('LINDEX', L, n - 1)) < bound then return n end
  local lo, hi = 0, n - 1  -- the answer lies in [lo, hi]
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if seq_of(redis.call('LINDEX', L, mid)) < bound then lo = mid + 1 else hi = mid end
  end
  return lo
end
