"""``RedisStore``: the hot tier, one atomic Lua script per operation.

Key layout (``P`` = ``{prefix}:{namespace}``)::

    P:{<sid>}:m        LIST   entries ``<kind><seq>:<unix-ms>:<json>`` (see codec)
    P:{<sid>}:h        HASH   version, created, updated, expires, ttl, user,
                              lead (leading system entries), n (next seq),
                              b (base seq: first seq of the current history),
                              m:<key> -> JSON
    P:{<sid>}:x        LIST   spilled entries (``spill=True``): what trims
                              dropped, oldest first, until the worker archives
                              them (:meth:`RedisStore.drain_spill`)
    P:idx              ZSET   sid -> updated ms (last activity; for ``list``)
    P:u:<user_id>      ZSET   sid -> updated ms, per user
    P:exp              ZSET   sid -> expires ms (only sessions with a TTL)
    P:own              HASH   sid -> user id (finds the user index of a session
                              whose own keys have already expired)
    P:{<sid>}:d        STRING the tombstone of the session's last delete (unix ms),
                              for ``tombstone_ttl``: copies of generations created
                              before it are refused, new ones are created after it
    P:{<sid>}:o        HASH   outbox (write_through): version -> record of a write
                              the archive may not hold yet (:class:`OutboxRecord`)
    P:obx              ZSET   sid -> ms: sessions with outbox records
    P:{<sid>}:lock     STRING the session lock's holder token, with a PX expiry
                              (see :mod:`tieredstore.locking`)
    P:inval            pub/sub channel of invalidations (not a key)

A session exists while its hash exists and its ``expires`` lies in the
future (a hash with field ``f`` is *fenced* for reconciliation, see
:mod:`tieredstore.reconciling`: writes and reads refuse it); a session
saved with ``[]`` has a hash and no list. All per-session keys carry the
same absolute expiry (``PEXPIREAT``), so they vanish together.

Sequence numbers: every message gets a seq that only grows during a session's
life (``n`` is the next one). ``append`` writes at ``n..``; ``save`` also
writes at ``n..`` (it does not restart the numbering) and sets ``b`` to its
first seq. The seq is part of each entry, so trims never renumber anything.
Deleting a session (or its expiry) forgets everything: a re-created session
starts at seq 0 with a new ``created``. Both lists are in ascending seq order.

Every write (save, append, merge_metadata, delete, fork) is one ``EVALSHA``:
version check, entries, trim, spill, version bump, TTL and index updates
happen atomically, and with ``publish=True`` the same script PUBLISHes
``"<created_ms> <version> <sid>"`` on ``P:inval`` (a delete:
``"<now_ms> 0 <sid>"``, with ``now_ms`` raised to the deleted session's
``created + 1`` if need be, so it supersedes every state that session had;
see :mod:`tieredstore.coherence`). ``restore`` does
not publish: it copies a state another tier already holds, so nothing any
cache holds becomes stale. Every read is one ``EVALSHA`` too (a sliding-TTL
read refreshes the expiry in the same script). Times (created, updated,
expires, entry stamps) come from ``redis.call('TIME')``, so app servers with
skewed clocks agree; the store's ``clock`` option is not used here.

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
(generators that yield :class:`Call` or :class:`Commands` and receive
replies), so an asyncio shell can drive the very same logic.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Self, TypeVar

import redis
import redis.asyncio

from tieredstore.aio import AsyncBaseStore
from tieredstore.base import BaseStore, StoreCore
from tieredstore.breaker import CircuitBreaker, resolve_breaker
from tieredstore.codec import (
    decode_cursor,
    decode_json,
    decode_message,
    encode_cursor,
    encode_entry,
    encode_json,
    entry_payload,
    entry_seq,
    split_entry,
)
from tieredstore.config import Limits
from tieredstore.core import EMPTY_BATCH, Batch, Order, check_before, check_limit, check_session_id
from tieredstore.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidInput,
    SessionExists,
    SessionNotFound,
    VersionConflict,
)
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.policy import leading_system, plan_trim
from tieredstore.tiers.redis_errors import REDIS_ERRORS, translate
from tieredstore.tiers.transfer import (
    DEFAULT_TOMBSTONE_TTL,
    HistoryPart,
    SessionFenced,
    Snapshot,
    WriteReceipt,
    tombstone_ms,
)
from tieredstore.timeouts import REDIS_TIMEOUTS

__all__ = [
    "SCRIPTS",
    "AsyncRedisStore",
    "Call",
    "Commands",
    "RedisKeys",
    "RedisOps",
    "RedisShared",
    "RedisStore",
    "Spilled",
]

T = TypeVar("T")
Plan = Generator["Call | Commands", Any, T]

# -- Lua ---------------------------------------------------------------------
#
# Each script is assembled from the helper snippets it uses. Invariants the
# scripts keep (and rely on, to skip redundant calls): a session's keys carry
# a TTL exactly when its hash has ``expires`` (all ``PEXPIREAT`` that value),
# ``exp`` holds the session exactly then, ``own`` holds it exactly when it has
# a user, ``idx``/``u:<user>`` scores equal its ``updated``, and both lists
# are in ascending seq order.

_NOW = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%d', n) end
local CHUNK = 1000
-- Announce a session's new generation (chan '' = publishing is off).
local function publish(chan, created, version, sid)
  if chan ~= '' then
    redis.call('PUBLISH', chan, created .. ' ' .. version .. ' ' .. sid)
  end
end
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
-- RPUSH ARGV[first..last] (already encoded entries) onto key.
local function push_raw(key, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    redis.call('RPUSH', key, unpack(ARGV, i, j))
    i = j + 1
  end
end
"""

# RPUSH onto `key` the entries '<kind><seq>:<now>:<payload>' with kind i =
# kinds[i], payload ARGV[first + i - 1] and seq seq0 + i - 1; returns the
# list's length afterwards (0 when nothing was pushed).
_PUSH = r"""
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
"""

# Seqs of entries in a list sorted by seq.
_SEQ = r"""
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
local function bury(m, h, x, sid)
  redis.call('DEL', m, h, x)
  unindex(sid)
end
local function touch(sid, user, updated)
  redis.call('ZADD', IX.idx, updated, sid)
  if user then redis.call('ZADD', IX.up .. user, updated, sid) end
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
"""

# Trim per tieredstore.policy.plan_trim over the kind byte of each entry.
_TRIM = r"""
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
"""

# KEYS m h x d ob idx exp own obx
# ARGV sid uprefix expected ttl user nmeta lead kinds create chan plead drop spill body
#      [k v]* payloads*
# `kinds` are all the call's messages; plan_trim keeps kinds[1..plead] and
# kinds[plead+drop+1..] and drops the rest (spilled when spill = '1'). The
# payloads are all of them with spill, else only the kept ones. A non-empty
# `body` keeps the write in the outbox (write_through).
_SAVE = r"""
local m, h, x, d, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
IX.idx, IX.exp, IX.own, IX.obx, IX.up = KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[2]
local sid = ARGV[1]
local expected, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local user, nmeta, lead, kinds = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local create, chan = ARGV[9] == '1', ARGV[10]
local plead, drop, spilling = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13] == '1'
local body = ARGV[14]
local now = now_ms()
local o = tohash(redis.call('HGETALL', h))
local live = is_live(o, now)
if live and o.f then return {'fenced'} end
if not live and not create then return {'absent'} end
local version = live and tonumber(o.version) or 0
if expected >= 0 and expected ~= version then return {'conflict', version} end
local first = live and tonumber(o.n or '0') or 0
if live then
  redis.call('DEL', m, h, x)
else
  bury(m, h, x, sid)
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
local created, updated = o.created or fmt(born(d, now)), now
if live then updated = math.max(now, tonumber(o.updated)) end
local fields = {'version', fmt(version + 1), 'created', created, 'updated', fmt(updated),
                'lead', lead, 'n', fmt(first + #kinds), 'b', fmt(first)}
if e then fields[#fields + 1] = 'expires'; fields[#fields + 1] = e end
if t then fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t end
if user then fields[#fields + 1] = 'user'; fields[#fields + 1] = user end
if nmeta >= 0 then
  for i = 0, nmeta - 1 do
    fields[#fields + 1] = 'm:' .. ARGV[15 + 2 * i]
    fields[#fields + 1] = ARGV[16 + 2 * i]
  end
else
  for k, v in pairs(o) do
    if string.sub(k, 1, 2) == 'm:' then fields[#fields + 1] = k; fields[#fields + 1] = v end
  end
end
hset(h, fields)
local p = 15 + 2 * math.max(nmeta, 0)
push_entries(m, string.sub(kinds, 1, plead), p, first, now)
if spilling then
  push_entries(x, string.sub(kinds, plead + 1, plead + drop), p + plead, first + plead, now)
  p = p + drop
end
push_entries(m, string.sub(kinds, plead + drop + 1), p + plead, first + plead + drop, now)
if e then set_expiry(m, h, x, sid, e) end
touch(sid, user, updated)
publish(chan, created, fmt(version + 1), sid)
local pending = 0
if body ~= '' then
  pending = outbox(ob, sid, 's', version + 1, first, first + #kinds, created, updated, e, t,
                   body, now)
end
return {'ok', version + 1, first, first + #kinds, created, updated, e or false, t or false,
        pending}
"""

# KEYS m h x d ob idx exp own obx
# ARGV sid uprefix expected ttl max kinds create chan spill body payloads*
_APPEND = r"""
local m, h, x, d, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
IX.idx, IX.exp, IX.own, IX.obx, IX.up = KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[2]
local sid = ARGV[1]
local expected, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local kinds, create, chan = ARGV[6], ARGV[7] == '1', ARGV[8]
if ARGV[9] == '1' then SPILL = x end
local body = ARGV[10]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'ttl', 'updated', 'lead', 'user',
                      'created', 'n', 'f')
local live = f[1] and not (f[2] and tonumber(f[2]) <= now)
if live and f[9] then return {'fenced'} end
if not live and not create then return {'absent'} end
local version = live and tonumber(f[1]) or 0
if expected >= 0 and expected ~= version then return {'conflict', version} end
local lead, created, updated, user, e, t, first = 0, nil, now, nil, nil, nil, 0
if live then
  lead = tonumber(f[5])
  created = f[7]
  updated = math.max(now, tonumber(f[4]))
  user = f[6] or nil
  e = f[2] or nil
  t = f[3] or nil
  first = tonumber(f[8] or '0')
else
  bury(m, h, x, sid)
  created = fmt(born(d, now))
end
local n = push_entries(m, kinds, 11, first, now)
local before = n - #kinds
for i = 1, #kinds do
  if lead == before + i - 1 and string.byte(kinds, i) == 115 then lead = lead + 1 end
end
lead, n = trim(m, lead, n, max)
local fields = {'version', fmt(version + 1), 'created', created, 'updated', fmt(updated),
                'lead', fmt(lead), 'n', fmt(first + #kinds)}
if not live then fields[#fields + 1] = 'b'; fields[#fields + 1] = '0' end
if ttl >= 0 then
  t = fmt(ttl); e = fmt(now + ttl)
  fields[#fields + 1] = 'expires'; fields[#fields + 1] = e
  fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t
  hset(h, fields)
  set_expiry(m, h, x, sid, e)
else
  hset(h, fields)
  -- the hash keeps its TTL; the lists may be new (or re-made by the trim)
  if e then
    redis.call('PEXPIREAT', m, e)
    if SPILL then redis.call('PEXPIREAT', x, e) end
  end
end
touch(sid, user, updated)
publish(chan, created, fmt(version + 1), sid)
local pending = 0
if body ~= '' then
  pending = outbox(ob, sid, 'a', version + 1, first, first + #kinds, created, updated, e, t,
                   body, now)
end
return {'ok', version + 1, first, first + #kinds, created, updated, e or false, t or false,
        pending}
"""

# KEYS m h exp x; ARGV sid mode last sliding. mode: load | get | count | exists
# Replies {0} missing, {2} fenced (see _FENCE), else {1, ...}.
_READ = r"""
local m, h, exp, x = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sid, mode, last, sliding = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local now = now_ms()
local flat, o
if mode == 'get' then
  flat = redis.call('HGETALL', h)
  o = tohash(flat)
else
  local f = redis.call('HMGET', h, 'version', 'expires', 'ttl', 'f')
  o = {version = f[1] or nil, expires = f[2] or nil, ttl = f[3] or nil, f = f[4] or nil}
end
if not is_live(o, now) then return {0} end
if o.f then return {2} end
if mode == 'exists' then return {1} end
if mode == 'count' then return {1, redis.call('LLEN', m)} end
if sliding and o.ttl then
  local e = fmt(now + tonumber(o.ttl))
  redis.call('HSET', h, 'expires', e)
  redis.call('PEXPIREAT', m, e)
  redis.call('PEXPIREAT', h, e)
  redis.call('PEXPIREAT', x, e)
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

# KEYS m h x; ARGV before limit. The newest `limit` entries with seq < before
# (every seq when before < 0) of the window and of the spill list.
_HISTORY = r"""
local m, h, x = KEYS[1], KEYS[2], KEYS[3]
local before, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'f', 'created', 'b')
if not f[1] or (f[2] and tonumber(f[2]) <= now) or f[3] then return {0} end
local function tail(L)
  local n = redis.call('LLEN', L)
  if before >= 0 then n = count_below(L, n, before) end
  if n == 0 then return {} end
  return redis.call('LRANGE', L, math.max(n - limit, 0), n - 1)
end
return {1, tail(m), tail(x), f[4], f[5] or '0'}
"""

# KEYS h x; ARGV upto created. Remove spilled entries with seq <= upto, only
# from the incarnation made at `created` (any when created < 0).
_DRAIN = r"""
local h, x = KEYS[1], KEYS[2]
local upto, created = tonumber(ARGV[1]), tonumber(ARGV[2])
if created >= 0 then
  local c = redis.call('HGET', h, 'created')
  if not c or tonumber(c) ~= created then return 0 end
end
local n = redis.call('LLEN', x)
local k = count_below(x, n, upto + 1)
if k == n then redis.call('DEL', x)
elseif k > 0 then redis.call('LTRIM', x, k, -1) end
return k
"""

# KEYS h ob obx idx; ARGV sid uprefix chan outbox [key json-or-empty]*  (empty = remove
# the key). With outbox = '1' the write is kept in the outbox, merged metadata as body.
_MERGE = r"""
local h, ob = KEYS[1], KEYS[2]
IX.obx, IX.idx, IX.up = KEYS[3], KEYS[4], ARGV[2]
local sid, chan, keep = ARGV[1], ARGV[3], ARGV[4] == '1'
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'updated', 'user', 'created', 'ttl', 'n',
                     'f')
if not f[1] or (f[2] and tonumber(f[2]) <= now) then return {'missing'} end
if f[8] then return {'fenced'} end
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', h, 'm:' .. ARGV[i])
  else redis.call('HSET', h, 'm:' .. ARGV[i], ARGV[i + 1]) end
end
local version = redis.call('HINCRBY', h, 'version', 1)
local updated = math.max(now, tonumber(f[3]))
redis.call('HSET', h, 'updated', fmt(updated))
touch(sid, f[4] or nil, updated)
publish(chan, f[5], fmt(version), sid)
local out = {'ok', version, f[5], updated, f[2] or false, f[6] or false, f[7] or '0', 0}
local flat = redis.call('HGETALL', h)
local parts = {}
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == 'm:' then
    out[#out + 1] = string.sub(flat[i], 3); out[#out + 1] = flat[i + 1]
    parts[#parts + 1] = cjson.encode(string.sub(flat[i], 3)) .. ':' .. flat[i + 1]
  end
end
if keep then
  local n = tonumber(f[7] or '0')
  out[8] = outbox(ob, sid, 'm', version, n, n, f[5], updated, f[2] or nil, f[6] or nil,
                  '{' .. table.concat(parts, ',') .. '}', now)
end
return out
"""

# KEYS m h x d ob idx exp own obx; ARGV sid uprefix chan tomb_ms floor_ms
# Delete the session and leave a tombstone T in d for tomb_ms (0: none):
# T = max(now, floor, created + 1, the previous tombstone), so T is later
# than the creation of every generation deleted so far; T is announced as
# generation (T, 0) and returned, {existed, T}. The outbox goes with it.
_DELETE = r"""
local m, h, x, d, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
IX.idx, IX.exp, IX.own, IX.obx, IX.up = KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[2]
local sid, chan, tomb, floor = ARGV[1], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'created')
local existed = f[1] and not (f[2] and tonumber(f[2]) <= now)
bury(m, h, x, sid)
redis.call('DEL', ob)
redis.call('ZREM', IX.obx, sid)
local g = math.max(now, floor)
if f[3] and tonumber(f[3]) >= g then g = tonumber(f[3]) + 1 end
local before = redis.call('GET', d)
if before and tonumber(before) > g then g = tonumber(before) end
if tomb > 0 then redis.call('SET', d, fmt(g), 'PX', tomb) end
publish(chan, fmt(g), '0', sid)
return {existed and 1 or 0, g}
"""

# KEYS m h x ob idx exp own; ARGV sid uprefix created version. Remove the session
# only if it is still the given generation (compare-and-delete, for archival)
# and holds no outbox record nor fence; no invalidation: the archive holds
# that very state.
_EVICT = r"""
local m, h, x, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
IX.idx, IX.exp, IX.own, IX.up = KEYS[5], KEYS[6], KEYS[7], ARGV[2]
local sid = ARGV[1]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'created', 'f')
if not f[1] or (f[2] and tonumber(f[2]) <= now) then return 0 end
if f[3] ~= ARGV[3] or f[1] ~= ARGV[4] or f[4] then return 0 end
if redis.call('EXISTS', ob) == 1 then return 0 end
bury(m, h, x, sid)
return 1
"""

# KEYS src_m src_h src_x dst_m dst_h dst_x idx exp own dst_d; ARGV src dst uprefix ttl chan
# The copy keeps the source's seqs (entries and spill are copied verbatim).
_FORK = r"""
local sm, sh, sx, dm, dh, dx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
IX.idx, IX.exp, IX.own, IX.up = KEYS[7], KEYS[8], KEYS[9], ARGV[3]
local dd = KEYS[10]
local dst, ttl, chan = ARGV[2], tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
local o = tohash(redis.call('HGETALL', sh))
if not is_live(o, now) then return {'missing'} end
local d = redis.call('HMGET', dh, 'version', 'expires')
if d[1] and not (d[2] and tonumber(d[2]) <= now) then return {'exists'} end
bury(dm, dh, dx, dst)
-- COPY keeps the source's TTL, which equals its hash's expiry (none without)
if redis.call('EXISTS', sm) == 1 then redis.call('COPY', sm, dm) end
if redis.call('EXISTS', sx) == 1 then redis.call('COPY', sx, dx) end
local t = o.ttl
if ttl >= 0 then t = fmt(ttl) end
-- (a session restored with an expiry but no TTL keeps that expiry)
local e = t and fmt(now + tonumber(t)) or o.expires
local created = fmt(born(dd, now))
local fields = {'version', '1', 'created', created, 'updated', fmt(now), 'lead', o.lead,
                'n', o.n or '0', 'b', o.b or '0'}
if e then fields[#fields + 1] = 'expires'; fields[#fields + 1] = e end
if t then fields[#fields + 1] = 'ttl'; fields[#fields + 1] = t end
if o.user then
  fields[#fields + 1] = 'user'; fields[#fields + 1] = o.user
  redis.call('HSET', IX.own, dst, o.user)
end
for k, v in pairs(o) do
  if string.sub(k, 1, 2) == 'm:' then fields[#fields + 1] = k; fields[#fields + 1] = v end
end
hset(dh, fields)
if e then set_expiry(dm, dh, dx, dst, e) end
touch(dst, o.user, now)
publish(chan, created, '1', dst)
return {'ok', 1}
"""

# KEYS m h x d ob idx exp own obx
# ARGV sid uprefix version created updated expires ttl user n b lead nmeta chan [k v]* entries*
# Write a session copied from another tier if absent here, or over a fenced
# copy of an older generation (then announcing it, and dropping the fenced
# copy's outbox, which the reconciler has moved). Replies 1 written, 0 present,
# -1 refused: the copy is of a deleted generation (created before the
# tombstone) or already past its absolute expiry (-1: none).
_RESTORE = r"""
local m, h, x, d, ob = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
IX.idx, IX.exp, IX.own, IX.obx, IX.up = KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[2]
local sid, chan = ARGV[1], ARGV[13]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'created', 'f')
local live = f[1] and not (f[2] and tonumber(f[2]) <= now)
if live and not f[4] then return 0 end
if live and tonumber(ARGV[4]) <= tonumber(f[3]) then return 0 end
local tomb = redis.call('GET', d)
if tomb and tonumber(ARGV[4]) < tonumber(tomb) then return -1 end
local e, ttl, user, nmeta = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[12])
if e >= 0 and e <= now then return -1 end
bury(m, h, x, sid)
if live then
  redis.call('DEL', ob)
  redis.call('ZREM', IX.obx, sid)
end
local fields = {'version', ARGV[3], 'created', ARGV[4], 'updated', ARGV[5],
                'n', ARGV[9], 'b', ARGV[10], 'lead', ARGV[11]}
if e >= 0 then fields[#fields + 1] = 'expires'; fields[#fields + 1] = ARGV[6] end
if ttl >= 0 then fields[#fields + 1] = 'ttl'; fields[#fields + 1] = ARGV[7] end
if user ~= '' then
  fields[#fields + 1] = 'user'; fields[#fields + 1] = user
  redis.call('HSET', IX.own, sid, user)
else
  user = nil
end
for i = 0, nmeta - 1 do
  fields[#fields + 1] = 'm:' .. ARGV[14 + 2 * i]
  fields[#fields + 1] = ARGV[15 + 2 * i]
end
hset(h, fields)
push_raw(m, 14 + 2 * nmeta, #ARGV)
if e >= 0 then set_expiry(m, h, x, sid, ARGV[6]) end
touch(sid, user, ARGV[5])
if live then publish(chan, ARGV[4], ARGV[3], sid) end
return 1
"""

# KEYS h ob. Fence a live session: from now on writes reply 'fenced', reads
# see it as fenced and archival leaves it, until a restore of a newer
# generation replaces it (see TieredCore's reconciliation). Returns
# {1, created, version, next seq, record...} (its outbox), or {0}.
_FENCE = r"""
local h, ob = KEYS[1], KEYS[2]
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'expires', 'created', 'n')
if not f[1] or (f[2] and tonumber(f[2]) <= now) then return {0} end
redis.call('HSET', h, 'f', '1')
local out = {1, f[3], f[1], f[4] or '0'}
for _, record in ipairs(redis.call('HVALS', ob)) do out[#out + 1] = record end
return out
"""

# KEYS h; ARGV created. Lift the fence of generation `created` (it proved current).
_UNFENCE = r"""
if redis.call('HGET', KEYS[1], 'created') == ARGV[1] then redis.call('HDEL', KEYS[1], 'f') end
return 1
"""

# KEYS h ob obx; ARGV sid created version*. The archive holds these writes of
# generation `created`: drop their outbox records (none if the session is now
# another generation). Returns the records left.
_ACK = r"""
local h, ob = KEYS[1], KEYS[2]
IX.obx = KEYS[3]
local c = redis.call('HGET', h, 'created')
if c ~= ARGV[2] then return redis.call('HLEN', ob) end
for i = 3, #ARGV do redis.call('HDEL', ob, ARGV[i]) end
local left = redis.call('HLEN', ob)
if left == 0 then redis.call('ZREM', IX.obx, ARGV[1]) end
return left
"""

# KEYS h ob obx; ARGV sid. The outbox of a live session: {created, version,
# record...}, or {} (a session gone meanwhile: its outbox and index entry go too).
_OUTBOX = r"""
local h, ob = KEYS[1], KEYS[2]
local f = redis.call('HMGET', h, 'version', 'created')
if not f[1] then
  redis.call('DEL', ob)
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {}
end
local out = {f[2], f[1]}
for _, record in ipairs(redis.call('HVALS', ob)) do out[#out + 1] = record end
return out
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
  local tagged = kp .. '{' .. sid .. '}:'
  local e = redis.call('HGET', tagged .. 'h', 'expires')
  if e and tonumber(e) > now then
    redis.call('ZADD', IX.exp, e, sid)  -- a stale index entry of a live session
  else
    bury(tagged .. 'm', tagged .. 'h', tagged .. 'x', sid)
  end
end
return #sids
"""

# KEYS lock; ARGV token [ttl_ms]. Compare-and-delete / compare-and-expire a
# session lock (see tieredstore.locking): only the holder's token may.
_LOCK_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_LOCK_EXTEND = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

SCRIPTS: dict[str, str] = {
    "save": _NOW + _HASH + _PUSH + _INDEX + _SAVE,
    "append": _NOW + _HASH + _PUSH + _INDEX + _TRIM + _APPEND,
    "read": _NOW + _HASH + _READ,
    "history": _NOW + _SEQ + _HISTORY,
    "drain": _SEQ + _DRAIN,
    "merge": _NOW + _INDEX + _MERGE,
    "delete": _NOW + _INDEX + _DELETE,
    "evict": _NOW + _INDEX + _EVICT,
    "fork": _NOW + _HASH + _INDEX + _FORK,
    "restore": _NOW + _HASH + _INDEX + _RESTORE,
    "fence": _NOW + _FENCE,
    "unfence": _UNFENCE,
    "ack": _NOW + _INDEX + _ACK,
    "outbox": _OUTBOX,
    "list": _NOW + _INDEX + _LIST,
    "purge": _NOW + _INDEX + _PURGE,
    "lock_release": _LOCK_RELEASE,
    "lock_extend": _LOCK_EXTEND,
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
    "publish",
    "spill",
    "tombstone_ttl",
    "breaker",
)


# -- the I/O-free core -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One script invocation: which script, its keys and its arguments."""

    script: str
    keys: list[str]
    args: list[str | bytes | int]


@dataclass(frozen=True, slots=True)
class Commands:
    """Plain commands sent together in one pipeline (one round trip); the reply
    is the list of their replies."""

    commands: list[tuple[str | bytes | int, ...]]


class Spilled(NamedTuple):
    """One spilled entry: a message a trim moved out of the hot window."""

    seq: int
    kind: str
    timestamp_ms: int
    message: Message


class RedisKeys:
    """Key names of one ``prefix``/``namespace``; see the module docstring."""

    __slots__ = (
        "channel",
        "exp",
        "idx",
        "namespace",
        "obx",
        "own",
        "prefix",
        "root",
        "user_prefix",
    )

    def __init__(self, prefix: str, namespace: str) -> None:
        # Neither part may hold ':' (nor, as ids, '{' '}'), so a key's first two
        # ':'-separated fields name its scope and two scopes never share a key.
        self.prefix = _check_part(prefix, "prefix")
        self.namespace = _check_part(namespace, "namespace")
        for what, part in (("prefix", prefix), ("namespace", namespace)):
            if ":" in part:
                raise InvalidInput(f"{what} must not contain ':', got {part!r}")
        self.root = f"{prefix}:{namespace}:"
        self.idx = self.root + "idx"
        self.exp = self.root + "exp"
        self.own = self.root + "own"
        self.obx = self.root + "obx"
        self.user_prefix = self.root + "u:"
        self.channel = self.root + "inval"

    def messages(self, sid: str) -> str:
        return f"{self.root}{{{sid}}}:m"

    def meta(self, sid: str) -> str:
        return f"{self.root}{{{sid}}}:h"

    def spill(self, sid: str) -> str:
        return f"{self.root}{{{sid}}}:x"

    def tombstone(self, sid: str) -> str:
        return f"{self.root}{{{sid}}}:d"

    def outbox(self, sid: str) -> str:
        return f"{self.root}{{{sid}}}:o"

    def writes(self, sid: str) -> list[str]:
        """KEYS of the write scripts: the session's keys, its tombstone and
        outbox, then the namespace indexes."""
        tagged = f"{self.root}{{{sid}}}:"
        return [
            tagged + "m",
            tagged + "h",
            tagged + "x",
            tagged + "d",
            tagged + "o",
            self.idx,
            self.exp,
            self.own,
            self.obx,
        ]

    def user(self, user_id: str) -> str:
        return self.user_prefix + user_id

    def lock(self, sid: str) -> str:
        """The session lock (:mod:`tieredstore.locking`); not one of :meth:`session`."""
        return f"{self.root}{{{sid}}}:lock"

    def session(self, sid: str) -> list[str]:
        """The session's own keys, all in one cluster slot: list, hash, spill list."""
        tagged = f"{self.root}{{{sid}}}:"
        return [tagged + "m", tagged + "h", tagged + "x"]


def _check_part(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    return check_session_id(value, Limits(), what=what)


def _opt(value: int | None) -> int:
    return -1 if value is None else value


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _ttl(ttl_ms: int | None) -> int:
    # Lua numbers are doubles and Redis refuses absurd expiry times; reject
    # rather than let an overflowed expiry drop the session on the spot.
    if ttl_ms is not None and ttl_ms > MAX_TTL_MS:
        raise InvalidInput(f"ttl must be at most {MAX_TTL_MS // 1000} seconds")
    return _opt(ttl_ms)


def _check_status(sid: str, expected: int | None, reply: Any) -> bool:
    """``True`` for a written reply, ``False`` for ``absent``; raises for the rest."""
    status = reply[0]
    if status == b"ok":
        return True
    if status == b"absent":
        return False
    if status == b"conflict":
        assert expected is not None
        raise VersionConflict(sid, expected, int(reply[1]))
    if status == b"missing":
        raise SessionNotFound(sid)
    if status == b"fenced":
        raise SessionFenced(sid)
    raise AssertionError(f"unexpected script reply {reply!r}")  # pragma: no cover


def _receipt(reply: Any) -> WriteReceipt:
    """A receipt from ``{'ok', version, first, next, created, updated, expires, ttl}``."""
    return WriteReceipt(
        version=int(reply[1]),
        first_seq=int(reply[2]),
        next_seq=int(reply[3]),
        created_ms=int(reply[4]),
        updated_ms=int(reply[5]),
        expires_ms=_int(reply[6]),
        ttl_ms=_int(reply[7]),
        pending=int(reply[8]) if len(reply) > 8 else 0,
    )


def _found(sid: str, reply: Any) -> bool:
    """Whether a read script found the session; a fenced one raises :class:`SessionFenced`."""
    if reply[0] == 2:
        raise SessionFenced(sid)
    return bool(reply[0])


def outbox_body(batch: Batch, metadata: FrozenDict | None, user_id: str | None) -> bytes:
    """The JSON body of an outbox record for a save or an append (see :class:`OutboxRecord`)."""
    meta = encode_json(metadata) if metadata is not None else b"null"
    user = encode_json(user_id) if user_id is not None else b"null"
    return b"".join(
        (
            b'{"k":',
            encode_json(batch.kinds),
            b',"p":[',
            b",".join(batch.payloads),
            b'],"m":',
            meta,
            b',"u":',
            user,
            b"}",
        )
    )


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A write_through write kept in Redis until the archive has it.

    ``op`` is ``a`` (append), ``s`` (save) or ``m`` (metadata merge);
    ``receipt`` says where it landed; for ``a``/``s``, ``batch`` holds its
    messages and ``metadata``/``user_id`` a save's; for ``m``, ``metadata``
    is the merged metadata after the write.
    """

    op: str
    receipt: WriteReceipt
    batch: Batch
    metadata: FrozenDict | None
    user_id: str | None

    @classmethod
    def parse(cls, raw: bytes) -> OutboxRecord:
        head, _, body = raw.partition(b"\n")
        op, version, first, nxt, created, updated, expires, ttl = head.split(b" ")
        receipt = WriteReceipt(
            version=int(version),
            first_seq=int(first),
            next_seq=int(nxt),
            created_ms=int(created),
            updated_ms=int(updated),
            expires_ms=None if expires == b"-1" else int(expires),
            ttl_ms=None if ttl == b"-1" else int(ttl),
        )
        decoded = decode_json(body)
        if op == b"m":
            return cls("m", receipt, EMPTY_BATCH, FrozenDict(decoded), None)
        messages = tuple(Message.of(m) for m in decoded["p"])
        payloads = tuple(encode_json(m) for m in messages)
        batch = Batch(messages, payloads, decoded["k"], sum(map(len, payloads)))
        meta = decoded["m"]
        return cls(
            op.decode(),
            receipt,
            batch,
            FrozenDict(meta) if meta is not None else None,
            decoded["u"],
        )


@dataclass(frozen=True, slots=True)
class Fenced:
    """A session :meth:`RedisStore.fence` froze: its generation and outbox."""

    created_ms: int
    version: int
    next_seq: int
    records: list[OutboxRecord]


def _messages(entries: Sequence[bytes]) -> list[Message]:
    return [decode_message(entry_payload(entry)) for entry in entries]


def _metadata(pairs: Sequence[bytes], offset: int = 0) -> FrozenDict:
    return FrozenDict(
        {pairs[i].decode(): decode_json(pairs[i + 1]) for i in range(offset, len(pairs) - 1, 2)}
    )


def _snapshot(sid: str, entries: Sequence[bytes], flat: Sequence[bytes], count: int) -> Snapshot:
    fields: dict[bytes, bytes] = {}
    meta: dict[str, Any] = {}
    for i in range(0, len(flat) - 1, 2):
        name, value = flat[i], flat[i + 1]
        if name.startswith(b"m:"):
            meta[name[2:].decode()] = decode_json(value)
        else:
            fields[name] = value
    messages: list[Message] = []
    seqs: list[int] = []
    kinds: list[str] = []
    nbytes = 0
    for entry in entries:
        kind, seq, _, payload = split_entry(entry)
        messages.append(decode_message(payload))
        seqs.append(seq)
        kinds.append(kind)
        nbytes += len(payload)
    user = fields.get(b"user")
    return Snapshot(
        sid=sid,
        messages=tuple(messages),
        seqs=tuple(seqs),
        kinds="".join(kinds),
        metadata=FrozenDict(meta),
        user_id=user.decode() if user is not None else None,
        created_ms=int(fields[b"created"]),
        updated_ms=int(fields[b"updated"]),
        version=int(fields[b"version"]),
        expires_ms=_int(fields.get(b"expires")),
        ttl_ms=_int(fields.get(b"ttl")),
        message_count=int(count),
        next_seq=int(fields.get(b"n", b"0")),
        nbytes=nbytes,
        base_seq=int(fields.get(b"b", b"0")),
    )


class RedisOps:
    """Sans-I/O plans for every operation: yield :class:`Call`, receive replies.

    ``channel`` is where write scripts publish invalidations (``""``: they
    don't); ``spill`` keeps trimmed entries in the spill list.
    """

    def __init__(
        self,
        keys: RedisKeys,
        *,
        max_messages: int | None,
        sliding_ttl: bool,
        channel: str = "",
        spill: bool = False,
        default_ttl_ms: int | None = None,
        limits: Limits | None = None,
        tombstone_ms: int = int(DEFAULT_TOMBSTONE_TTL * 1000),
    ) -> None:
        self.keys = keys
        self.tombstone_ms = tombstone_ms
        self.limits = limits or Limits()
        self.max_messages = max_messages
        self.sliding_ttl = sliding_ttl
        self.channel = channel
        self.spill = spill
        self.default_ttl_ms = default_ttl_ms

    # -- writes -----------------------------------------------------------------

    def save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> Plan[WriteReceipt | None]:
        kinds, payloads = batch.kinds, batch.payloads
        lead, drop = plan_trim(kinds, self.max_messages)
        kept = kinds[:lead] + kinds[lead + drop :]
        if drop and not self.spill:
            payloads = payloads[:lead] + payloads[lead + drop :]
        k = self.keys
        args: list[str | bytes | int] = [
            sid,
            k.user_prefix,
            _opt(expected_version),
            _ttl(ttl_ms),
            user_id or "",
            -1 if metadata is None else len(metadata),
            leading_system(kept),
            kinds,
            _flag(create),
            self.channel,
            lead,
            drop,
            _flag(self.spill),
            outbox_body(batch, metadata, user_id) if outbox else b"",
        ]
        if metadata is not None:
            for key, value in metadata.items():
                args.append(key)
                args.append(encode_json(value))
        args.extend(payloads)
        reply = yield Call("save", k.writes(sid), args)
        return _receipt(reply) if _check_status(sid, expected_version, reply) else None

    def append(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> Plan[WriteReceipt | None]:
        k = self.keys
        args: list[str | bytes | int] = [
            sid,
            k.user_prefix,
            _opt(expected_version),
            _ttl(ttl_ms),
            _opt(self.max_messages),
            batch.kinds,
            _flag(create),
            self.channel,
            _flag(self.spill),
            outbox_body(batch, None, None) if outbox else b"",
            *batch.payloads,
        ]
        reply = yield Call("append", k.writes(sid), args)
        return _receipt(reply) if _check_status(sid, expected_version, reply) else None

    def save_version(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> Plan[int]:
        """:meth:`save` returning only the new version (the ``_save`` primitive)."""
        receipt = yield from self.save(
            sid,
            batch,
            ttl_ms=ttl_ms,
            metadata=metadata,
            user_id=user_id,
            expected_version=expected_version,
        )
        assert receipt is not None
        return receipt.version

    def append_version(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> Plan[int]:
        """:meth:`append` returning only the new version (the ``_append`` primitive)."""
        receipt = yield from self.append(
            sid, batch, ttl_ms=ttl_ms, expected_version=expected_version
        )
        assert receipt is not None
        return receipt.version

    def merged_metadata(self, sid: str, updates: FrozenDict) -> Plan[FrozenDict]:
        """:meth:`merge_metadata` returning only the merged metadata."""
        merged, _ = yield from self.merge_metadata(sid, updates)
        return merged

    def merge_metadata(
        self, sid: str, updates: FrozenDict, outbox: bool = False
    ) -> Plan[tuple[FrozenDict, WriteReceipt]]:
        k = self.keys
        args: list[str | bytes | int] = [sid, k.user_prefix, self.channel, _flag(outbox)]
        for key, value in updates.items():
            args.append(key)
            args.append(b"" if value is None else encode_json(value))
        reply = yield Call("merge", [k.meta(sid), k.outbox(sid), k.obx, k.idx], args)
        _check_status(sid, None, reply)
        # {'ok', version, created, updated, expires, ttl, n, pending, key, json, ...}
        n = int(reply[6])
        receipt = WriteReceipt(
            version=int(reply[1]),
            first_seq=n,
            next_seq=n,
            created_ms=int(reply[2]),
            updated_ms=int(reply[3]),
            expires_ms=_int(reply[4]),
            ttl_ms=_int(reply[5]),
            pending=int(reply[7]),
        )
        return _metadata(reply, 8), receipt

    def delete(self, sid: str) -> Plan[bool]:
        existed, _ = yield from self.delete_tombstoned(sid, 0)
        return existed

    def delete_tombstoned(self, sid: str, floor_ms: int) -> Plan[tuple[bool, int]]:
        """Delete, leaving a tombstone no earlier than ``floor_ms``: ``(existed, tombstone)``."""
        k = self.keys
        reply = yield Call(
            "delete",
            k.writes(sid),
            [sid, k.user_prefix, self.channel, self.tombstone_ms, floor_ms],
        )
        return bool(reply[0]), int(reply[1])

    def fence(self, sid: str) -> Plan[Fenced | None]:
        reply = yield Call("fence", [self.keys.meta(sid), self.keys.outbox(sid)], [])
        if not reply[0]:
            return None
        return Fenced(int(reply[1]), int(reply[2]), int(reply[3]), _records(reply[4:]))

    def unfence(self, sid: str, created_ms: int) -> Plan[None]:
        yield Call("unfence", [self.keys.meta(sid)], [created_ms])

    def outbox_records(self, sid: str) -> Plan[tuple[int, list[OutboxRecord]]]:
        """``(created_ms, records oldest first)`` of the session's outbox (``(0, [])``: none)."""
        k = self.keys
        reply = yield Call("outbox", [k.meta(sid), k.outbox(sid), k.obx], [sid])
        if not reply:
            return 0, []
        return int(reply[0]), _records(reply[2:])

    def outbox_ack(self, sid: str, created_ms: int, versions: Sequence[int]) -> Plan[int]:
        k = self.keys
        reply = yield Call(
            "ack", [k.meta(sid), k.outbox(sid), k.obx], [sid, created_ms, *versions]
        )
        return int(reply)

    def outbox_sessions(self, limit: int) -> Plan[list[str]]:
        """Up to ``limit`` sessions holding outbox records, oldest record first."""
        replies = yield Commands([("ZRANGE", self.keys.obx, 0, limit - 1)])
        return [sid.decode() for sid in replies[0]]

    def evict(self, sid: str, created_ms: int, version: int) -> Plan[bool]:
        k = self.keys
        reply = yield Call(
            "evict",
            [*k.session(sid), k.outbox(sid), k.idx, k.exp, k.own],
            [sid, k.user_prefix, str(created_ms), str(version)],
        )
        return bool(reply)

    def fork(self, src: str, dst: str, *, ttl_ms: int | None) -> Plan[int]:
        k = self.keys
        reply = yield Call(
            "fork",
            [*k.session(src), *k.session(dst), k.idx, k.exp, k.own, k.tombstone(dst)],
            [src, dst, k.user_prefix, _ttl(ttl_ms or self.default_ttl_ms), self.channel],
        )
        if reply[0] == b"exists":
            raise SessionExists(dst)
        _check_status(src, None, reply)
        return int(reply[1])

    def restore(self, snapshot: Snapshot) -> Plan[int]:
        """1 written, 0 present here, -1 refused (a deleted generation, or expired)."""
        sid = check_session_id(snapshot.sid, self.limits)
        count = len(snapshot.messages)
        if len(snapshot.seqs) != count or len(snapshot.kinds) != count:
            raise InvalidInput("snapshot messages, seqs and kinds differ in length")
        if snapshot.ttl_ms is not None:
            _ttl(snapshot.ttl_ms)
        k = self.keys
        args: list[str | bytes | int] = [
            sid,
            k.user_prefix,
            snapshot.version,
            snapshot.created_ms,
            snapshot.updated_ms,
            _opt(snapshot.expires_ms),
            _opt(snapshot.ttl_ms),
            snapshot.user_id or "",
            snapshot.next_seq,
            snapshot.base_seq,
            leading_system(snapshot.kinds),
            len(snapshot.metadata),
            self.channel,
        ]
        for key, value in snapshot.metadata.items():
            args.append(key)
            args.append(encode_json(value))
        # Snapshots carry no per-message write times: stamp them with `updated`.
        stamp = snapshot.updated_ms
        args.extend(
            encode_entry(kind, seq, stamp, encode_json(message))
            for kind, seq, message in zip(
                snapshot.kinds, snapshot.seqs, snapshot.messages, strict=True
            )
        )
        reply = yield Call("restore", k.writes(sid), args)
        return int(reply)

    def drain_spill(self, sid: str, upto_seq: int, created_ms: int | None) -> Plan[int]:
        reply = yield Call(
            "drain",
            [self.keys.meta(sid), self.keys.spill(sid)],
            [upto_seq, _opt(created_ms)],
        )
        return int(reply)

    # -- reads ------------------------------------------------------------------

    def _read(self, sid: str, mode: str, last: int | None, sliding: bool = False) -> Plan[Any]:
        k = self.keys
        reply = yield Call(
            "read",
            [k.messages(sid), k.meta(sid), k.exp, k.spill(sid)],
            [sid, mode, _opt(last), _flag(sliding)],
        )
        return reply

    def load(self, sid: str, last: int | None) -> Plan[list[Message]]:
        reply = yield from self._read(sid, "load", last, self.sliding_ttl)
        if not _found(sid, reply):
            raise SessionNotFound(sid)
        return _messages(reply[1])

    def snapshot(self, sid: str, last: int | None, refresh: bool) -> Plan[Snapshot | None]:
        if last is not None and last < 0:
            raise InvalidInput(f"last must be a non-negative integer, got {last!r}")
        reply = yield from self._read(sid, "get", last, refresh)
        if not _found(sid, reply):
            return None
        return _snapshot(sid, reply[1], reply[2], reply[3])

    def get(self, sid: str, last: int | None) -> Plan[Session]:
        snap = yield from self.snapshot(sid, last, self.sliding_ttl)
        if snap is None:
            raise SessionNotFound(sid)
        return snap.session("redis")

    def count(self, sid: str) -> Plan[int]:
        reply = yield from self._read(sid, "count", None)
        if not _found(sid, reply):
            raise SessionNotFound(sid)
        return int(reply[1])

    def exists(self, sid: str) -> Plan[bool]:
        reply = yield from self._read(sid, "exists", None)
        return _found(sid, reply)

    def exists_many(self, sids: Sequence[str]) -> Plan[list[bool]]:
        sids = [check_session_id(sid, self.limits) for sid in sids]
        if not sids:
            return []
        k = self.keys
        commands: list[tuple[str | bytes | int, ...]] = [("TIME",)]
        commands.extend(("HMGET", k.meta(sid), "version", "expires") for sid in sids)
        replies = yield Commands(commands)
        seconds, micros = replies[0]
        now = int(seconds) * 1000 + int(micros) // 1000
        return [
            version is not None and (expires is None or int(expires) > now)
            for version, expires in replies[1:]
        ]

    def history_page(self, sid: str, before: int | None, limit: int) -> Plan[HistoryPart | None]:
        check_limit(limit, maximum=100_000)
        before = check_before(before)
        k = self.keys
        reply = yield Call(
            "history", [k.messages(sid), k.meta(sid), k.spill(sid)], [_opt(before), limit]
        )
        if not reply[0]:
            return None
        entries = sorted(((entry_seq(e), e) for e in (*reply[1], *reply[2])), key=_first)
        pairs = [(seq, decode_message(entry_payload(e))) for seq, e in entries[-limit:]]
        return HistoryPart(int(reply[3]), int(reply[4]), pairs)

    def spilled(self, sid: str, limit: int | None) -> Plan[list[Spilled]]:
        if limit is not None:
            check_limit(limit, maximum=1_000_000)
        stop = -1 if limit is None else limit - 1
        replies = yield Commands([("LRANGE", self.keys.spill(sid), 0, stop)])
        out: list[Spilled] = []
        for entry in replies[0]:
            kind, seq, stamp, payload = split_entry(entry)
            out.append(Spilled(seq, kind, stamp, decode_message(payload)))
        return out

    def list_keys(
        self, user_id: str | None, limit: int, position: tuple[int, str] | None, order: Order
    ) -> Plan[list[tuple[int, str]]]:
        """Up to ``limit`` ``(updated_ms, sid)`` of live sessions strictly after ``position``."""
        check_limit(limit, maximum=100_001)
        k = self.keys
        zset = k.idx if user_id is None else k.user(user_id)
        found: list[tuple[int, str]] = []
        while len(found) < limit:
            args: list[str | bytes | int] = [
                limit - len(found) - 1,  # the script returns up to this + 1
                order,
                *(("1", position[0], position[1]) if position else ("0", 0, "")),
                _flag(user_id is not None),
                limit - len(found) + _LIST_SCAN_BUDGET,
                k.user_prefix,
            ]
            reply = yield Call("list", [zset, k.idx, k.exp, k.own], args)
            for i in range(3, len(reply) - 1, 2):
                found.append((int(float(reply[i + 1])), reply[i].decode()))
            if reply[0] or reply[1] is None:
                break
            position = (int(float(reply[1])), reply[2].decode())
        return found

    def list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Plan[Page]:
        position = decode_cursor(cursor) if cursor is not None else None
        found = yield from self.list_keys(user_id, limit + 1, position, order)
        if len(found) > limit:
            return Page([sid for _, sid in found[:limit]], encode_cursor(*found[limit - 1]))
        return Page([sid for _, sid in found], None)

    def purge_expired(self, batch_size: int) -> Plan[int]:
        check_limit(batch_size, "batch_size")
        k = self.keys
        total = 0
        while True:
            reply = yield Call("purge", [k.idx, k.exp, k.own], [k.root, k.user_prefix, batch_size])
            total += int(reply)
            if int(reply) < batch_size:
                return total

    def stats(self) -> Plan[dict[str, int]]:
        k = self.keys
        indexed, expiring, memory = yield Commands(
            [("ZCARD", k.idx), ("ZCARD", k.exp), ("INFO", "memory")]
        )
        return {
            "indexed_sessions": int(indexed),
            "expiring_sessions": int(expiring),
            "used_memory": int(memory.get("used_memory", 0)),
        }

    # -- session locks (see tieredstore.locking) -----------------------------------

    def lock_acquire(self, sid: str, token: str, ttl_ms: int) -> Plan[bool]:
        replies = yield Commands([("SET", self.keys.lock(sid), token, "NX", "PX", ttl_ms)])
        return bool(replies[0])

    def lock_release(self, sid: str, token: str) -> Plan[bool]:
        reply = yield Call("lock_release", [self.keys.lock(sid)], [token])
        return bool(reply)

    def lock_extend(self, sid: str, token: str, ttl_ms: int) -> Plan[bool]:
        reply = yield Call("lock_extend", [self.keys.lock(sid)], [token, ttl_ms])
        return bool(reply)

    def lock_held(self, sid: str) -> Plan[bool]:
        replies = yield Commands([("EXISTS", self.keys.lock(sid))])
        return bool(replies[0])


def _first(pair: tuple[int, bytes]) -> int:
    return pair[0]


def _records(raw: Sequence[bytes]) -> list[OutboxRecord]:
    """Outbox records as a script returned them, oldest write first."""
    return sorted(map(OutboxRecord.parse, raw), key=lambda record: record.receipt.version)


# -- the shells ----------------------------------------------------------------


class RedisShared(StoreCore):
    """What :class:`RedisStore` and :class:`AsyncRedisStore` share; no I/O.

    Construction rules, key names and the :class:`RedisOps` plans live here
    (and above); the two shells only drive plans with their client.
    """

    tier = "redis"
    _client_class: Any = redis.Redis
    _pool_class: Any = redis.ConnectionPool
    keys: RedisKeys
    client: Any
    _ops: RedisOps
    _scripts: dict[str, Any]
    _owns_client: bool

    def _setup(
        self,
        client: Any,
        url: str | None,
        connection_pool: Any,
        *,
        namespace: str,
        prefix: str,
        publish: bool,
        spill: bool,
        breaker: CircuitBreaker | bool,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    ) -> None:
        if sum(x is not None for x in (client, url, connection_pool)) > 1:
            raise InvalidInput("pass at most one of client, url and connection_pool")
        self.keys = RedisKeys(prefix, namespace)
        self.publish = publish
        self.spill = spill
        self.breaker = resolve_breaker(breaker, "redis")
        self._owns_client = client is None
        if client is None:
            if url is not None:
                client = self._client_class.from_url(url, **REDIS_TIMEOUTS)
            elif connection_pool is not None:
                client = self._client_class(connection_pool=connection_pool)
            else:
                client = self._client_class(**REDIS_TIMEOUTS)
        if client.get_encoder().decode_responses:
            raise InvalidInput(
                f"{type(self).__name__} needs a client with decode_responses=False "
                "(it stores binary entries)"
            )
        self.client = client
        self._ops = RedisOps(
            self.keys,
            max_messages=self.max_messages,
            sliding_ttl=self.sliding_ttl,
            channel=self.keys.channel if publish else "",
            spill=spill,
            default_ttl_ms=self.default_ttl_ms,
            limits=self.limits,
            tombstone_ms=tombstone_ms(tombstone_ttl),
        )
        self._scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A store on a client it builds (and closes) from ``url``.

        Store options (``namespace``, ``prefix``, ``default_ttl``,
        ``max_messages``, ``sliding_ttl``, ``limits``, ``clock``, ``publish``,
        ``spill``, ``breaker``) configure the store; any other keyword goes to
        the connection pool's ``from_url`` (for example ``max_connections``).
        ``socket_timeout`` and ``socket_connect_timeout`` default to
        :data:`~tieredstore.timeouts.REDIS_TIMEOUTS` (5 s, 2 s); a keyword or
        a URL parameter (``?socket_timeout=1``) overrides them.
        """
        store_options = {k: kwargs.pop(k) for k in _STORE_OPTIONS if k in kwargs}
        kwargs = {**REDIS_TIMEOUTS, **kwargs}
        client = cls._client_class.from_pool(cls._pool_class.from_url(url, **kwargs))
        store = cls(client, **store_options)  # type: ignore[call-arg]
        store._owns_client = True
        return store

    @property
    def invalidation_channel(self) -> str:
        """The pub/sub channel write scripts announce new generations on."""
        return self.keys.channel

    def keys_of(self, session_id: str) -> list[str]:
        """The session's own keys: message list, hash, spill list."""
        return self.keys.session(self._sid(session_id))

    def _lock_backend(self) -> Any:
        return self  # the lock_* methods below


def _unavailable(exc: BaseException) -> BackendUnavailable | ConfigurationError:
    return translate(exc)  # transient (BackendUnavailable) or not (ConfigurationError)


def _redis_down(exc: BaseException) -> bool:
    """For the circuit breaker: Redis unreachable or silent (not an error reply)."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError)


class RedisStore(RedisShared, BaseStore):
    """Sessions in Redis: one LIST and one HASH per session, sorted-set indexes.

    Pass a ``redis.Redis`` ``client`` (kept open on :meth:`close`), a ``url``
    or a ``connection_pool`` (the store then owns the client it builds), or
    nothing for ``redis://localhost:6379/0``. The client must return bytes:
    a ``decode_responses=True`` client is rejected with :class:`InvalidInput`
    (binary entries are decoded by the store's codec, not by redis-py).

    ``publish``: every write script announces the session's new generation on
    :attr:`invalidation_channel`. ``spill``: entries a trim drops are kept in
    a per-session spill list (see :meth:`spilled`) until the archival worker
    has copied them (:meth:`drain_spill`), instead of being discarded.

    A client the store builds gets :data:`~tieredstore.timeouts.REDIS_TIMEOUTS`
    unless told otherwise. ``breaker`` (a :class:`~tieredstore.CircuitBreaker`,
    ``True`` for the defaults, ``False`` for none) fails calls fast while
    Redis is down.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        url: str | None = None,
        connection_pool: redis.ConnectionPool | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        publish: bool = True,
        spill: bool = False,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        breaker: CircuitBreaker | bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._setup(
            client,
            url,
            connection_pool,
            namespace=namespace,
            prefix=prefix,
            publish=publish,
            spill=spill,
            tombstone_ttl=tombstone_ttl,
            breaker=breaker,
        )

    # -- the I/O shell ------------------------------------------------------

    def _drive(self, plan: Plan[T]) -> T:
        """Run a plan's calls; driver errors become ours (see :mod:`.redis_errors`).

        Each call passes the circuit breaker, which fails it fast while open.
        """
        scripts, breaker = self._scripts, self.breaker
        try:
            call = next(plan)
            while True:
                try:
                    with breaker.guard(_redis_down):
                        if isinstance(call, Commands):
                            pipe = self.client.pipeline(transaction=False)
                            for command in call.commands:
                                pipe.execute_command(*command)
                            reply = pipe.execute()
                        else:
                            reply = scripts[call.script](keys=call.keys, args=call.args)
                except REDIS_ERRORS as exc:
                    raise _unavailable(exc) from exc
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
            self._ops.save_version(
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
            self._ops.append_version(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
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
        return self._drive(self._ops.merged_metadata(sid, updates))

    def _delete(self, sid: str) -> bool:
        return self._drive(self._ops.delete(sid))

    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page:
        return self._drive(self._ops.list(user_id, limit, cursor, order))

    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return self._drive(self._ops.fork(src, dst, ttl_ms=ttl_ms))

    # -- the tiered layer (TieredStore's view of this tier) ---------------------
    #
    # These take prepared input (a validated Batch, FrozenDict metadata, TTLs
    # in ms) like the primitives above; session ids are checked again (cheap).

    def write_save(
        self,
        sid: str,
        *,
        batch: Batch,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> WriteReceipt | None:
        """``save`` returning where its messages landed; ``None`` (nothing written)
        when ``create=False`` and the session is missing here. ``outbox`` keeps
        the write in the session's outbox until :meth:`outbox_ack`."""
        return self._drive(
            self._ops.save(
                self._sid(sid),
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
                create=create,
                outbox=outbox,
            )
        )

    def write_append(
        self,
        sid: str,
        *,
        batch: Batch,
        ttl_ms: int | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> WriteReceipt | None:
        """``append`` returning where its messages landed; ``None`` (nothing written)
        when ``create=False`` and the session is missing here."""
        return self._drive(
            self._ops.append(
                self._sid(sid),
                batch,
                ttl_ms=ttl_ms,
                expected_version=expected_version,
                create=create,
                outbox=outbox,
            )
        )

    def write_merge_metadata(
        self, sid: str, updates: FrozenDict, *, outbox: bool = False
    ) -> tuple[FrozenDict, WriteReceipt]:
        """``merge_metadata`` returning the merged metadata and a receipt
        (``first_seq == next_seq``: no message was written)."""
        return self._drive(self._ops.merge_metadata(self._sid(sid), updates, outbox))

    def write_delete(self, sid: str, *, floor_ms: int = 0) -> tuple[bool, int]:
        """Delete and leave a tombstone (see the module docstring): ``(existed, tombstone_ms)``.

        Copies of every generation created before the tombstone are refused
        by :meth:`restore`; a new generation is created at or after it.
        """
        return self._drive(self._ops.delete_tombstoned(self._sid(sid), floor_ms))

    def fence(self, sid: str) -> Fenced | None:
        """Freeze the session for reconciliation (writes then raise
        :class:`SessionFenced`); its generation and outbox, or ``None`` if missing."""
        return self._drive(self._ops.fence(self._sid(sid)))

    def unfence(self, sid: str, created_ms: int) -> None:
        """Lift the fence of generation ``created_ms`` (reconciliation found it current)."""
        self._drive(self._ops.unfence(self._sid(sid), created_ms))

    def outbox_records(self, sid: str) -> tuple[int, list[OutboxRecord]]:
        """The session's generation and its outbox records, oldest first."""
        return self._drive(self._ops.outbox_records(self._sid(sid)))

    def outbox_ack(self, sid: str, created_ms: int, versions: Sequence[int]) -> int:
        """Drop the outbox records of these versions of generation ``created_ms``
        (the archive holds them); how many records are left."""
        return self._drive(self._ops.outbox_ack(self._sid(sid), created_ms, versions))

    def outbox_sessions(self, limit: int = 1000) -> list[str]:
        """Sessions holding outbox records, the longest-waiting first."""
        return self._drive(self._ops.outbox_sessions(check_limit(limit)))

    def snapshot(
        self, sid: str, last: int | None = None, *, refresh: bool = False
    ) -> Snapshot | None:
        """The session's hot window (its newest ``last`` entries) with seqs and
        bookkeeping in one round trip, or ``None`` if missing. ``refresh``
        slides the expiry by the stored TTL in the same script. Spilled
        entries are not part of it."""
        return self._drive(self._ops.snapshot(self._sid(sid), last, refresh))

    def restore(self, snapshot: Snapshot) -> bool:
        """Write ``snapshot`` (a window another tier chose) only if the session is
        absent here; ``False`` when present or when its ``expires_ms`` has passed.

        Seqs, kinds, version, times, user, metadata, next/base seq and the
        absolute expiry are kept as given; nothing is trimmed. No invalidation
        is published: the logical state did not change. A copy of a generation
        created before the session's tombstone is refused.
        """
        return self._drive(self._ops.restore(snapshot)) == 1

    def promote(self, snapshot: Snapshot) -> int:
        """:meth:`restore`, also over a fenced copy of an older generation:
        1 written, 0 present, -1 refused (deleted generation, or expired)."""
        return self._drive(self._ops.restore(snapshot))

    def history_page(self, sid: str, before: int | None, limit: int) -> HistoryPart | None:
        """The newest ``limit`` messages with seq below ``before`` (any when
        ``None``), window and spill list together, oldest first, as
        ``(seq, message)`` with the generation and base seq; ``None`` if the
        session is missing (or fenced). One round trip."""
        return self._drive(self._ops.history_page(self._sid(sid), before, limit))

    def list_keys(
        self, user_id: str | None, limit: int, position: tuple[int, str] | None, order: Order
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` ``(updated_ms, session_id)`` of live sessions strictly
        after ``position`` in ``order``: the keyset behind :meth:`list`."""
        return self._drive(self._ops.list_keys(user_id, limit, position, order))

    def exists_many(self, sids: Sequence[str]) -> list[bool]:
        """Whether each session is live here, in one pipelined round trip."""
        return self._drive(self._ops.exists_many(sids))

    def drop(self, sid: str) -> bool:
        """Remove the session from this tier (as :meth:`delete`, publishing the
        invalidation): for copies known to be stale."""
        return self._drive(self._ops.delete(self._sid(sid)))

    # -- archival support ---------------------------------------------------------

    def spilled(self, sid: str, limit: int | None = None) -> list[Spilled]:
        """The oldest ``limit`` (all by default) spilled entries, oldest first.

        With ``spill=True`` these are the messages trims moved out of the hot
        window and the archive does not yet hold; ``[]`` when there are none.
        """
        return self._drive(self._ops.spilled(self._sid(sid), limit))

    def drain_spill(self, sid: str, upto_seq: int, *, created_ms: int | None = None) -> int:
        """Atomically remove the spilled entries with seq ``<= upto_seq``; how many.

        Pass the ``created_ms`` of the snapshot the entries were archived with
        so that a session deleted and re-created meanwhile (whose seqs start
        again at 0) loses nothing: then nothing is removed.
        """
        return self._drive(self._ops.drain_spill(self._sid(sid), upto_seq, created_ms))

    def evict(self, sid: str, *, created_ms: int, version: int) -> bool:
        """Compare-and-delete for archival: remove the session (spill included)
        only while it is still that generation; no invalidation is published
        (the archive holds the same state). ``True`` if removed."""
        return self._drive(self._ops.evict(self._sid(sid), created_ms, version))

    # -- maintenance ------------------------------------------------------------

    def purge_expired(self, *, batch_size: int = 1000) -> int:
        """Drop expired sessions from the indexes (and any keys left), ``batch_size`` per script.

        Reads and ``list`` skip expired sessions anyway and Redis expires their
        keys itself; this reclaims the index entries of sessions nobody lists.
        Returns how many were removed.
        """
        return self._drive(self._ops.purge_expired(batch_size))

    def stats(self) -> dict[str, Any]:
        """Indexed and expiring session counts and Redis memory use (one round trip).

        Also the circuit breaker's state and counters (``breaker``).
        """
        return {**self._drive(self._ops.stats()), "breaker": self.breaker.stats()}

    # -- session locks (the backend of tieredstore.locking) ------------------------

    def lock_acquire(self, sid: str, token: str, ttl_ms: int) -> bool:
        return self._drive(self._ops.lock_acquire(sid, token, ttl_ms))

    def lock_release(self, sid: str, token: str) -> bool:
        return self._drive(self._ops.lock_release(sid, token))

    def lock_extend(self, sid: str, token: str, ttl_ms: int) -> bool:
        return self._drive(self._ops.lock_extend(sid, token, ttl_ms))

    def lock_held(self, sid: str) -> bool:
        return self._drive(self._ops.lock_held(sid))


class AsyncRedisStore(RedisShared, AsyncBaseStore):
    """The asyncio twin of :class:`RedisStore` over ``redis.asyncio``.

    Same keys, scripts, plans, options and errors; every method that talks
    to Redis is a coroutine. ``client`` is a ``redis.asyncio.Redis``.

    Many concurrent tasks need many connections: :meth:`from_url` builds a
    ``BlockingConnectionPool`` (tasks wait for a free connection, up to its
    ``timeout``, instead of failing with "Too many connections"); give a
    client you build yourself one too.
    """

    _client_class = redis.asyncio.Redis
    _pool_class = redis.asyncio.BlockingConnectionPool

    def __init__(
        self,
        client: redis.asyncio.Redis | None = None,
        *,
        url: str | None = None,
        connection_pool: redis.asyncio.ConnectionPool | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        publish: bool = True,
        spill: bool = False,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        breaker: CircuitBreaker | bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._setup(
            client,
            url,
            connection_pool,
            namespace=namespace,
            prefix=prefix,
            publish=publish,
            spill=spill,
            tombstone_ttl=tombstone_ttl,
            breaker=breaker,
        )

    # -- the I/O shell ------------------------------------------------------

    async def _drive(self, plan: Plan[T]) -> T:
        """Await a plan's calls; driver errors become ours (see :mod:`.redis_errors`)."""
        scripts, breaker = self._scripts, self.breaker
        try:
            call = next(plan)
            while True:
                try:
                    with breaker.guard(_redis_down):
                        if isinstance(call, Commands):
                            pipe = self.client.pipeline(transaction=False)
                            for command in call.commands:
                                pipe.execute_command(*command)
                            reply = await pipe.execute()
                        else:
                            reply = await scripts[call.script](keys=call.keys, args=call.args)
                except REDIS_ERRORS as exc:
                    raise _unavailable(exc) from exc
                call = plan.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    # -- primitives -----------------------------------------------------------

    async def _save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> int:
        return await self._drive(
            self._ops.save_version(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
            )
        )

    async def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int:
        return await self._drive(
            self._ops.append_version(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    async def _load(self, sid: str, last: int | None) -> list[Message]:
        return await self._drive(self._ops.load(sid, last))

    async def _get(self, sid: str, last: int | None) -> Session:
        return await self._drive(self._ops.get(sid, last))

    async def _count(self, sid: str) -> int:
        return await self._drive(self._ops.count(sid))

    async def _exists(self, sid: str) -> bool:
        return await self._drive(self._ops.exists(sid))

    async def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return await self._drive(self._ops.merged_metadata(sid, updates))

    async def _delete(self, sid: str) -> bool:
        return await self._drive(self._ops.delete(sid))

    async def _list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Page:
        return await self._drive(self._ops.list(user_id, limit, cursor, order))

    async def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return await self._drive(self._ops.fork(src, dst, ttl_ms=ttl_ms))

    # -- the tiered layer (AsyncTieredStore's view of this tier) ----------------

    async def write_save(
        self,
        sid: str,
        *,
        batch: Batch,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> WriteReceipt | None:
        """See :meth:`RedisStore.write_save`."""
        return await self._drive(
            self._ops.save(
                self._sid(sid),
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
                create=create,
                outbox=outbox,
            )
        )

    async def write_append(
        self,
        sid: str,
        *,
        batch: Batch,
        ttl_ms: int | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> WriteReceipt | None:
        """See :meth:`RedisStore.write_append`."""
        return await self._drive(
            self._ops.append(
                self._sid(sid),
                batch,
                ttl_ms=ttl_ms,
                expected_version=expected_version,
                create=create,
                outbox=outbox,
            )
        )

    async def write_merge_metadata(
        self, sid: str, updates: FrozenDict, *, outbox: bool = False
    ) -> tuple[FrozenDict, WriteReceipt]:
        """See :meth:`RedisStore.write_merge_metadata`."""
        return await self._drive(self._ops.merge_metadata(self._sid(sid), updates, outbox))

    async def write_delete(self, sid: str, *, floor_ms: int = 0) -> tuple[bool, int]:
        """See :meth:`RedisStore.write_delete`."""
        return await self._drive(self._ops.delete_tombstoned(self._sid(sid), floor_ms))

    async def fence(self, sid: str) -> Fenced | None:
        """See :meth:`RedisStore.fence`."""
        return await self._drive(self._ops.fence(self._sid(sid)))

    async def unfence(self, sid: str, created_ms: int) -> None:
        """See :meth:`RedisStore.unfence`."""
        await self._drive(self._ops.unfence(self._sid(sid), created_ms))

    async def outbox_records(self, sid: str) -> tuple[int, list[OutboxRecord]]:
        """See :meth:`RedisStore.outbox_records`."""
        return await self._drive(self._ops.outbox_records(self._sid(sid)))

    async def outbox_ack(self, sid: str, created_ms: int, versions: Sequence[int]) -> int:
        """See :meth:`RedisStore.outbox_ack`."""
        return await self._drive(self._ops.outbox_ack(self._sid(sid), created_ms, versions))

    async def outbox_sessions(self, limit: int = 1000) -> list[str]:
        """See :meth:`RedisStore.outbox_sessions`."""
        return await self._drive(self._ops.outbox_sessions(check_limit(limit)))

    async def snapshot(
        self, sid: str, last: int | None = None, *, refresh: bool = False
    ) -> Snapshot | None:
        """See :meth:`RedisStore.snapshot`."""
        return await self._drive(self._ops.snapshot(self._sid(sid), last, refresh))

    async def restore(self, snapshot: Snapshot) -> bool:
        """See :meth:`RedisStore.restore`."""
        return await self._drive(self._ops.restore(snapshot)) == 1

    async def promote(self, snapshot: Snapshot) -> int:
        """See :meth:`RedisStore.promote`."""
        return await self._drive(self._ops.restore(snapshot))

    async def history_page(self, sid: str, before: int | None, limit: int) -> HistoryPart | None:
        """See :meth:`RedisStore.history_page`."""
        return await self._drive(self._ops.history_page(self._sid(sid), before, limit))

    async def list_keys(
        self, user_id: str | None, limit: int, position: tuple[int, str] | None, order: Order
    ) -> list[tuple[int, str]]:
        """See :meth:`RedisStore.list_keys`."""
        return await self._drive(self._ops.list_keys(user_id, limit, position, order))

    async def exists_many(self, sids: Sequence[str]) -> list[bool]:
        """See :meth:`RedisStore.exists_many`."""
        return await self._drive(self._ops.exists_many(sids))

    async def drop(self, sid: str) -> bool:
        """See :meth:`RedisStore.drop`."""
        return await self._drive(self._ops.delete(self._sid(sid)))

    async def spilled(self, sid: str, limit: int | None = None) -> list[Spilled]:
        """See :meth:`RedisStore.spilled`."""
        return await self._drive(self._ops.spilled(self._sid(sid), limit))

    async def drain_spill(self, sid: str, upto_seq: int, *, created_ms: int | None = None) -> int:
        """See :meth:`RedisStore.drain_spill`."""
        return await self._drive(self._ops.drain_spill(self._sid(sid), upto_seq, created_ms))

    async def evict(self, sid: str, *, created_ms: int, version: int) -> bool:
        """See :meth:`RedisStore.evict`."""
        return await self._drive(self._ops.evict(self._sid(sid), created_ms, version))

    async def purge_expired(self, *, batch_size: int = 1000) -> int:
        """See :meth:`RedisStore.purge_expired`."""
        return await self._drive(self._ops.purge_expired(batch_size))

    async def stats(self) -> dict[str, Any]:
        """See :meth:`RedisStore.stats`."""
        return {**(await self._drive(self._ops.stats())), "breaker": self.breaker.stats()}

    async def lock_acquire(self, sid: str, token: str, ttl_ms: int) -> bool:
        return await self._drive(self._ops.lock_acquire(sid, token, ttl_ms))

    async def lock_release(self, sid: str, token: str) -> bool:
        return await self._drive(self._ops.lock_release(sid, token))

    async def lock_extend(self, sid: str, token: str, ttl_ms: int) -> bool:
        return await self._drive(self._ops.lock_extend(sid, token, ttl_ms))

    async def lock_held(self, sid: str) -> bool:
        return await self._drive(self._ops.lock_held(sid))
