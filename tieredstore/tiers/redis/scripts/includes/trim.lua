-- Trim per tieredstore.policy.plan_trim over the kind byte of each entry.
-- The spill list's key when trimmed entries are kept (spill=True), else nil.
local SPILL = nil
-- The first position >= pos (0-based, < n) whose kind byte is not `byte`, and
-- that byte (n, nil if none). Reads one entry first (the usual answer), then
-- growing chunks.
local function skip_kind(m, pos, n, byte)
  local size = 1
  while pos < n do
    local chunk = redis.call('LRANGE', m, pos, pos + size - 1)
    if #chunk == 0 then return n, nil end
    for j = 1, #chunk do
      local kind = string.byte(chunk[j], 1)
      if kind ~= byte then return pos + j - 1, kind end
    end
    pos = pos + #chunk
    size = math.min(size * 4, 256)
  end
  return n, nil
end
-- RPUSH entries [from, from + count) of m onto SPILL (they keep their seqs).
local function spill(m, from, count)
  local pos, stop = from, from + count
  while pos < stop do
    local chunk = redis.call('LRANGE', m, pos, math.min(pos + CHUNK, stop) - 1)
    if #chunk == 0 then return end
    redis.call('RPUSH', SPILL, unpack(chunk))
    pos = pos + #chunk
  end
end
-- Keep the `lead` leading system entries, drop the oldest of the rest down to
-- max(max - lead, 1), then keep dropping tool results at the head of the rest.
-- Returns the new (lead, n): survivors may begin with system entries.
local function trim(m, lead, n, max)
  if max < 0 then return lead, n end
  local drop = n - lead - math.max(max - lead, 1)
  if drop <= 0 then return lead, n end
  local stop, kind = skip_kind(m, lead + drop, n, 116)  -- 't'
  drop = stop - lead
  if SPILL then spill(m, lead, drop) end
  if lead == 0 then
    redis.call('LTRIM', m, drop, -1)
  else
    local saved = redis.call('LPOP', m, lead)
    redis.call('LTRIM', m, drop, -1)
    local i = #saved
    while i >= 1 do
      local j = math.max(i - CHUNK + 1, 1)
      local batch = {}
      for k = i, j, -1 do batch[#batch + 1] = saved[k] end
      redis.call('LPUSH', m, unpack(batch))
      i = j - 1
    end
  end
  n = n - drop
  if kind == 115 then lead = skip_kind(m, lead + 1, n, 115) end  -- 's'
  return lead, n
end
