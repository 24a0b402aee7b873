"""``RedisStore``: the hot tier, one atomic Lua script per operation.

Key layout (``P`` = ``{prefix}:{namespace}``)::

    P:{<sid>}:m        LIST   entries ``<kind><unix-ms>:<json>`` (see codec)
    P:{<sid>}:h        HASH   version, created, updated, expires, ttl, user,
                              lead (leading system entries), m:<key> -> JSON
    P:idx              ZSET   sid -> updated ms (last activity; for ``list``)
    P:u:<user_id>      ZSET   sid -> updated ms, per user
    P:exp              ZSET   sid -> expires ms (only sessions with a TTL)
    P:own              HASH   sid -> user id (finds the user index of a session
                              whose own keys have already expired)

A session exists while its hash exists and its ``expires`` lies in the
future; a session saved with ``[]`` has a hash and no list. Both per-session
keys carry the same absolute expiry (``PEXPIREAT``), so they vanish together.

Every write (save, append, merge_metadata, delete, fork) is one ``EVALSHA``:
version check, entries, trim, version bump, TTL and index updates happen
atomically. Every read is one ``EVALSHA`` too (a sliding-TTL read refreshes
the expiry in the same script). Times (created, updated, expires, entry
stamps) come from ``redis.call('TIME')``, so app servers with skewed clocks
agree; the store's ``clock`` option is not used here.

``list`` walks the ``idx`` (or per-user) sorted set by rank with keyset
cursors ``(score, member)``: O(log N + limit) per page, never ``KEYS``/``SCAN``.
Expired sessions are recognised through the ``exp`` set without touching
per-session keys and removed from the indexes lazily (``purge_expired`` does
it in bulk); as a safety net, a per-user entry whose score differs from
``idx`` is treated as stale and dropped. ``exp`` is a sorted set rather than
a hash so that purging finds expired sessions in O(log N + batch).

Redis Cluster: one session's keys share a slot (the session id is the hash
tag), but the index keys (``idx``, ``exp``, ``own``, ``u:*``) live in other
slots, the write scripts touch both, and some scripts build key names from
arguments. On a cluster the index would have to be maintained by a separate
call; that is a known design tension, and this store targets standalone Redis
(or a primary with replicas) for now. Use a ``noeviction`` or ``volatile-*``
``maxmemory-policy``: evicting per-session keys behind the index's back
leaves index entries that ``list`` cannot tell from live sessions.

The Lua sources, key builders and reply parsers below are I/O-free "plans"
(generators that yield :class:`Call` and receive replies), so an asyncio shell
can drive the very same logic.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisError

from tieredstore.base import BaseStore
from tieredstore.codec import (
    decode_cursor,
    decode_json,
    decode_message,
    encode_cursor,
    encode_json,
    entry_payload,
)
from tieredstore.config import Limits
from tieredstore.core import Batch, Order, check_limit, check_session_id, from_ms
from tieredstore.errors import (
    BackendUnavailable,
    InvalidInput,
    SessionExists,
    SessionNotFound,
    VersionConflict,
)
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.policy import leading_system, plan_trim

__all__ = ["SCRIPTS", "Call", "RedisKeys", "RedisOps", "RedisStore"]

T = TypeVar("T")
Plan = Generator["Call", Any, T]

# -- Lua ---------------------------------------------------------------------
#
# Each script is assembled from the helper snippets it uses. Invariants the
# scripts keep (and rely on, to skip redundant calls): a session's two keys
# carry a TTL exactly when its hash has ``expires`` (both ``PEXPIREAT`` that
# value), ``exp`` holds the session exactly then, ``own`` holds it exactly
# when it has a user, and ``idx``/``u:<user>`` scores equal its ``updated``.

_NOW = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%d', n) end
local CHUNK = 1000
"""

_HASH = r"""
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
"""

# RPUSH ARGV[first..] as entries '<kind><now>:<payload>' (kind i = kinds[i]);
# returns the list's length afterwards.
_PUSH = r"""
local function push_entries(m, kinds, first, now)
  local stamp = fmt(now) .. ':'
  local total, i, n = #kinds, 1, 0
  while i <= total do
    local j = math.min(i + CHUNK - 1, total)
    local batch = {}
    for k = i, j do
      batch[#batch + 1] = string.sub(kinds, k, k) .. stamp .. ARGV[first + k - 1]
    end
    n = redis.call('RPUSH', m, unpack(batch))
    i = j + 1
  end
  return n
end
"""

# IX holds the namespace's index keys (idx, exp, own) and the user-index
# prefix (up); each script fills in those it declares.
_INDEX = r"""
local IX = {}
-- Drop every index entry of a session; `own` finds its user index even
-- after the session's own keys have expired.
local function unindex(sid)
  redis.call('ZREM', IX.idx, sid)
  redis.call('ZREM', IX.exp, sid)
  local owner = redis.call('HGET', IX.own, sid)
  if owner then
    redis.call('ZREM', IX.up .. owner, sid)
    redis.call('HDEL', IX.own, sid)
  end
end
-- Remove a dead (expired or deleted) session's keys and index entries.
local function bury(m, h, sid)
  redis.call('DEL', m, h)
  unindex(sid)
end
local function touch(sid, user, updated)
  redis.call('ZADD', IX.idx, updated, sid)
  if user then redis.call('ZADD', IX.up .. user, updated, sid) end
end
local function set_expiry(m, h, sid, e)
  redis.call('PEXPIREAT', m, e)
  redis.call('PEXPIREAT', h, e)
  redis.call('ZADD', IX.exp, e, sid)
end
"""

# Trim per tieredstore.policy.plan_trim over the kind byte of each entry.
_TRIM = r"""
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
-- Keep the `lead` leading system entries, drop the oldest of the rest down to
-- max(max - lead, 1), then keep dropping tool results at the head of the rest.
-- Returns the new (lead, n): survivors may begin with system entries.
local function trim(m, lead, n, max)
  if max < 0 then return lead, n end
  local drop = n - lead - math.max(max - lead, 1)
  if drop <= 0 then return lead, n end
  local stop, kind = skip_kind(m, lead + drop, n, 116)  -- 't'
  drop = stop - lead
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
"""

# KEYS m h idx exp own; ARGV sid uprefix expected ttl user nmeta lead kinds [k v]* payloads*
_SAVE = r"""
local m, h = KEYS[1], KEYS[2]
IX.idx, IX.exp, IX.own, IX.up = KEYS[3], KEYS[4], KEYS[5], ARGV[2]
local sid = ARGV[1]
local expected, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local user, nmeta, lead, kinds = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local now = now_ms()
local o = tohash(redis.call('HGETALL', h))
local live = is_live(o, now)
local version = live and tonumber(o.version) or 0
if expected >= 0 and expected ~= version then return {'conflict', version} end
if live then
  redis.call('DEL', m, h)
else
  bury(m, h, sid)
  o = {}
end
if user == '' then user = o.user end
if o.user and o.user ~= user then
  redis.call('ZREM', IX.up .. o.user, sid)
  redis.call('HDEL', IX.own, sid)
end
if user and user ~= o.user then redis.call('HSET', IX.own, sid, user) end
local e, t = o.expires, o.ttl
if ttl >= 0 then t = fmt(ttl); e = fmt(now + ttl) end
local created, updated = o.created or fmt(now), now
if live then updated = math.max(now, tonumber(o.updated)) end
local fields = {'version', fmt(version + 1), 'created', created, 'updated', fmt(updated),
                'lead', lead}
if e then
  fields[#fields + 1] = 'expires'; fields[#fields + 1] = e
  fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t
end
if user then fields[#fields + 1] = 'user'; fields[#fields + 1] = user end
if nmeta >= 0 then
  for i = 0, nmeta - 1 do
    fields[#fields + 1] = 'm:' .. ARGV[9 + 2 * i]
    fields[#fields + 1] = ARGV[10 + 2 * i]
  end
else
  for k, v in pairs(o) do
    if string.sub(k, 1, 2) == 'm:' then fields[#fields + 1] = k; fields[#fields + 1] = v end
  end
end
hset(h, fields)
push_entries(m, kinds, 9 + 2 * math.max(nmeta, 0), now)
if e then set_expiry(m, h, sid, e) end
touch(sid, user, updated)
return {'ok', version + 1}
"""

# KEYS m h idx exp own; ARGV sid uprefix expected ttl max kinds payloads*
_APPEND = r"""
local m, h = KEYS[1], KEYS[2]
IX.idx, IX.exp, IX.own, IX.up = KEYS[3], KEYS[4], KEYS[5], ARGV[2]
local sid = ARGV[1]
local expected, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local kinds = ARGV[6]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'ttl', 'updated', 'lead', 'user', 'created')
local live = f[1] and not (f[2] and tonumber(f[2]) <= now)
local version = live and tonumber(f[1]) or 0
if expected >= 0 and expected ~= version then return {'conflict', version} end
local lead, created, updated, user, e, t = 0, fmt(now), now, nil, nil, nil
if live then
  lead = tonumber(f[5])
  created = f[7]
  updated = math.max(now, tonumber(f[4]))
  user = f[6] or nil
  e = f[2] or nil
  t = f[3] or nil
else
  bury(m, h, sid)
end
local n = push_entries(m, kinds, 7, now)
local before = n - #kinds
for i = 1, #kinds do
  if lead == before + i - 1 and string.byte(kinds, i) == 115 then lead = lead + 1 end
end
lead, n = trim(m, lead, n, max)
local fields = {'version', fmt(version + 1), 'created', created, 'updated', fmt(updated),
                'lead', fmt(lead)}
if ttl >= 0 then
  t = fmt(ttl); e = fmt(now + ttl)
  fields[#fields + 1] = 'expires'; fields[#fields + 1] = e
  fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t
  hset(h, fields)
  set_expiry(m, h, sid, e)
else
  hset(h, fields)
  -- the hash keeps its TTL; the list may be new (or re-made by the trim)
  if e then redis.call('PEXPIREAT', m, e) end
end
touch(sid, user, updated)
return {'ok', version + 1}
"""

# KEYS m h exp; ARGV sid mode last sliding. mode: load | get | count | exists
_READ = r"""
local m, h, exp = KEYS[1], KEYS[2], KEYS[3]
local sid, mode, last, sliding = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local now = now_ms()
local flat, o
if mode == 'get' then
  flat = redis.call('HGETALL', h)
  o = tohash(flat)
else
  local f = redis.call('HMGET', h, 'version', 'expires', 'ttl')
  o = {version = f[1] or nil, expires = f[2] or nil, ttl = f[3] or nil}
end
if not is_live(o, now) then return {0} end
if mode == 'exists' then return {1} end
if mode == 'count' then return {1, redis.call('LLEN', m)} end
if sliding and o.ttl then
  local e = fmt(now + tonumber(o.ttl))
  redis.call('HSET', h, 'expires', e)
  redis.call('PEXPIREAT', m, e)
  redis.call('PEXPIREAT', h, e)
  redis.call('ZADD', exp, e, sid)
  if flat then
    for i = 1, #flat, 2 do if flat[i] == 'expires' then flat[i + 1] = e end end
  end
end
local entries
if last == 0 then entries = {}
elseif last > 0 then entries = redis.call('LRANGE', m, -last, -1)
else entries = redis.call('LRANGE', m, 0, -1) end
if mode == 'load' then return {1, entries} end
return {1, entries, flat, redis.call('LLEN', m)}
"""

# KEYS h idx; ARGV sid uprefix [key json-or-empty]*  (empty = remove the key)
_MERGE = r"""
local h = KEYS[1]
IX.idx, IX.up = KEYS[2], ARGV[2]
local sid = ARGV[1]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'updated', 'user')
if not f[1] or (f[2] and tonumber(f[2]) <= now) then return {'missing'} end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', h, 'm:' .. ARGV[i])
  else redis.call('HSET', h, 'm:' .. ARGV[i], ARGV[i + 1]) end
end
local version = redis.call('HINCRBY', h, 'version', 1)
local updated = math.max(now, tonumber(f[3]))
redis.call('HSET', h, 'updated', fmt(updated))
touch(sid, f[4] or nil, updated)
local out = {'ok', version}
local flat = redis.call('HGETALL', h)
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == 'm:' then
    out[#out + 1] = string.sub(flat[i], 3); out[#out + 1] = flat[i + 1]
  end
end
return out
"""

# KEYS m h idx exp own; ARGV sid uprefix
_DELETE = r"""
local m, h = KEYS[1], KEYS[2]
IX.idx, IX.exp, IX.own, IX.up = KEYS[3], KEYS[4], KEYS[5], ARGV[2]
local sid = ARGV[1]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires')
local existed = f[1] and not (f[2] and tonumber(f[2]) <= now)
bury(m, h, sid)
if existed then return 1 end
return 0
"""

# KEYS src_m src_h dst_m dst_h idx exp own; ARGV src dst uprefix ttl
_FORK = r"""
local sm, sh, dm, dh = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
IX.idx, IX.exp, IX.own, IX.up = KEYS[5], KEYS[6], KEYS[7], ARGV[3]
local dst, ttl = ARGV[2], tonumber(ARGV[4])
local now = now_ms()
local o = tohash(redis.call('HGETALL', sh))
if not is_live(o, now) then return {'missing'} end
local d = redis.call('HMGET', dh, 'version', 'expires')
if d[1] and not (d[2] and tonumber(d[2]) <= now) then return {'exists'} end
bury(dm, dh, dst)
-- COPY keeps the source's TTL, which equals its hash's expiry (none without)
if redis.call('EXISTS', sm) == 1 then redis.call('COPY', sm, dm) end
local t = o.ttl
if ttl >= 0 then t = fmt(ttl) end
local e = t and fmt(now + tonumber(t)) or nil
local fields = {'version', '1', 'created', fmt(now), 'updated', fmt(now), 'lead', o.lead}
if e then
  fields[#fields + 1] = 'expires'; fields[#fields + 1] = e
  fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t
end
if o.user then
  fields[#fields + 1] = 'user'; fields[#fields + 1] = o.user
  redis.call('HSET', IX.own, dst, o.user)
end
for k, v in pairs(o) do
  if string.sub(k, 1, 2) == 'm:' then fields[#fields + 1] = k; fields[#fields + 1] = v end
end
hset(dh, fields)
if e then set_expiry(dm, dh, dst, e) end
touch(dst, o.user, now)
return {'ok', 1}
"""

# KEYS zset idx exp own; ARGV wanted order has_cursor score member is_user budget uprefix
# Returns {done, last_score, last_member, sid, score, sid, score, ...} holding up
# to wanted + 1 live sessions after the cursor. done = 0 means the scan budget
# ran out first; resume after (last_score, last_member), the last entry scanned.
_LIST = r"""
local key = KEYS[1]
IX.idx, IX.exp, IX.own, IX.up = KEYS[2], KEYS[3], KEYS[4], ARGV[8]
local wanted, rev = tonumber(ARGV[1]), ARGV[2] == 'desc'
local has_cursor, S, M = ARGV[3] == '1', tonumber(ARGV[4]), ARGV[5]
local is_user, budget = ARGV[6] == '1', tonumber(ARGV[7])
local now = now_ms()
-- byte-wise a < b (Lua's own comparison follows the server's locale)
local function lt(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
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
  local expires = redis.call('ZMSCORE', IX.exp, unpack(sids))
  local current = is_user and redis.call('ZMSCORE', IX.idx, unpack(sids)) or nil
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
for _, sid in ipairs(dead) do
  redis.call('ZREM', key, sid)
  unindex(sid)
end
for _, sid in ipairs(moved) do redis.call('ZREM', key, sid) end
if done then out[1] = 1 end
return out
"""

# KEYS idx exp own; ARGV key_prefix uprefix limit. Bury up to `limit` expired sessions.
# Builds per-session key names from the prefix (undeclared keys: standalone only).
_PURGE = r"""
IX.idx, IX.exp, IX.own, IX.up = KEYS[1], KEYS[2], KEYS[3], ARGV[2]
local kp, limit = ARGV[1], tonumber(ARGV[3])
local now = now_ms()
local sids = redis.call('ZRANGE', IX.exp, '-inf', fmt(now), 'BYSCORE', 'LIMIT', 0, limit)
for _, sid in ipairs(sids) do
  local m, h = kp .. '{' .. sid .. '}:m', kp .. '{' .. sid .. '}:h'
  local e = redis.call('HGET', h, 'expires')
  if e and tonumber(e) > now then
    redis.call('ZADD', IX.exp, e, sid)  -- a stale index entry of a live session
  else
    bury(m, h, sid)
  end
end
return #sids
"""

SCRIPTS: dict[str, str] = {
    "save": _NOW + _HASH + _PUSH + _INDEX + _SAVE,
    "append": _NOW + _HASH + _PUSH + _INDEX + _TRIM + _APPEND,
    "read": _NOW + _HASH + _READ,
    "merge": _NOW + _INDEX + _MERGE,
    "delete": _NOW + _INDEX + _DELETE,
    "fork": _NOW + _HASH + _INDEX + _FORK,
    "list": _NOW + _INDEX + _LIST,
    "purge": _NOW + _INDEX + _PURGE,
}
"""Lua source of every script, by name (shared by the sync and async shells)."""

_LIST_SCAN_BUDGET = 1000
MAX_TTL_MS = 1000 * 365 * 86_400_000
"""The longest TTL RedisStore accepts (1000 years)."""
_STORE_OPTIONS = (
    "namespace",
    "prefix",
    "default_ttl",
    "max_messages",
    "sliding_ttl",
    "limits",
    "clock",
)


# -- the I/O-free core -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One script invocation: which script, its keys and its arguments."""

    script: str
    keys: list[str]
    args: list[str | bytes | int]


class RedisKeys:
    """Key names of one ``prefix``/``namespace``; see the module docstring."""

    __slots__ = ("exp", "idx", "namespace", "own", "prefix", "root", "user_prefix")

    def __init__(self, prefix: str, namespace: str) -> None:
        self.prefix = _check_part(prefix, "prefix")
        self.namespace = _check_part(namespace, "namespace")
        if ":" in namespace:
            raise InvalidInput("namespace must not contain ':'")
        self.root = f"{prefix}:{namespace}:"
        self.idx = self.root + "idx"
        self.exp = self.root + "exp"
        self.own = self.root + "own"
        self.user_prefix = self.root + "u:"

    def messages(self, sid: str) -> str:
        return f"{self.root}{{{sid}}}:m"

    def meta(self, sid: str) -> str:
        return f"{self.root}{{{sid}}}:h"

    def user(self, user_id: str) -> str:
        return self.user_prefix + user_id

    def session(self, sid: str) -> list[str]:
        """Both keys of a session (same cluster slot)."""
        tagged = f"{self.root}{{{sid}}}:"
        return [tagged + "m", tagged + "h"]


def _check_part(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    return check_session_id(value, Limits(), what=what)


def _opt(value: int | None) -> int:
    return -1 if value is None else value


def _ttl(ttl_ms: int | None) -> int:
    # Lua numbers are doubles and Redis refuses absurd expiry times; reject
    # rather than let an overflowed expiry drop the session on the spot.
    if ttl_ms is not None and ttl_ms > MAX_TTL_MS:
        raise InvalidInput(f"ttl must be at most {MAX_TTL_MS // 1000} seconds")
    return _opt(ttl_ms)


def _write_result(sid: str, expected: int | None, reply: Any) -> int:
    status = reply[0]
    if status == b"ok":
        return int(reply[1])
    if status == b"conflict":
        assert expected is not None
        raise VersionConflict(sid, expected, int(reply[1]))
    if status == b"missing":
        raise SessionNotFound(sid)
    raise AssertionError(f"unexpected script reply {reply!r}")  # pragma: no cover


def _messages(entries: Sequence[bytes]) -> list[Message]:
    return [decode_message(entry_payload(entry)) for entry in entries]


def _metadata(pairs: Sequence[bytes], offset: int = 0) -> FrozenDict:
    return FrozenDict(
        {pairs[i].decode(): decode_json(pairs[i + 1]) for i in range(offset, len(pairs) - 1, 2)}
    )


class RedisOps:
    """Sans-I/O plans for every operation: yield :class:`Call`, receive replies."""

    def __init__(self, keys: RedisKeys, *, max_messages: int | None, sliding_ttl: bool) -> None:
        self.keys = keys
        self.max_messages = max_messages
        self.sliding_ttl = sliding_ttl

    def save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> Plan[int]:
        kinds, payloads = batch.kinds, batch.payloads
        lead, drop = plan_trim(kinds, self.max_messages)
        if drop:
            kinds = kinds[:lead] + kinds[lead + drop :]
            payloads = payloads[:lead] + payloads[lead + drop :]
        k = self.keys
        args: list[str | bytes | int] = [
            sid,
            k.user_prefix,
            _opt(expected_version),
            _ttl(ttl_ms),
            user_id or "",
            -1 if metadata is None else len(metadata),
            leading_system(kinds),
            kinds,
        ]
        if metadata is not None:
            for key, value in metadata.items():
                args.append(key)
                args.append(encode_json(value))
        args.extend(payloads)
        reply = yield Call("save", [*k.session(sid), k.idx, k.exp, k.own], args)
        return _write_result(sid, expected_version, reply)

    def append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> Plan[int]:
        k = self.keys
        args: list[str | bytes | int] = [
            sid,
            k.user_prefix,
            _opt(expected_version),
            _ttl(ttl_ms),
            _opt(self.max_messages),
            batch.kinds,
            *batch.payloads,
        ]
        reply = yield Call("append", [*k.session(sid), k.idx, k.exp, k.own], args)
        return _write_result(sid, expected_version, reply)

    def _read(self, sid: str, mode: str, last: int | None) -> Plan[Any]:
        sliding = "1" if self.sliding_ttl and mode in ("load", "get") else "0"
        reply = yield Call(
            "read", [*self.keys.session(sid), self.keys.exp], [sid, mode, _opt(last), sliding]
        )
        return reply

    def load(self, sid: str, last: int | None) -> Plan[list[Message]]:
        reply = yield from self._read(sid, "load", last)
        if not reply[0]:
            raise SessionNotFound(sid)
        return _messages(reply[1])

    def get(self, sid: str, last: int | None) -> Plan[Session]:
        reply = yield from self._read(sid, "get", last)
        if not reply[0]:
            raise SessionNotFound(sid)
        entries, flat, count = reply[1], reply[2], reply[3]
        fields: dict[bytes, bytes] = {}
        meta: dict[str, Any] = {}
        for i in range(0, len(flat) - 1, 2):
            name, value = flat[i], flat[i + 1]
            if name.startswith(b"m:"):
                meta[name[2:].decode()] = decode_json(value)
            else:
                fields[name] = value
        user = fields.get(b"user")
        expires = fields.get(b"expires")
        return Session(
            id=sid,
            messages=_messages(entries),
            metadata=FrozenDict(meta),
            user_id=user.decode() if user is not None else None,
            created_at=from_ms(int(fields[b"created"])),  # type: ignore[arg-type]
            updated_at=from_ms(int(fields[b"updated"])),  # type: ignore[arg-type]
            version=int(fields[b"version"]),
            expires_at=from_ms(int(expires)) if expires is not None else None,
            message_count=int(count),
            tier="redis",
        )

    def count(self, sid: str) -> Plan[int]:
        reply = yield from self._read(sid, "count", None)
        if not reply[0]:
            raise SessionNotFound(sid)
        return int(reply[1])

    def exists(self, sid: str) -> Plan[bool]:
        reply = yield from self._read(sid, "exists", None)
        return bool(reply[0])

    def merge_metadata(self, sid: str, updates: FrozenDict) -> Plan[FrozenDict]:
        args: list[str | bytes | int] = [sid, self.keys.user_prefix]
        for key, value in updates.items():
            args.append(key)
            args.append(b"" if value is None else encode_json(value))
        reply = yield Call("merge", [self.keys.meta(sid), self.keys.idx], args)
        _write_result(sid, None, reply)
        return _metadata(reply, 2)

    def delete(self, sid: str) -> Plan[bool]:
        k = self.keys
        reply = yield Call("delete", [*k.session(sid), k.idx, k.exp, k.own], [sid, k.user_prefix])
        return bool(reply)

    def fork(self, src: str, dst: str, *, ttl_ms: int | None) -> Plan[int]:
        k = self.keys
        reply = yield Call(
            "fork",
            [*k.session(src), *k.session(dst), k.idx, k.exp, k.own],
            [src, dst, k.user_prefix, _ttl(ttl_ms)],
        )
        if reply[0] == b"exists":
            raise SessionExists(dst)
        if reply[0] == b"missing":
            raise SessionNotFound(src)
        return _write_result(dst, None, reply)

    def list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Plan[Page]:
        k = self.keys
        position = decode_cursor(cursor) if cursor is not None else None
        zset = k.idx if user_id is None else k.user(user_id)
        found: list[tuple[str, int]] = []
        while True:
            args: list[str | bytes | int] = [
                limit - len(found),
                order,
                *(("1", position[0], position[1]) if position else ("0", 0, "")),
                "1" if user_id is not None else "0",
                limit + 1 - len(found) + _LIST_SCAN_BUDGET,
                k.user_prefix,
            ]
            reply = yield Call("list", [zset, k.idx, k.exp, k.own], args)
            for i in range(3, len(reply) - 1, 2):
                found.append((reply[i].decode(), int(float(reply[i + 1]))))
            if reply[0] or reply[1] is None:
                break
            position = (int(float(reply[1])), reply[2].decode())
        if len(found) > limit:
            score_ms = found[limit - 1][1]
            return Page(
                [sid for sid, _ in found[:limit]], encode_cursor(score_ms, found[limit - 1][0])
            )
        return Page([sid for sid, _ in found], None)

    def purge_expired(self, batch_size: int) -> Plan[int]:
        k = self.keys
        total = 0
        while True:
            reply = yield Call("purge", [k.idx, k.exp, k.own], [k.root, k.user_prefix, batch_size])
            total += int(reply)
            if int(reply) < batch_size:
                return total


# -- the synchronous shell ---------------------------------------------------


class RedisStore(BaseStore):
    """Sessions in Redis: one LIST and one HASH per session, sorted-set indexes.

    Pass a ``redis.Redis`` ``client`` (kept open on :meth:`close`), a ``url``
    or a ``connection_pool`` (the store then owns the client it builds), or
    nothing for ``redis://localhost:6379/0``. The client must return bytes:
    a ``decode_responses=True`` client is rejected with :class:`InvalidInput`
    (binary entries are decoded by the store's codec, not by redis-py).
    """

    tier = "redis"

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        url: str | None = None,
        connection_pool: redis.ConnectionPool | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if sum(x is not None for x in (client, url, connection_pool)) > 1:
            raise InvalidInput("pass at most one of client, url and connection_pool")
        self.keys = RedisKeys(prefix, namespace)
        self._owns_client = client is None
        if client is None:
            if url is not None:
                client = redis.Redis.from_url(url)
            elif connection_pool is not None:
                client = redis.Redis(connection_pool=connection_pool)
            else:
                client = redis.Redis()
        if client.get_encoder().decode_responses:
            if self._owns_client:
                client.close()
            raise InvalidInput(
                "RedisStore needs a client with decode_responses=False (it stores binary entries)"
            )
        self.client = client
        self._ops = RedisOps(
            self.keys, max_messages=self.max_messages, sliding_ttl=self.sliding_ttl
        )
        self._scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStore:
        """A store on a client it builds (and closes) from ``url``.

        Store options (``namespace``, ``prefix``, ``default_ttl``,
        ``max_messages``, ``sliding_ttl``, ``limits``, ``clock``) configure the
        store; any other keyword goes to ``redis.Redis.from_url`` (for example
        ``socket_timeout``).
        """
        store_options = {k: kwargs.pop(k) for k in _STORE_OPTIONS if k in kwargs}
        client = redis.Redis.from_url(url, **kwargs)
        try:
            store = cls(client, **store_options)
        except BaseException:
            client.close()
            raise
        store._owns_client = True
        return store

    # -- the I/O shell ------------------------------------------------------

    def _drive(self, plan: Plan[T]) -> T:
        """Run a plan's calls; driver errors become :class:`BackendUnavailable`."""
        scripts = self._scripts
        try:
            call = next(plan)
            while True:
                try:
                    reply = scripts[call.script](keys=call.keys, args=call.args)
                except RedisError as exc:
                    raise BackendUnavailable("redis", str(exc) or type(exc).__name__) from exc
                call = plan.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _close(self) -> None:
        if self._owns_client:
            self.client.close()

    # -- primitives -----------------------------------------------------------

    def _save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> int:
        return self._drive(
            self._ops.save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
            )
        )

    def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int:
        return self._drive(
            self._ops.append(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    def _load(self, sid: str, last: int | None) -> list[Message]:
        return self._drive(self._ops.load(sid, last))

    def _get(self, sid: str, last: int | None) -> Session:
        return self._drive(self._ops.get(sid, last))

    def _count(self, sid: str) -> int:
        return self._drive(self._ops.count(sid))

    def _exists(self, sid: str) -> bool:
        return self._drive(self._ops.exists(sid))

    def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return self._drive(self._ops.merge_metadata(sid, updates))

    def _delete(self, sid: str) -> bool:
        return self._drive(self._ops.delete(sid))

    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page:
        return self._drive(self._ops.list(user_id, limit, cursor, order))

    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return self._drive(self._ops.fork(src, dst, ttl_ms=ttl_ms or self.default_ttl_ms))

    # -- maintenance ------------------------------------------------------------

    def purge_expired(self, *, batch_size: int = 1000) -> int:
        """Drop expired sessions from the indexes (and any keys left), ``batch_size`` per script.

        Reads and ``list`` skip expired sessions anyway and Redis expires their
        keys itself; this reclaims the index entries of sessions nobody lists.
        Returns how many were removed.
        """
        check_limit(batch_size, "batch_size")
        return self._drive(self._ops.purge_expired(batch_size))

    def stats(self) -> dict[str, int]:
        """Indexed and expiring session counts and Redis memory use (one round trip)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zcard(self.keys.idx)
            pipe.zcard(self.keys.exp)
            pipe.info("memory")
            indexed, expiring, memory = pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc) or type(exc).__name__) from exc
        return {
            "indexed_sessions": int(indexed),
            "expiring_sessions": int(expiring),
            "used_memory": int(memory.get("used_memory", 0)),
        }
