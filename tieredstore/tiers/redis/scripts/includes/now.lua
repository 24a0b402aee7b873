-- Time by the server's clock, number formatting, and announcements.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%d', n) end
local CHUNK = 1000
-- Announce a session's new generation. `chan` is '<command> <channel>'
-- (PUBLISH on standalone Redis, SPUBLISH to the bucket's channel on a
-- cluster) or '' when publishing is off.
local function publish(chan, created, version, sid)
  if chan ~= '' then
    local cmd, name = string.match(chan, '^(%S+) (%S+)$')
    redis.call(cmd, name, created .. ' ' .. version .. ' ' .. sid)
  end
end
