"""``MemoryStore``: an in-process store on a cachetools LRU bounded in bytes.

Useful alone (development, tests, single-process apps) and as the first tier
of :class:`tieredstore.TieredStore`. Entries are immutable snapshots: a read
returns the stored :class:`Message` objects themselves (they are deeply
immutable), so a hit costs a list copy and nothing is ever aliased mutably.

Being an LRU cache, it evicts the least recently used sessions once
``max_bytes`` or ``max_entries`` is exceeded; evicted sessions are gone.
Evictions, applied invalidations and flushes are counted in :meth:`MemoryStore.stats`
and, when enabled, in :mod:`tieredstore.metrics`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from cachetools import LRUCache
from sortedcontainers import SortedList

from tieredstore import metrics
from tieredstore.base import BaseStore
from tieredstore.codec import decode_cursor, encode_cursor, encode_json, resident_nbytes
from tieredstore.core import Batch, Order, check_positive_int, from_ms, merge_metadata, to_ms
from tieredstore.errors import PayloadTooLarge, SessionExists, SessionNotFound, VersionConflict
from tieredstore.model import EMPTY_METADATA, FrozenDict, Message, Page, Session
from tieredstore.policy import plan_trim

__all__ = ["MESSAGE_OVERHEAD", "MemoryStore", "SessionEntry"]

_ENTRY_OVERHEAD = 512
MESSAGE_OVERHEAD = 192
"""Bytes a cached message takes beyond :func:`~tieredstore.codec.resident_nbytes`
of its encoding (its dict, its slot and seq in the entry), measured."""


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """An immutable snapshot of one session."""

    messages: tuple[Message, ...]
    kinds: str
    metadata: FrozenDict
    user_id: str | None
    created_ms: int
    updated_ms: int
    version: int
    expires_ms: int | None
    ttl_ms: int | None
    nbytes: int
    cached_at: float = 0.0
    next_seq: int = 0
    seqs: tuple[int, ...] = ()
    """The seq of each message (empty if the tier that filled the entry had none)."""

    def session(self, sid: str, last: int | None, tier: Any = "memory") -> Session:
        messages = newest(self.messages, last)
        seqs = self.seqs[len(self.messages) - len(messages) :]
        if len(self.seqs) != len(self.messages):
            seqs = ()
        return Session(
            id=sid,
            messages=messages,
            metadata=self.metadata,
            user_id=self.user_id,
            created_at=from_ms(self.created_ms),  # type: ignore[arg-type]
            updated_at=from_ms(self.updated_ms),  # type: ignore[arg-type]
            version=self.version,
            expires_at=from_ms(self.expires_ms),
            message_count=len(self.messages),
            tier=tier,
            seqs=seqs,
        )


def newest(messages: tuple[Message, ...], last: int | None) -> list[Message]:
    """A copy of the newest ``last`` messages (all of them for ``None``)."""
    if last is None:
        return list(messages)
    if last == 0:
        return []
    return list(messages[-last:])


def entry_size(messages_nbytes: int, count: int) -> int:
    return _ENTRY_OVERHEAD + messages_nbytes + count * MESSAGE_OVERHEAD


class _EvictingLRU(LRUCache[str, SessionEntry]):
    def __init__(self, maxsize: int, on_evict: Callable[[str, SessionEntry], None]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=_entry_nbytes)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, SessionEntry]:
        key, value = super().popitem()
        self._on_evict(key, value)
        return key, value


def _entry_nbytes(entry: SessionEntry) -> int:
    return entry.nbytes


class MemoryStore(BaseStore):
    """A thread-safe in-process store bounded by ``max_bytes`` and ``max_entries``.

    Sizes are estimated from the encoded messages (their bytes, and their
    strings and nested objects, see :func:`~tieredstore.codec.resident_nbytes`)
    plus a fixed per-entry and per-message overhead, so the process grows by
    about the bound. ``clock`` (seconds since the epoch) drives TTLs,
    so tests can expire sessions without sleeping.
    """

    tier = "memory"

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 2**20,
        max_entries: int = 100_000,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.max_entries = check_positive_int(max_entries, "max_entries")
        self.max_bytes = check_positive_int(max_bytes, "max_bytes")
        self._lock = threading.RLock()
        self._cache = _EvictingLRU(max_bytes, self._forget)
        self._by_activity: SortedList = SortedList()
        self._by_user: dict[str, SortedList] = {}
        self._by_expiry: SortedList = SortedList()
        self.evictions = 0
        self.invalidated = 0
        self.flushes = 0
        metrics.track_memory(self)

    # -- entry bookkeeping (all under self._lock) ---------------------------

    def _now_ms(self) -> int:
        return to_ms(self.clock())

    def _live(self, sid: str, now_ms: int | None = None) -> SessionEntry | None:
        """The entry if it is live at ``now_ms`` (read from the clock only when the
        entry can expire: a memory-tier hit reads this)."""
        entry = self._cache.get(sid)
        if entry is None or entry.expires_ms is None:
            return entry
        if entry.expires_ms <= (self._now_ms() if now_ms is None else now_ms):
            self._remove(sid)
            return None
        return entry

    def _require(self, sid: str, now_ms: int) -> SessionEntry:
        entry = self._live(sid, now_ms)
        if entry is None:
            raise SessionNotFound(sid)
        return entry

    def _put(self, sid: str, entry: SessionEntry) -> None:
        if entry.nbytes > self.max_bytes:
            raise PayloadTooLarge(
                f"session {sid!r} needs about {entry.nbytes} bytes; "
                f"the memory store holds at most {self.max_bytes}"
            )
        old = self._cache.get(sid)
        if old is not None:
            self._unindex(sid, old)
        self._cache[sid] = entry
        self._index(sid, entry)
        while len(self._cache) > self.max_entries:
            self._cache.popitem()
        self._purge_expired(self._now_ms(), budget=16)

    def _forget(self, sid: str, entry: SessionEntry) -> None:
        self.evictions += 1
        metrics.memory_evicted()
        self._unindex(sid, entry)

    def _remove(self, sid: str) -> SessionEntry | None:
        entry = self._cache.pop(sid, None)
        if entry is not None:
            self._unindex(sid, entry)
        return entry

    def _index(self, sid: str, entry: SessionEntry) -> None:
        self._by_activity.add((entry.updated_ms, sid))
        if entry.user_id is not None:
            self._by_user.setdefault(entry.user_id, SortedList()).add((entry.updated_ms, sid))
        if entry.expires_ms is not None:
            self._by_expiry.add((entry.expires_ms, sid))

    def _unindex(self, sid: str, entry: SessionEntry) -> None:
        self._by_activity.discard((entry.updated_ms, sid))
        if entry.user_id is not None:
            user_index = self._by_user.get(entry.user_id)
            if user_index is not None:
                user_index.discard((entry.updated_ms, sid))
                if not user_index:
                    del self._by_user[entry.user_id]
        if entry.expires_ms is not None:
            self._by_expiry.discard((entry.expires_ms, sid))

    def _purge_expired(self, now_ms: int, budget: int) -> int:
        purged = 0
        while self._by_expiry and purged < budget:
            expires_ms, sid = self._by_expiry[0]
            if expires_ms > now_ms:
                break
            self._remove(sid)
            purged += 1
        return purged

    def purge_expired(self) -> int:
        """Drop every expired session now; returns how many (reads skip them anyway)."""
        with self._lock:
            return self._purge_expired(self._now_ms(), budget=sys.maxsize)

    def _build(
        self,
        messages: tuple[Message, ...],
        kinds: str,
        nbytes: int,
        *,
        previous: SessionEntry | None,
        now_ms: int,
        ttl_ms: int | None,
        metadata: FrozenDict | None = None,
        user_id: str | None = None,
        seqs: tuple[int, ...],
        next_seq: int,
    ) -> SessionEntry:
        lead, drop = plan_trim(kinds, self.max_messages)
        if drop:
            dropped = messages[lead : lead + drop]
            messages = messages[:lead] + messages[lead + drop :]
            kinds = kinds[:lead] + kinds[lead + drop :]
            seqs = seqs[:lead] + seqs[lead + drop :]
            nbytes -= sum(_approx_bytes(m) for m in dropped)
        if ttl_ms is None and previous is not None:
            ttl_ms, expires_ms = previous.ttl_ms, previous.expires_ms
        else:
            expires_ms = now_ms + ttl_ms if ttl_ms is not None else None
        return SessionEntry(
            messages=messages,
            kinds=kinds,
            metadata=metadata
            if metadata is not None
            else (previous.metadata if previous else EMPTY_METADATA),
            user_id=user_id if user_id is not None else (previous.user_id if previous else None),
            created_ms=previous.created_ms if previous else now_ms,
            updated_ms=max(now_ms, previous.updated_ms) if previous else now_ms,
            version=(previous.version if previous else 0) + 1,
            expires_ms=expires_ms,
            ttl_ms=ttl_ms,
            nbytes=entry_size(nbytes, len(messages)),
            next_seq=next_seq,
            seqs=seqs,
        )

    @staticmethod
    def _check_version(sid: str, entry: SessionEntry | None, expected: int | None) -> None:
        if expected is None:
            return
        actual = entry.version if entry is not None else 0
        if actual != expected:
            raise VersionConflict(sid, expected, actual)

    # -- primitives -------------------------------------------------------

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
        with self._lock:
            now = self._now_ms()
            previous = self._live(sid, now)
            self._check_version(sid, previous, expected_version)
            # Like Redis, a save numbers its messages after the last seq ever used.
            first = previous.next_seq if previous is not None else 0
            entry = self._build(
                batch.messages,
                batch.kinds,
                batch.nbytes,
                previous=previous,
                now_ms=now,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                seqs=tuple(range(first, first + len(batch.messages))),
                next_seq=first + len(batch.messages),
            )
            self._put(sid, entry)
            return entry.version

    def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int:
        with self._lock:
            now = self._now_ms()
            previous = self._live(sid, now)
            self._check_version(sid, previous, expected_version)
            first = previous.next_seq if previous is not None else 0
            added = tuple(range(first, first + len(batch.messages)))
            if previous is None:
                messages, kinds, nbytes, seqs = batch.messages, batch.kinds, batch.nbytes, added
            else:
                messages = previous.messages + batch.messages
                kinds = previous.kinds + batch.kinds
                nbytes = _payload_bytes(previous) + batch.nbytes
                seqs = previous.seqs + added
            entry = self._build(
                messages, kinds, nbytes, previous=previous, now_ms=now, ttl_ms=ttl_ms,
                seqs=seqs, next_seq=first + len(batch.messages),
            )
            self._put(sid, entry)
            return entry.version

    def _read(self, sid: str) -> SessionEntry:
        with self._lock:
            now = self._now_ms()
            entry = self._require(sid, now)
            if self.sliding_ttl and entry.ttl_ms is not None:
                refreshed = replace(entry, expires_ms=now + entry.ttl_ms)
                self._unindex(sid, entry)
                self._cache[sid] = refreshed
                self._index(sid, refreshed)
                entry = refreshed
            return entry

    def _load(self, sid: str, last: int | None) -> list[Message]:
        return newest(self._read(sid).messages, last)

    def _get(self, sid: str, last: int | None) -> Session:
        return self._read(sid).session(sid, last)

    def _count(self, sid: str) -> int:
        with self._lock:
            return len(self._require(sid, self._now_ms()).messages)

    def _exists(self, sid: str) -> bool:
        with self._lock:
            return self._live(sid) is not None

    def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        with self._lock:
            now = self._now_ms()
            previous = self._require(sid, now)
            merged = merge_metadata(previous.metadata, updates)
            entry = replace(
                previous,
                metadata=merged,
                version=previous.version + 1,
                updated_ms=max(now, previous.updated_ms),
            )
            self._put(sid, entry)
            return merged

    def _delete(self, sid: str) -> bool:
        with self._lock:
            entry = self._remove(sid)
            return entry is not None and (
                entry.expires_ms is None or entry.expires_ms > self._now_ms()
            )

    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page:
        with self._lock:
            now = self._now_ms()
            index = self._by_activity if user_id is None else self._by_user.get(user_id)
            if index is None:
                return Page([], None)
            ids: list[str] = []
            last_key: tuple[int, str] | None = None
            for key in self._walk(index, cursor, order):
                entry = self._cache.get(key[1])
                if entry is None or (entry.expires_ms is not None and entry.expires_ms <= now):
                    continue
                if len(ids) == limit:
                    assert last_key is not None
                    return Page(ids, encode_cursor(*last_key))
                ids.append(key[1])
                last_key = key
            return Page(ids, None)

    @staticmethod
    def _walk(index: SortedList, cursor: str | None, order: Order) -> Iterator[tuple[int, str]]:
        if order == "desc":
            if cursor is None:
                return iter(reversed(index))
            return iter(
                index.irange(maximum=decode_cursor(cursor), inclusive=(True, False), reverse=True)
            )
        if cursor is None:
            return iter(index)
        return iter(index.irange(minimum=decode_cursor(cursor), inclusive=(False, True)))

    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        with self._lock:
            now = self._now_ms()
            source = self._require(src, now)
            if self._live(dst, now) is not None:
                raise SessionExists(dst)
            ttl = ttl_ms or self.default_ttl_ms or source.ttl_ms
            entry = replace(
                source,
                created_ms=now,
                updated_ms=now,
                version=1,
                ttl_ms=ttl,
                expires_ms=now + ttl if ttl is not None else None,
            )
            self._put(dst, entry)
            return entry.version

    # -- used by TieredStore ------------------------------------------------

    def peek(self, sid: str) -> SessionEntry | None:
        """The live entry for ``sid`` without validation (``None`` on a miss)."""
        with self._lock:
            return self._live(sid)

    def put_entry(self, sid: str, entry: SessionEntry) -> bool:
        """Cache a snapshot taken from another tier; ``False`` if it cannot fit."""
        with self._lock:
            if entry.nbytes > self.max_bytes:
                self._remove(sid)
                return False
            self._put(sid, entry)
            return True

    def replace_if(self, sid: str, expected: SessionEntry, entry: SessionEntry) -> bool:
        """Swap ``expected`` for ``entry`` only if ``expected`` is still cached."""
        with self._lock:
            if self._cache.get(sid) is not expected or entry.nbytes > self.max_bytes:
                return False
            self._put(sid, entry)
            return True

    def invalidate(self, sid: str, older_than: tuple[int, int] | None = None) -> bool:
        """Drop ``sid`` (only if its ``(created_ms, version)`` is older, when given).

        With ``older_than`` (an invalidation from another process) a drop
        counts as an applied invalidation.
        """
        with self._lock:
            entry = self._cache.get(sid)
            if entry is None:
                return False
            if older_than is not None:
                if (entry.created_ms, entry.version) >= older_than:
                    return False
                self.invalidated += 1
                metrics.invalidation_applied()
            self._remove(sid)
            return True

    def clear(self) -> None:
        """Drop every cached session (a flush, in the counters, when there were any)."""
        with self._lock:
            if len(self._cache):
                self.flushes += 1
                metrics.memory_flushed()
            self._cache = _EvictingLRU(self.max_bytes, self._forget)
            self._by_activity.clear()
            self._by_user.clear()
            self._by_expiry.clear()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._cache),
                "bytes": int(self._cache.currsize),
                "max_bytes": self.max_bytes,
                "evictions": self.evictions,
                "invalidated": self.invalidated,
                "flushes": self.flushes,
            }


def _approx_bytes(message: Message) -> int:
    return resident_nbytes(encode_json(message))


def _payload_bytes(entry: SessionEntry) -> int:
    return max(entry.nbytes - _ENTRY_OVERHEAD - len(entry.messages) * MESSAGE_OVERHEAD, 0)
