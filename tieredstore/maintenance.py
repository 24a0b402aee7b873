"""Maintenance: expire, archive idle sessions, trim. Plain functions, bounded and idempotent.

Each function takes a :class:`~tieredstore.store.TieredStore` and keyword
limits — ``batch_size`` (sessions per batch), ``max_batches`` and
``time_budget`` (seconds) per call — does at most that much work, and returns
a :class:`MaintenanceResult` of counts whose ``remaining`` says whether work
is left for another call. Running one twice, or concurrently with itself or
with the application, loses and duplicates nothing: the archive absorbs
sessions by seq (re-absorbing changes nothing) and Redis is changed only by
compare-and-set scripts that check the session's ``(created, version)``.
The Celery tasks in ``worker/`` and ``tieredstore maintain`` call these.

* :func:`expire` — drops expired sessions from Redis (index entries and
  keys) and from the archive, and sweeps the Redis index for entries whose
  keys are gone and keys that lost the TTL their hash says they have.
* :func:`archive_idle` — copies sessions idle longer than ``archive_after``
  (window and spill list) into the archive, one transaction per batch, then
  evicts each from Redis only if its generation is unchanged, so a message
  appended meanwhile stays in Redis and is archived by a later run.
* :func:`reconcile` — after an outage of either server in
  ``write_through`` mode: reconciles sessions the archive took while Redis
  was unreachable and copies outboxes (writes Redis kept while the archive
  was unreachable) into the archive (:meth:`TieredStore.settle`).
* :func:`trim` — enforces ``max_messages`` / ``max_bytes`` by
  :func:`tieredstore.policy.plan_trim_bytes` on hot sessions (copying what
  it drops into the archive first when ``keep_trimmed``) and, when trimmed
  messages are not kept, on archived sessions too. It also archives and
  drains spill lists.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tieredstore.codec import decode_json
from tieredstore.errors import InvalidInput
from tieredstore.model import FrozenDict
from tieredstore.policy import plan_trim_bytes
from tieredstore.tiers.archive import ArchiveCopy, PreparedCopies
from tieredstore.tiers.redis import _INDEX, _NOW, _SEQ, _TRIM
from tieredstore.tiers.redis_errors import REDIS_ERRORS, translate

if TYPE_CHECKING:
    from tieredstore.store import TieredStore
    from tieredstore.tiers.redis import RedisStore

__all__ = [
    "MaintenanceResult",
    "MaintenanceSettings",
    "Progress",
    "archive_idle",
    "expire",
    "reconcile",
    "trim",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called after each batch with ``(sessions done so far, estimated total)``."""


@dataclass(frozen=True, slots=True)
class MaintenanceResult:
    """What one maintenance call did.

    ``changed``: sessions expired / archived / trimmed (in a dry run: that
    would be). ``skipped``: sessions left alone because they changed while
    being processed (a later run takes them). ``repaired``: Redis index
    entries or TTLs fixed. ``messages``: messages archived or trimmed.
    ``remaining``: work is left that a further call would do.
    """

    task: str
    scanned: int = 0
    changed: int = 0
    skipped: int = 0
    repaired: int = 0
    messages: int = 0
    batches: int = 0
    remaining: bool = False
    dry_run: bool = False
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw else default


def _env_int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    return int(raw) if raw else default


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if not raw:
        return None
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class MaintenanceSettings:
    """How the worker runs maintenance, from ``TIEREDSTORE_*`` variables (see the README)."""

    archive_after: float = 3600.0
    expire_interval: float = 300.0
    archive_interval: float = 60.0
    trim_interval: float = 3600.0
    batch_size: int = 500
    max_batches: int = 20
    time_budget: float = 60.0
    lock_ttl: float = 300.0
    max_chain: int = 100
    reconcile_interval: float = 60.0
    trim_max_bytes: int | None = None
    trim_keep: bool | None = None

    def __post_init__(self) -> None:
        if self.lock_ttl <= self.time_budget:
            raise InvalidInput("TIEREDSTORE_LOCK_TTL must exceed TIEREDSTORE_TIME_BUDGET")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MaintenanceSettings:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            archive_after=_env_float(env, "TIEREDSTORE_ARCHIVE_AFTER", d.archive_after),
            expire_interval=_env_float(env, "TIEREDSTORE_EXPIRE_INTERVAL", d.expire_interval),
            archive_interval=_env_float(env, "TIEREDSTORE_ARCHIVE_INTERVAL", d.archive_interval),
            trim_interval=_env_float(env, "TIEREDSTORE_TRIM_INTERVAL", d.trim_interval),
            reconcile_interval=_env_float(
                env, "TIEREDSTORE_RECONCILE_INTERVAL", d.reconcile_interval
            ),
            batch_size=_env_int(env, "TIEREDSTORE_BATCH_SIZE", d.batch_size) or d.batch_size,
            max_batches=_env_int(env, "TIEREDSTORE_MAX_BATCHES", d.max_batches) or d.max_batches,
            time_budget=_env_float(env, "TIEREDSTORE_TIME_BUDGET", d.time_budget),
            lock_ttl=_env_float(env, "TIEREDSTORE_LOCK_TTL", d.lock_ttl),
            max_chain=_env_int(env, "TIEREDSTORE_MAX_CHAIN", d.max_chain) or 0,
            trim_max_bytes=_env_int(env, "TIEREDSTORE_TRIM_MAX_BYTES", None),
            trim_keep=_env_bool(env, "TIEREDSTORE_TRIM_KEEP"),
        )


# -- bounds and bookkeeping ------------------------------------------------------


@dataclass
class _Run:
    """Counts of one call plus its limits: ``more()`` says whether another batch fits."""

    task: str
    batch_size: int
    max_batches: int | None
    time_budget: float | None
    dry_run: bool
    progress: Progress | None
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    scanned: int = 0
    changed: int = 0
    skipped: int = 0
    repaired: int = 0
    messages: int = 0
    batches: int = 0
    remaining: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not 1 <= self.batch_size <= 100_000:
            raise InvalidInput(f"batch_size must be between 1 and 100000, got {self.batch_size!r}")
        if self.max_batches is not None and self.max_batches < 1:
            raise InvalidInput(f"max_batches must be positive, got {self.max_batches!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise InvalidInput(f"time_budget must be positive, got {self.time_budget!r}")

    def more(self) -> bool:
        if self.max_batches is not None and self.batches >= self.max_batches:
            return False
        return self.time_budget is None or time.monotonic() - self.started < self.time_budget

    def batch_done(self, scanned: int) -> None:
        self.batches += 1
        self.scanned += scanned
        if self.progress is not None:
            self.progress(self.scanned, max(self.total, self.scanned))

    def result(self) -> MaintenanceResult:
        result = MaintenanceResult(
            task=self.task, scanned=self.scanned, changed=self.changed, skipped=self.skipped,
            repaired=self.repaired, messages=self.messages, batches=self.batches,
            remaining=self.remaining, dry_run=self.dry_run,
            elapsed=round(time.monotonic() - self.started, 6),
        )
        log.info("maintenance %s: %s", self.task, result.as_dict())
        return result


# -- the Redis side (to move into RedisStore; see the notes on each) ---------------------

# KEYS idx; ARGV cutoff limit has_pos pos_score pos_member.
# Up to `limit` (sid, score) with score < cutoff, after (pos_score, pos_member).
_IDLE = r"""
local function lt(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
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
"""

# KEYS idx exp own; ARGV root uprefix start count dry.
# Check `count` index entries from rank `start`: bury those whose hash is gone
# or expired, give keys that lost their TTL the expiry their hash records.
# Returns {scanned, gone, ttl_fixed, expired}.
_SWEEP = r"""
IX.idx, IX.exp, IX.own, IX.up = KEYS[1], KEYS[2], KEYS[3], ARGV[2]
local root, start, count, dry = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
local now = now_ms()
local sids = redis.call('ZRANGE', IX.idx, start, start + count - 1)
local gone, fixed, dead = 0, 0, 0
for _, sid in ipairs(sids) do
  local t = root .. '{' .. sid .. '}:'
  local m, h, x = t .. 'm', t .. 'h', t .. 'x'
  local f = redis.call('HMGET', h, 'version', 'expires')
  if not f[1] then
    gone = gone + 1
    if not dry then bury(m, h, x, sid) end
  elseif f[2] and tonumber(f[2]) <= now then
    dead = dead + 1
    if not dry then bury(m, h, x, sid) end
  elseif f[2] then
    local broken = false
    for _, k in ipairs({m, h, x}) do
      if redis.call('PTTL', k) == -1 then
        broken = true
        if not dry then redis.call('PEXPIREAT', k, f[2]) end
      end
    end
    local indexed = redis.call('ZSCORE', IX.exp, sid)
    if not indexed or tonumber(indexed) ~= tonumber(f[2]) then
      broken = true
      if not dry then redis.call('ZADD', IX.exp, f[2], sid) end
    end
    if broken then fixed = fixed + 1 end
  end
end
return {#sids, gone, fixed, dead}
"""

# KEYS m h x; ARGV created version lead drop drain_upto chan sid.
# If the session is still generation (created, version): remove window entries
# [lead, lead + drop), recount the leading system entries, bump and announce
# the version (caches must drop the longer window); then drop spilled entries
# with seq <= drain_upto (-1: none). Returns 1, or 0 if the session changed.
_TRIM_IF = r"""
local m, h, x = KEYS[1], KEYS[2], KEYS[3]
local lead, drop, upto = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local f = redis.call('HMGET', h, 'version', 'created', 'expires')
if not f[1] or f[2] ~= ARGV[1] or f[1] ~= ARGV[2] then return 0 end
if f[3] and tonumber(f[3]) <= now then return 0 end
if drop > 0 then
  if lead == 0 then
    redis.call('LTRIM', m, drop, -1)
  else
    local saved = redis.call('LPOP', m, lead)
    redis.call('LTRIM', m, drop, -1)
    for i = #saved, 1, -1 do redis.call('LPUSH', m, saved[i]) end
  end
  local n = redis.call('LLEN', m)
  redis.call('HSET', h, 'lead', fmt(skip_kind(m, 0, n, 115)))
  local version = redis.call('HINCRBY', h, 'version', 1)
  if f[3] and n > 0 then redis.call('PEXPIREAT', m, f[3]) end
  publish(ARGV[6], f[2], fmt(version), ARGV[7])
end
if upto >= 0 then
  local n = redis.call('LLEN', x)
  local k = count_below(x, n, upto + 1)
  if k == n then redis.call('DEL', x)
  elseif k > 0 then redis.call('LTRIM', x, k, -1) end
end
return 1
"""

# KEYS idx exp own; ARGV root uprefix [sid created version]*.
# RedisStore's `evict` for many sessions in one call: remove each session still
# at generation (created, version), holding no outbox record and no fence.
# Returns 1/0 per session.
_EVICT_MANY = r"""
IX.idx, IX.exp, IX.own, IX.up = KEYS[1], KEYS[2], KEYS[3], ARGV[2]
local root = ARGV[1]
local now = now_ms()
local out = {}
for i = 3, #ARGV, 3 do
  local sid = ARGV[i]
  local t = root .. '{' .. sid .. '}:'
  local f = redis.call('HMGET', t .. 'h', 'version', 'expires', 'created', 'f')
  if f[1] and not (f[2] and tonumber(f[2]) <= now) and f[3] == ARGV[i + 1]
     and f[1] == ARGV[i + 2] and not f[4] and redis.call('EXISTS', t .. 'o') == 0 then
    bury(t .. 'm', t .. 'h', t .. 'x', sid)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

_SCRIPTS = {
    "idle": _IDLE,
    "evict_many": _NOW + _INDEX + _EVICT_MANY,
    "sweep": _NOW + _INDEX + _SWEEP,
    "trim_if": _NOW + _SEQ + _TRIM + _TRIM_IF,
}

_Entry = tuple[int, str, int, bytes]
"""A hot-tier entry split up: ``(seq, kind, unix-ms, encoded message)``."""


def _split(raw: Sequence[bytes]) -> list[_Entry]:
    """:func:`tieredstore.codec.split_entry` for many entries, payloads as ``bytes``."""
    out: list[_Entry] = []
    for entry in raw:
        head, stamp, payload = entry.split(b":", 2)
        out.append((int(head[1:]), chr(head[0]), int(stamp), payload))
    return out


@dataclass(frozen=True, slots=True)
class _Captured:
    """One hot session read atomically: its hash, window and spill list."""

    sid: str
    fields: dict[bytes, bytes]
    window: list[_Entry]
    spill: list[_Entry]

    @property
    def created_ms(self) -> int:
        return int(self.fields[b"created"])

    @property
    def version(self) -> int:
        return int(self.fields[b"version"])

    def copy(self, without: frozenset[int] = frozenset()) -> ArchiveCopy:
        """The session for :meth:`ArchiveStore.absorb_many` (minus seqs in ``without``)."""
        fields = self.fields
        entries = sorted(
            {e[0]: e for e in (*self.spill, *self.window) if e[0] not in without}.values()
        )
        meta = {name[2:].decode(): decode_json(value)
                for name, value in fields.items() if name.startswith(b"m:")}
        user = fields.get(b"user")
        expires, ttl = fields.get(b"expires"), fields.get(b"ttl")
        return ArchiveCopy(
            sid=self.sid,
            created_ms=self.created_ms,
            updated_ms=int(fields[b"updated"]),
            version=self.version,
            expires_ms=int(expires) if expires is not None else None,
            ttl_ms=int(ttl) if ttl is not None else None,
            next_seq=int(fields.get(b"n", b"0")),
            base_seq=int(fields.get(b"b", b"0")),
            metadata=FrozenDict(meta),
            user_id=user.decode() if user is not None else None,
            seqs=[e[0] for e in entries],
            kinds="".join(e[1] for e in entries),
            payloads=[e[3] for e in entries],
            stamps=[e[2] for e in entries],
        )


class _Hot:
    """What maintenance needs from Redis beyond RedisStore's API (pipelined, batched).

    Stopgap: each method is specified for RedisStore in the maintenance notes
    and reaches into its keys, client and script table until it moves there.
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.client = store.client
        self.keys = store.keys
        self.scripts = {name: self.client.register_script(src) for name, src in _SCRIPTS.items()}

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except REDIS_ERRORS as exc:
            raise translate(exc) from exc

    def now_ms(self) -> int:
        seconds, micros = self._call(self.client.time)
        return int(seconds) * 1000 + int(micros) // 1000

    def cursor(self, name: str) -> int:
        value = self._call(lambda: self.client.get(self.keys.root + "maint:cursor:" + name))
        return int(value) if value else 0

    def set_cursor(self, name: str, value: int) -> None:
        self._call(lambda: self.client.set(self.keys.root + "maint:cursor:" + name, value))

    def idle_keys(
        self, older_than_ms: int, limit: int, position: tuple[int, str] | None
    ) -> list[tuple[int, str]]:
        """``(updated_ms, sid)`` of sessions last written before ``older_than_ms``,
        oldest first, strictly after ``position`` (a keyset cursor)."""
        args: list[str | int] = [older_than_ms, limit,
                                 *(("1", *position) if position else ("0", 0, ""))]
        reply = self._call(lambda: self.scripts["idle"](keys=[self.keys.idx], args=args))
        return [(int(float(reply[i + 1])), reply[i].decode()) for i in range(0, len(reply), 2)]

    def capture_many(self, sids: Sequence[str]) -> list[_Captured | None]:
        """Hash, window and spill list of each session, all read in one MULTI/EXEC;
        ``None`` for a session that is missing or expired."""
        if not sids:
            return []
        pipe = self.client.pipeline(transaction=True)
        pipe.time()
        for sid in sids:
            m, h, x = self.keys.session(sid)
            pipe.hgetall(h)
            pipe.lrange(m, 0, -1)
            pipe.lrange(x, 0, -1)
        replies = self._call(pipe.execute)
        seconds, micros = replies[0]
        now = int(seconds) * 1000 + int(micros) // 1000
        out: list[_Captured | None] = []
        for i, sid in enumerate(sids):
            fields, window, spill = replies[1 + 3 * i : 4 + 3 * i]
            expires = fields.get(b"expires")
            if b"version" not in fields or (expires is not None and int(expires) <= now):
                out.append(None)
                continue
            out.append(_Captured(sid, fields, _split(window), _split(spill)))
        return out

    def evict_many(self, captured: Sequence[_Captured]) -> list[bool]:
        """``RedisStore.evict`` for each session, in one script call."""
        if not captured:
            return []
        k = self.keys
        args: list[str | int] = [k.root, k.user_prefix]
        for cap in captured:
            args += [cap.sid, str(cap.created_ms), str(cap.version)]
        reply = self._call(lambda: self.scripts["evict_many"](keys=[k.idx, k.exp, k.own],
                                                              args=args))
        return [bool(flag) for flag in reply]

    def trim_many(self, plans: Sequence[tuple[_Captured, int, int, int]]) -> list[bool]:
        """For each ``(captured, lead, drop, drain_upto)``: trim the window and drain
        the spill list, only if the session is still the captured generation."""
        if not plans:
            return []
        pipe = self.client.pipeline(transaction=False)
        chan = self.store.invalidation_channel if self.store.publish else ""
        for cap, lead, drop, upto in plans:
            self.scripts["trim_if"](
                keys=self.keys.session(cap.sid),
                args=[str(cap.created_ms), str(cap.version), lead, drop, upto, chan, cap.sid],
                client=pipe,
            )
        return [bool(reply) for reply in self._call(pipe.execute)]

    def sweep(self, start: int, count: int, dry_run: bool) -> tuple[int, int, int, int]:
        k = self.keys
        reply = self._call(lambda: self.scripts["sweep"](
            keys=[k.idx, k.exp, k.own],
            args=[k.root, k.user_prefix, start, count, "1" if dry_run else "0"]))
        return int(reply[0]), int(reply[1]), int(reply[2]), int(reply[3])

    def purge_batch(self, batch_size: int) -> int:
        """One batch of ``RedisStore.purge_expired``: how many expired sessions went."""
        k = self.keys
        return int(self._call(lambda: self.store._scripts["purge"](
            keys=[k.idx, k.exp, k.own], args=[k.root, k.user_prefix, batch_size])))

    def count_expired(self) -> int:
        return int(self._call(lambda: self.client.zcount(self.keys.exp, "-inf", self.now_ms())))

    def count_idle(self, older_than_ms: int) -> int:
        return int(self._call(
            lambda: self.client.zcount(self.keys.idx, "-inf", f"({older_than_ms}")))

    def count_indexed(self) -> int:
        return int(self._call(lambda: self.client.zcard(self.keys.idx)))

    def live_expiry(self, sids: list[str]) -> dict[str, int | None]:
        """The sessions among ``sids`` live in Redis, with their expiry there."""
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for sid in sids:
            pipe.hmget(self.keys.meta(sid), "version", "expires")
        replies = self._call(pipe.execute)
        seconds, micros = replies[0]
        now = int(seconds) * 1000 + int(micros) // 1000
        live: dict[str, int | None] = {}
        for sid, (version, expires) in zip(sids, replies[1:], strict=True):
            if version is not None and (expires is None or int(expires) > now):
                live[sid] = int(expires) if expires is not None else None
        return live

    def window_sizes(self, sids: Sequence[str]) -> list[tuple[int, int]]:
        """``(window length, spill length)`` of each session, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for sid in sids:
            m, _, x = self.keys.session(sid)
            pipe.llen(m)
            pipe.llen(x)
        replies = self._call(pipe.execute)
        return [(int(replies[2 * i]), int(replies[2 * i + 1])) for i in range(len(sids))]

    def ranked(self, start: int, count: int) -> list[str]:
        reply = self._call(lambda: self.client.zrange(self.keys.idx, start, start + count - 1))
        return [sid.decode() for sid in reply]


def _hot(store: TieredStore) -> _Hot:
    redis = store.redis
    if redis is None:
        raise InvalidInput("this maintenance step needs a Redis tier")
    return _Hot(redis)


def _now_ms(now: float | None) -> int | None:
    return None if now is None else int(now * 1000)


# -- expire --------------------------------------------------------------------------


def expire(
    store: TieredStore,
    *,
    batch_size: int = 1000,
    max_batches: int | None = 10,
    time_budget: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
) -> MaintenanceResult:
    """Remove expired sessions from Redis (index and keys) and the archive; repair the index.

    Each batch is one Lua script or one transaction. Redis judges expiry by
    its own clock; ``now`` (seconds) overrides the archive's clock. An
    archived copy whose session lives on in Redis is kept and takes the
    Redis expiry instead. The index sweep walks ``idx`` from a cursor kept
    in Redis, up to ``batch_size * max_batches`` entries per call, so every
    entry is checked over successive calls.
    """
    run = _Run("expire", batch_size, max_batches, time_budget, dry_run, progress)
    hot = _hot(store) if store.redis is not None else None
    if dry_run:
        return _expire_dry(store, hot, run)
    if hot is not None:
        while run.more():
            purged = hot.purge_batch(batch_size)
            run.changed += purged
            run.batch_done(purged)
            if purged < batch_size:
                break
        else:
            run.remaining = True
    if store.archive is not None:
        live = hot.live_expiry if hot is not None else None
        while run.more():
            seen, purged = store.archive.purge_expired_batch(
                batch_size, live=live, now_ms=_now_ms(now))
            run.changed += purged
            run.batch_done(seen)
            if seen < batch_size:
                break
        else:
            run.remaining = True
    if hot is not None:
        _sweep(hot, run)
    return run.result()


def _sweep(hot: _Hot, run: _Run, sweeps: int | None = None) -> None:
    """Walk the index from the stored cursor for up to ``sweeps`` batches (one lap at most)."""
    start = hot.cursor("expire")
    budget = sweeps if sweeps is not None else (run.max_batches or 10)
    for _ in range(budget):
        scanned, gone, fixed, dead = hot.sweep(start, run.batch_size, run.dry_run)
        run.repaired += gone + fixed
        run.changed += dead
        run.scanned += scanned
        start += scanned if run.dry_run else scanned - gone - dead
        if scanned < run.batch_size:
            start = 0
            break
    if not run.dry_run:
        hot.set_cursor("expire", start)


def _expire_dry(store: TieredStore, hot: _Hot | None, run: _Run) -> MaintenanceResult:
    if hot is not None:
        run.changed += hot.count_expired()
        _sweep(hot, run, sweeps=1)
    if store.archive is not None:
        run.changed += store.archive.stats()["expired_sessions"]
    run.batches = 1
    return run.result()


# -- archive_idle ----------------------------------------------------------------------


def archive_idle(
    store: TieredStore,
    *,
    archive_after: float,
    batch_size: int = 500,
    max_batches: int | None = 20,
    time_budget: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
) -> MaintenanceResult:
    """Move sessions idle for ``archive_after`` seconds from Redis to the archive.

    Per batch: one atomic read of the sessions (window and spill list), one
    archive transaction (:meth:`ArchiveStore.absorb_many`), then one
    pipelined compare-and-delete per session that removes it from Redis only
    if its ``(created, version)`` is unchanged; ``skipped`` counts those that
    changed (they stay in Redis, whole, and a later run archives them). Idle
    time is measured by Redis's clock unless ``now`` (seconds) is given.
    """
    if store.redis is None or store.archive is None:
        raise InvalidInput("archive_idle needs a store with both a Redis tier and an archive")
    if not archive_after >= 0:
        raise InvalidInput(f"archive_after must be non-negative, got {archive_after!r}")
    run = _Run("archive_idle", batch_size, max_batches, time_budget, dry_run, progress)
    hot = _hot(store)
    now_ms = _now_ms(now)
    cutoff = (now_ms if now_ms is not None else hot.now_ms()) - int(archive_after * 1000)
    if progress is not None:
        run.total = hot.count_idle(cutoff)
    keys = hot.idle_keys(cutoff, batch_size, None)
    archive = store.archive

    def read(sids: list[str]) -> tuple[list[_Captured], PreparedCopies]:
        captured = [cap for cap in hot.capture_many(sids) if cap is not None]
        return captured, archive.prepare([cap.copy() for cap in captured])

    # Threads do the rest while a batch is written to the archive: one reads and
    # prepares the next batch, the other evicts the batch written before.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tieredstore-archive") as pool:
        reading: Future[tuple[list[_Captured], PreparedCopies]] | None = None
        evicting: list[tuple[list[ArchiveCopy], Future[list[bool]]]] = []
        while keys:
            if not run.more():
                run.remaining = True
                break
            following = (hot.idle_keys(cutoff, batch_size, keys[-1])
                         if len(keys) == batch_size else [])
            if dry_run:
                run.changed += len(keys)
            else:
                captured, prepared = (reading.result() if reading is not None
                                      else read([sid for _, sid in keys]))
                reading = pool.submit(read, [sid for _, sid in following]) if following else None
                stored = archive.absorb_many(prepared)
                kept = [(cap, copy) for cap, copy, ok
                        in zip(captured, prepared.copies, stored, strict=True) if ok]
                run.skipped += len(captured) - len(kept)
                evicting.append(([copy for _, copy in kept],
                                 pool.submit(hot.evict_many, [cap for cap, _ in kept])))
            run.batch_done(len(keys))
            keys = following
        for copies, evicted in evicting:
            for copy, gone in zip(copies, evicted.result(), strict=True):
                if gone:
                    run.changed += 1
                    run.messages += len(copy.seqs)
                else:
                    run.skipped += 1
    return run.result()


# -- trim ------------------------------------------------------------------------------


def trim(
    store: TieredStore,
    *,
    max_messages: int | None = None,
    max_bytes: int | None = None,
    keep_trimmed: bool | None = None,
    batch_size: int = 500,
    max_batches: int | None = 20,
    time_budget: float | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> MaintenanceResult:
    """Enforce ``max_messages`` (default: the store's) and ``max_bytes`` on every session.

    Hot sessions are walked from a cursor kept in Redis; each one over a
    limit, or holding spilled entries, is trimmed by the store's policy
    (:func:`~tieredstore.policy.plan_trim_bytes`, so a tool result never
    outlives its call) with a compare-and-set on its generation. With
    ``keep_trimmed`` (default: whenever there is an archive) what is dropped,
    and any spill list, is first absorbed into the archive, one transaction
    per batch; without it the archive's sessions are trimmed as well.
    """
    if max_messages is None:
        max_messages = store.max_messages
    if max_messages is not None and max_messages < 1:
        raise InvalidInput(f"max_messages must be positive, got {max_messages!r}")
    if max_bytes is not None and max_bytes < 1:
        raise InvalidInput(f"max_bytes must be positive, got {max_bytes!r}")
    keep = store.archive is not None if keep_trimmed is None else keep_trimmed
    if keep and store.archive is None:
        raise InvalidInput("keep_trimmed needs an archive")
    run = _Run("trim", batch_size, max_batches, time_budget, dry_run, progress)
    if store.redis is not None:
        _trim_hot(store, _hot(store), run, max_messages, max_bytes, keep)
    if store.archive is not None and not keep and (max_messages or max_bytes):
        _trim_archive(store, run, max_messages, max_bytes)
    return run.result()


def _trim_hot(store: TieredStore, hot: _Hot, run: _Run, max_messages: int | None,
              max_bytes: int | None, keep: bool) -> None:
    start = hot.cursor("trim")
    if run.progress is not None:
        run.total = hot.count_indexed()
    archive = store.archive
    while run.more():
        sids = hot.ranked(start, run.batch_size)
        start = 0 if len(sids) < run.batch_size else start + len(sids)
        if sids:
            _trim_batch(hot, run, archive, sids, max_messages, max_bytes, keep)
        run.batch_done(len(sids))
        if start == 0:
            break
    else:
        run.remaining = True
    if not run.dry_run:
        hot.set_cursor("trim", start)


def _trim_batch(hot: _Hot, run: _Run, archive: Any, sids: list[str], max_messages: int | None,
                max_bytes: int | None, keep: bool) -> None:
    if max_bytes is None:
        # Only sessions over the count (or with a spill list) need a full read.
        sizes = hot.window_sizes(sids)
        sids = [sid for sid, (n, spilled) in zip(sids, sizes, strict=True)
                if spilled or (max_messages is not None and n > max_messages)]
    plans: list[tuple[_Captured, int, int, int]] = []
    copies: list[ArchiveCopy] = []
    for cap in hot.capture_many(sids):
        if cap is None:
            continue
        kinds = "".join(e[1] for e in cap.window)
        lead, drop = plan_trim_bytes(kinds, [len(e[3]) for e in cap.window], max_messages,
                                     max_bytes)
        if not drop and not cap.spill:
            continue
        if drop:
            run.changed += 1
            run.messages += drop
        if run.dry_run:
            continue
        dropped = frozenset(e[0] for e in cap.window[lead : lead + drop])
        if archive is not None and (cap.spill or (keep and drop)):
            copies.append(cap.copy(frozenset() if keep else dropped))
        drain = cap.spill[-1][0] if cap.spill and archive is not None else -1
        if drop or drain >= 0:
            plans.append((cap, lead, drop, drain))
    if copies:
        archive.absorb_many(copies)
    done = hot.trim_many(plans)
    for (_, _, drop, _), ok in zip(plans, done, strict=True):
        if not ok:
            run.skipped += 1
            if drop:
                run.changed -= 1
                run.messages -= drop


def _trim_archive(store: TieredStore, run: _Run, max_messages: int | None,
                  max_bytes: int | None) -> None:
    archive = store.archive
    assert archive is not None
    after: str | None = None
    while run.more():
        ids, trimmed, dropped = archive.trim_batch(
            max_messages=max_messages, max_bytes=max_bytes, batch_size=run.batch_size,
            after=after, dry_run=run.dry_run)
        run.changed += trimmed
        run.messages += dropped
        run.batch_done(len(ids))
        if len(ids) < run.batch_size:
            return
        after = ids[-1]
    run.remaining = True


# -- reconcile ---------------------------------------------------------------------------


def reconcile(
    store: TieredStore,
    *,
    batch_size: int = 500,
    max_batches: int | None = 20,
    time_budget: float | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> MaintenanceResult:
    """Settle what an outage left behind: detached sessions and outboxes.

    ``changed`` counts sessions reconciled, ``messages`` outbox records
    copied into the archive; ``remaining`` says more is waiting. Needs both
    a Redis tier and an archive (with either missing there is nothing to do).
    A dry run counts up to ``batch_size`` detached sessions (``changed``) and
    sessions with outboxes (``scanned``).
    """
    run = _Run("reconcile", batch_size, max_batches, time_budget, dry_run, progress)
    if store.redis is None or store.archive is None:
        return run.result()
    if dry_run:
        run.changed = len(store.archive.detached_sessions(batch_size))
        run.batch_done(len(store.redis.outbox_sessions(batch_size)))
        return run.result()
    while run.more():
        reconciled, drained, more = store.settle(limit=batch_size)
        run.changed += reconciled
        run.messages += drained
        run.batch_done(reconciled + drained)
        if not more:
            break
    else:
        run.remaining = True
    return run.result()
