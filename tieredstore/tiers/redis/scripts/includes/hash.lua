-- Session hashes: decoding, liveness, chunked writes.
local function tohash(flat)
  local o = {}
  for i = 1, #flat, 2 do o[flat[i]] = flat[i + 1] end
  return o
end
local function is_live(o, now)
  return o.version ~= nil and not (o.expires and tonumber(o.expires) <= now)
end
local function hset(h, fields)
  local i = 1
  while i <= #fields do
    local batch = {}
    for k = i, math.min(i + 2 * CHUNK - 1, #fields) do batch[#batch + 1] = fields[k] end
    redis.call('HSET', h, unpack(batch))
    i = i + 2 * CHUNK
  end
end
-- RPUSH ARGV[first..last] (already encoded entries) onto key.
local function push_raw(key, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    redis.call('RPUSH', key, unpack(ARGV, i, j))
    i = j + 1
  end
end
