"""``TieredStore``: memory → Redis → archive behind the one store contract.

Reads go memory → Redis → archive and promote what they find: a Redis hit
fills memory, an archive hit is copied back into Redis (newest window,
remaining TTL) and memory. Writes go to Redis in one atomic script that also
announces the new ``(created_ms, version)`` to every other process's memory
tier (see :mod:`tieredstore.coherence`); with ``durability="write_through"``
the same messages are then committed to the archive, by seq, before the call
returns.

Sequence numbers only grow within a session, so a write mirrored into the
archive lands in the same place whatever order concurrent mirrors commit in.

Any tier may be absent: without Redis the archive is the primary store (the
embedded default: memory + SQLite); without an archive Redis is.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tieredstore.base import BaseStore
from tieredstore.codec import decode_cursor, encode_cursor, encode_json
from tieredstore.coherence import Generation, InvalidationListener, SeenGenerations
from tieredstore.core import Batch, Order, TTLLike, check_limit, prepare_batch, to_ms
from tieredstore.errors import (
    BackendUnavailable,
    InvalidInput,
    SessionExists,
    SessionNotFound,
    VersionConflict,
)
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.policy import message_kind, plan_trim
from tieredstore.tiers.memory import MemoryStore, SessionEntry, entry_size
from tieredstore.tiers.transfer import Snapshot, WriteReceipt

if TYPE_CHECKING:
    from tieredstore.tiers.archive import ArchiveStore
    from tieredstore.tiers.redis import RedisStore

__all__ = ["Durability", "HistoryPage", "TieredStore"]

log = logging.getLogger(__name__)

Durability = Literal["archive", "write_through"]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Messages of a full history, oldest first, with their seqs.

    Pass ``next_before`` as ``before=`` to get the page of older messages;
    it is ``None`` when the start of the history has been reached.
    """

    messages: list[Message]
    seqs: list[int]
    next_before: int | None


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    promotions: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "promotions": self.promotions,
            "errors": self.errors,
        }


def default_data_dir() -> Path:
    """Where the embedded SQLite archive lives (``TIEREDSTORE_DATA_DIR`` overrides)."""
    configured = os.environ.get("TIEREDSTORE_DATA_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tieredstore"


def embedded_archive(**options: Any) -> ArchiveStore:
    """The embedded default archive: SQLite in :func:`default_data_dir`, migrated."""
    from tieredstore.migration import migrate
    from tieredstore.tiers.archive import ArchiveStore

    data_dir = default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{data_dir / 'archive.db'}"
    migrate(url)
    return ArchiveStore.from_url(url, **options)


class TieredStore(BaseStore):
    """The three tiers behind one contract.

    ``memory``: a :class:`MemoryStore` used as the per-process LRU tier (or
    ``None``). ``redis``/``archive``: the hot and durable tiers, each optional.
    ``stale_after``: the most a memory entry may lag other processes' writes
    while the invalidation channel is down. ``durability``: ``"archive"``
    (writes go to Redis; the worker archives idle sessions) or
    ``"write_through"`` (each write is also committed to the archive).
    """

    tier = "tiered"

    def __init__(
        self,
        *,
        memory: MemoryStore | None = None,
        redis: RedisStore | None = None,
        archive: ArchiveStore | None = None,
        durability: Durability = "archive",
        stale_after: float = 1.0,
        listen: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if durability not in ("archive", "write_through"):
            raise InvalidInput(
                f"durability must be 'archive' or 'write_through', got {durability!r}"
            )
        if redis is None and archive is None:
            archive = embedded_archive(**{k: v for k, v in options.items() if k != "max_messages"})
            memory = memory or MemoryStore()
        self.memory = memory
        self.redis = redis
        self.archive = archive
        self.durability: Durability = durability
        self.stale_after = stale_after
        self._stats = {"memory": TierStats(), "redis": TierStats(), "archive": TierStats()}
        self._seen = SeenGenerations()
        self._dirty_in_redis: set[str] = set()
        self._dirty_lock = threading.Lock()
        self.invalidations_sent = 0
        self.listener: InvalidationListener | None = None
        if memory is not None and redis is not None and listen:
            self.listener = InvalidationListener(
                redis.client,
                redis.invalidation_channel,
                on_invalidate=self._on_invalidate,
                on_resubscribe=self._on_resubscribe,
            )
            self.listener.start()

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        memory_max_bytes: int | None = 64 * 2**20,
        default_ttl: TTLLike | None = None,
        max_messages: int | None = None,
        durability: Durability = "archive",
        migrate: bool = False,
        **options: Any,
    ) -> TieredStore:
        """Build the tiers from URLs; a ``None`` URL leaves that tier out.

        ``memory_max_bytes=None`` disables the memory tier. ``migrate=True``
        upgrades the archive schema first (the embedded SQLite default always
        does).
        """
        memory = MemoryStore(max_bytes=memory_max_bytes) if memory_max_bytes else None
        redis_store = None
        archive_store = None
        if redis_url:
            from tieredstore.tiers.redis import RedisStore

            redis_store = RedisStore.from_url(
                redis_url,
                namespace=namespace,
                prefix=prefix,
                default_ttl=default_ttl,
                max_messages=max_messages,
                spill=durability == "archive" and bool(database_url),
            )
        if database_url:
            from tieredstore.tiers.archive import ArchiveStore

            if migrate:
                from tieredstore.migration import migrate as run_migrations

                run_migrations(database_url)
            archive_store = ArchiveStore.from_url(
                database_url,
                namespace=namespace,
                default_ttl=default_ttl,
                max_messages=None if redis_url else max_messages,
            )
        return cls(
            memory=memory,
            redis=redis_store,
            archive=archive_store,
            durability=durability,
            default_ttl=default_ttl,
            max_messages=max_messages,
            **options,
        )

    @classmethod
    def from_clients(
        cls,
        *,
        redis: Any | None = None,
        engine: Any | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        memory_max_bytes: int | None = 64 * 2**20,
        durability: Durability = "archive",
        max_messages: int | None = None,
        clock: Any | None = None,
        **options: Any,
    ) -> TieredStore:
        """Build the tiers over an existing ``redis.Redis`` client and SQLAlchemy engine.

        The caller keeps ownership of both (``close()`` leaves them open).
        ``clock`` drives the memory and archive tiers; Redis keeps its own time.
        """
        memory = MemoryStore(max_bytes=memory_max_bytes, clock=clock) if memory_max_bytes else None
        redis_store = None
        archive_store = None
        if redis is not None:
            from tieredstore.tiers.redis import RedisStore

            redis_store = RedisStore(
                redis,
                namespace=namespace,
                prefix=prefix,
                max_messages=max_messages,
                spill=durability == "archive" and engine is not None,
            )
        if engine is not None:
            from tieredstore.tiers.archive import ArchiveStore

            archive_store = ArchiveStore(
                engine,
                namespace=namespace,
                clock=clock,
                max_messages=None if redis is not None else max_messages,
            )
        return cls(
            memory=memory,
            redis=redis_store,
            archive=archive_store,
            durability=durability,
            max_messages=max_messages,
            clock=clock,
            **options,
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> TieredStore:
        """Build from ``TIEREDSTORE_*`` environment variables (see the README table).

        With neither ``TIEREDSTORE_REDIS_URL`` nor ``TIEREDSTORE_DATABASE_URL``
        set, this is the embedded default: memory + SQLite in the data dir.
        """
        env = os.environ
        settings: dict[str, Any] = {
            "redis_url": env.get("TIEREDSTORE_REDIS_URL") or None,
            "database_url": env.get("TIEREDSTORE_DATABASE_URL") or None,
            "namespace": env.get("TIEREDSTORE_NAMESPACE", "default"),
            "prefix": env.get("TIEREDSTORE_PREFIX", "ts"),
            "durability": env.get("TIEREDSTORE_DURABILITY", "archive"),
            "migrate": env.get("TIEREDSTORE_MIGRATE", "0").lower() in ("1", "true", "yes"),
        }
        if "TIEREDSTORE_MEMORY_MAX_BYTES" in env:
            settings["memory_max_bytes"] = int(env["TIEREDSTORE_MEMORY_MAX_BYTES"]) or None
        if env.get("TIEREDSTORE_DEFAULT_TTL"):
            settings["default_ttl"] = timedelta(seconds=float(env["TIEREDSTORE_DEFAULT_TTL"]))
        if env.get("TIEREDSTORE_MAX_MESSAGES"):
            settings["max_messages"] = int(env["TIEREDSTORE_MAX_MESSAGES"])
        if env.get("TIEREDSTORE_STALE_AFTER"):
            settings["stale_after"] = float(env["TIEREDSTORE_STALE_AFTER"])
        settings.update(overrides)
        if not settings["redis_url"] and not settings["database_url"]:
            settings["database_url"] = f"sqlite:///{default_data_dir() / 'archive.db'}"
            settings["migrate"] = True
            default_data_dir().mkdir(parents=True, exist_ok=True)
        return cls.from_url(**settings)

    @property
    def _hot(self) -> RedisStore:
        if self.redis is None:
            raise RuntimeError("this TieredStore has no Redis tier")
        return self.redis

    @property
    def _cold(self) -> ArchiveStore:
        if self.archive is None:
            raise RuntimeError("this TieredStore has no archive tier")
        return self.archive

    # -- memory tier helpers ----------------------------------------------------

    def _on_invalidate(self, sid: str, generation: Generation) -> None:
        self._seen.note(sid, generation)
        if self.memory is not None:
            self.memory.invalidate(sid, older_than=generation)

    def _on_resubscribe(self) -> None:
        if self.memory is not None:
            self.memory.clear()

    def _memory_get(self, sid: str) -> SessionEntry | None:
        if self.memory is None:
            return None
        entry = self.memory.peek(sid)
        if entry is None:
            return None
        if (
            self.listener is not None
            and not self.listener.healthy
            and (time.monotonic() - entry.cached_at > self.stale_after)
        ):
            self.memory.invalidate(sid)
            return None
        return entry

    def _memory_fill(self, snapshot: Snapshot) -> None:
        if self.memory is None or not snapshot.complete:
            return
        if self._seen.superseded(snapshot.sid, (snapshot.created_ms, snapshot.version)):
            return
        self.memory.put_entry(
            snapshot.sid,
            SessionEntry(
                messages=snapshot.messages,
                kinds=snapshot.kinds,
                metadata=snapshot.metadata,
                user_id=snapshot.user_id,
                created_ms=snapshot.created_ms,
                updated_ms=snapshot.updated_ms,
                version=snapshot.version,
                expires_ms=snapshot.expires_ms,
                ttl_ms=snapshot.ttl_ms,
                nbytes=entry_size(snapshot.nbytes, len(snapshot.messages)),
                cached_at=time.monotonic(),
                next_seq=snapshot.next_seq,
            ),
        )

    def _memory_after_append(
        self, sid: str, batch: Batch, receipt: WriteReceipt, entry: SessionEntry | None
    ) -> None:
        """Apply our own append locally when we held the state it was made on.

        ``entry`` is what memory held before the write: our own invalidation
        may already have dropped it by the time Redis replies.
        """
        if self.memory is None or entry is None:
            return
        if (entry.created_ms, entry.version) != (receipt.created_ms, receipt.version - 1):
            self.memory.invalidate(sid)
            return
        messages = entry.messages + batch.messages
        kinds = entry.kinds + batch.kinds
        lead, drop = plan_trim(kinds, self.max_messages)
        if drop:
            messages = messages[:lead] + messages[lead + drop :]
            kinds = kinds[:lead] + kinds[lead + drop :]
        updated = SessionEntry(
            messages=messages,
            kinds=kinds,
            metadata=entry.metadata,
            user_id=entry.user_id,
            created_ms=entry.created_ms,
            updated_ms=receipt.updated_ms,
            version=receipt.version,
            expires_ms=receipt.expires_ms,
            ttl_ms=receipt.ttl_ms,
            nbytes=entry.nbytes + batch.nbytes + 96 * len(batch),
            cached_at=entry.cached_at,
            next_seq=receipt.next_seq,
        )
        generation = (receipt.created_ms, receipt.version)
        if self._seen.superseded(sid, generation):
            return
        if not self.memory.replace_if(sid, entry, updated) and self.memory.peek(sid) is None:
            self.memory.put_entry(sid, updated)
        if self._seen.superseded(sid, generation):
            self.memory.invalidate(sid)

    def _slide(self, sid: str, entry: SessionEntry) -> SessionEntry:
        """Extend the primary's expiry on a memory hit, at most every half TTL."""
        assert entry.ttl_ms is not None and entry.expires_ms is not None
        refreshed_ms = entry.expires_ms - entry.ttl_ms
        if to_ms(self.clock()) - refreshed_ms < entry.ttl_ms // 2:
            return entry
        primary: RedisStore | ArchiveStore = self.redis if self.redis is not None else self._cold
        snap = primary.snapshot(sid, 0, refresh=True)
        if snap is None or self.memory is None:
            return entry
        slid = dataclasses.replace(entry, expires_ms=snap.expires_ms)
        self.memory.replace_if(sid, entry, slid)
        return slid

    def _memory_forget(self, sid: str) -> None:
        if self.memory is not None:
            self.memory.invalidate(sid)

    # -- reading ------------------------------------------------------------------

    def _redis_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call Redis; on success after an outage, first purge sessions written meanwhile."""
        result = fn(*args, **kwargs)
        if self._dirty_in_redis:
            self._purge_dirty()
        return result

    def _purge_dirty(self) -> None:
        with self._dirty_lock:
            dirty, self._dirty_in_redis = self._dirty_in_redis, set()
        for sid in dirty:
            try:
                self._hot._delete(sid)
            except BackendUnavailable:
                with self._dirty_lock:
                    self._dirty_in_redis.add(sid)

    def _read(self, sid: str, last: int | None) -> tuple[Snapshot | SessionEntry, str]:
        entry = self._memory_get(sid)
        if entry is not None:
            self._stats["memory"].hits += 1
            if self.sliding_ttl and entry.ttl_ms is not None:
                entry = self._slide(sid, entry)
            return entry, "memory"
        if self.memory is not None:
            self._stats["memory"].misses += 1
        redis_down: BackendUnavailable | None = None
        if self.redis is not None:
            fetch_last = None if self.memory is not None else last
            try:
                snap = self._hot.snapshot(sid, fetch_last, refresh=self.sliding_ttl)
            except BackendUnavailable as exc:
                self._stats["redis"].errors += 1
                redis_down = exc
                snap = None
            if snap is not None:
                self._stats["redis"].hits += 1
                self._memory_fill(snap)
                return snap, "redis"
            if redis_down is None:
                self._stats["redis"].misses += 1
        if self.archive is not None:
            try:
                snap = self._archive_snapshot(sid, last)
            except BackendUnavailable:
                self._stats["archive"].errors += 1
                raise
            if snap is not None:
                self._stats["archive"].hits += 1
                if self.redis is not None and redis_down is None:
                    self._promote(snap)
                self._memory_fill(snap)
                return snap, "archive"
            self._stats["archive"].misses += 1
        if redis_down is not None:
            raise redis_down
        raise SessionNotFound(sid)

    def _archive_snapshot(self, sid: str, last: int | None) -> Snapshot | None:
        """Read from the archive: all of it when it is the primary, else the hot window."""
        if self.redis is None:
            return self._cold.snapshot(
                sid, None if self.memory is not None else last, refresh=self.sliding_ttl
            )
        return self._archive_window(sid)

    def _archive_window(self, sid: str) -> Snapshot | None:
        """The newest window of an archived history by the trim policy (system prompt kept)."""
        window = self.max_messages
        tail: Snapshot | None = self._cold.snapshot(sid, window)
        if tail is None or window is None or tail.complete:
            return tail
        head = self._cold.history_page(sid, tail.base_seq + window, window) or []
        by_seq = {seq: message for seq, message in head}
        by_seq.update(zip(tail.seqs, tail.messages, strict=True))
        seqs = sorted(by_seq)
        kinds = "".join(message_kind(by_seq[seq]) for seq in seqs)
        lead, drop = plan_trim(kinds, window)
        keep = seqs[:lead] + seqs[lead + drop :]
        messages = tuple(by_seq[seq] for seq in keep)
        return dataclasses.replace(
            tail,
            messages=messages,
            seqs=tuple(keep),
            kinds="".join(message_kind(m) for m in messages),
            message_count=len(messages),
            nbytes=sum(len(encode_json(m)) for m in messages),
        )

    def _promote(self, snap: Snapshot) -> None:
        try:
            if self._hot.restore(snap):
                self._stats["archive"].promotions += 1
        except BackendUnavailable:
            self._stats["redis"].errors += 1

    def _get(self, sid: str, last: int | None) -> Session:
        found, tier = self._read(sid, last)
        if isinstance(found, SessionEntry):
            return found.session(sid, last, tier)
        return found.session(tier, last)  # type: ignore[arg-type]

    def _load(self, sid: str, last: int | None) -> builtins.list[Message]:
        found, _ = self._read(sid, last)
        messages = found.messages
        if last is None:
            return list(messages)
        return list(messages[-last:]) if last else []

    def _count(self, sid: str) -> int:
        found, _ = self._read(sid, 0)
        return found.message_count if isinstance(found, Snapshot) else len(found.messages)

    def _exists(self, sid: str) -> bool:
        try:
            self._read(sid, 0)
        except SessionNotFound:
            return False
        return True

    # -- writing ------------------------------------------------------------------

    def _ensure_hot(self, sid: str) -> None:
        """Copy a session that only the archive holds back into Redis before writing."""
        if self.archive is None:
            return
        snap = self._archive_window(sid)
        if snap is not None:
            self._promote(snap)

    def _write_redis(self, op: str, sid: str, **kwargs: Any) -> Any:
        """Run a Redis write that must not silently shadow an archived session."""
        result = self._redis_call(
            getattr(self._hot, op), sid, create=self.archive is None, **kwargs
        )
        if result is None:
            self._ensure_hot(sid)
            result = self._redis_call(getattr(self._hot, op), sid, create=True, **kwargs)
        self.invalidations_sent += 1
        return result

    def _mark_dirty(self, sid: str) -> None:
        with self._dirty_lock:
            self._dirty_in_redis.add(sid)

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
        if self.redis is None:
            receipt = self._cold.write_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
            )
            self._memory_forget(sid)
            return int(receipt.version)
        try:
            receipt = self._write_redis(
                "write_save",
                sid,
                batch=batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
            )
        except BackendUnavailable:
            if self.durability != "write_through" or self.archive is None:
                raise
            receipt = self._cold.write_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
            )
            self._mark_dirty(sid)
            self._memory_forget(sid)
            return int(receipt.version)
        self._memory_forget(sid)
        if self.durability == "write_through" and self.archive is not None:
            self._mirror(
                sid,
                self._cold.mirror(
                    sid, batch, receipt, replace=True, metadata=metadata, user_id=user_id
                ),
            )
        return int(receipt.version)

    def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int:
        if self.redis is None:
            receipt = self._cold.write_append(
                sid, batch, ttl_ms=ttl_ms, expected_version=expected_version
            )
            self._memory_forget(sid)
            return int(receipt.version)
        before = self.memory.peek(sid) if self.memory is not None else None
        try:
            receipt = self._write_redis(
                "write_append", sid, batch=batch, ttl_ms=ttl_ms, expected_version=expected_version
            )
        except BackendUnavailable:
            if self.durability != "write_through" or self.archive is None:
                raise
            receipt = self._cold.write_append(
                sid, batch, ttl_ms=ttl_ms, expected_version=expected_version
            )
            self._mark_dirty(sid)
            self._memory_forget(sid)
            return int(receipt.version)
        self._memory_after_append(sid, batch, receipt, before)
        if self.durability == "write_through" and self.archive is not None:
            self._mirror(
                sid,
                self._cold.mirror(sid, batch, receipt, replace=False, metadata=None, user_id=None),
            )
        return int(receipt.version)

    def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        if self.redis is None:
            merged = self._cold._merge_metadata(sid, updates)
            self._memory_forget(sid)
            return merged
        if not self._exists_in_redis(sid):
            self._ensure_hot(sid)
        merged, receipt = self._redis_call(self._hot.write_merge_metadata, sid, updates)
        self.invalidations_sent += 1
        self._memory_forget(sid)
        if self.durability == "write_through" and self.archive is not None:
            self._mirror(sid, self._cold.mirror_metadata(sid, merged, receipt))
        return merged  # type: ignore[no-any-return]

    def _mirror(self, sid: str, applied: bool) -> None:
        """Settle a write-through mirror the archive could not apply on its own.

        Concurrent writers' mirrors may reach the archive out of order; one
        that finds no session yet (or a newer version) is settled by copying
        the session's current Redis state, which includes the write.
        """
        if applied:
            return
        snap = self._hot.snapshot(sid, None)
        if snap is not None:
            self._cold.restore(snap)

    def _exists_in_redis(self, sid: str) -> bool:
        return bool(self._redis_call(self._hot._exists, sid))

    def _delete(self, sid: str) -> bool:
        existed = False
        if self.redis is not None:
            existed = bool(self._redis_call(self._hot._delete, sid)) or existed
            self.invalidations_sent += 1
        if self.archive is not None:
            existed = bool(self._cold._delete(sid)) or existed
        self._memory_forget(sid)
        return existed

    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        session = self._get(src, None)
        history = self.history_all(src) if self.archive is not None else session.messages
        ttl = ttl_ms or self.default_ttl_ms
        if ttl is None and session.expires_at is not None:
            ttl = max(int((session.expires_at.timestamp() - time.time()) * 1000), 1)
        try:
            return self._save(
                dst,
                prepare_batch(history, self.limits),
                ttl_ms=ttl,
                metadata=session.metadata,
                user_id=session.user_id,
                expected_version=0,
            )
        except VersionConflict:
            raise SessionExists(dst) from None

    # -- listing ------------------------------------------------------------------

    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page:
        if self.redis is None:
            return self._cold._list(user_id, limit, cursor, order)
        if self.archive is None:
            return self._hot._list(user_id, limit, cursor, order)
        return self._merged_list(user_id, limit, cursor, order)

    def _merged_list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Page:
        """Merge the hot and archive indexes; a session in both counts where Redis has it."""
        position = decode_cursor(cursor) if cursor is not None else None
        hot = self._hot.list_keys(user_id, limit, position, order)
        cold: builtins.list[tuple[int, str]] = []
        cold_position = position
        while True:
            batch = self._cold.list_keys(user_id, limit, cold_position, order)
            if not batch:
                break
            hot_flags = self._hot.exists_many([sid for _, sid in batch])
            cold.extend(key for key, is_hot in zip(batch, hot_flags, strict=True) if not is_hot)
            if len(cold) >= limit or len(batch) < limit:
                break
            cold_position = batch[-1]
        merged = sorted(set(hot) | set(cold), reverse=order == "desc")
        page = merged[:limit]
        more = len(merged) > limit or len(hot) == limit or len(cold) >= limit
        next_cursor = encode_cursor(*page[-1]) if page and more else None
        return Page([sid for _, sid in page], next_cursor)

    # -- full history -------------------------------------------------------------

    def history(
        self, session_id: str, /, *, before: int | None = None, limit: int = 100
    ) -> HistoryPage:
        """A page of the whole history (archive included), oldest first.

        ``before`` is a seq from a previous page's ``next_before``. Use it to
        page back beyond the hot window that ``load`` returns.
        """
        sid = self._sid(session_id)
        check_limit(limit, maximum=100_000)
        pairs: dict[int, Message] = {}
        found = False
        for tier in (self.redis, self.archive):
            if tier is None:
                continue
            try:
                part = tier.history_page(sid, before, limit)
            except BackendUnavailable:
                continue
            if part is not None:
                found = True
                for seq, message in part:
                    pairs.setdefault(seq, message)
        if not found:
            if self.redis is None and self.archive is None and self.memory is not None:
                messages = self.memory.load(sid)
                return HistoryPage(messages, list(range(len(messages))), None)
            raise SessionNotFound(sid)
        seqs = sorted(pairs)[-limit:]
        next_before = seqs[0] if seqs and (len(pairs) >= limit) else None
        return HistoryPage([pairs[s] for s in seqs], seqs, next_before)

    def history_all(self, session_id: str, /) -> builtins.list[Message]:
        """Every message of the session, archive included, oldest first."""
        pages: builtins.list[builtins.list[Message]] = []
        before: int | None = None
        while True:
            page = self.history(session_id, before=before, limit=1000)
            pages.append(page.messages)
            if page.next_before is None:
                break
            before = page.next_before
        return [message for page in reversed(pages) for message in page]

    def load(
        self, session_id: str, /, *, last: int | None = None, full: bool = False
    ) -> builtins.list[Message]:
        """The hot window (or the newest ``last``); ``full=True`` the whole history."""
        if full:
            messages = self.history_all(session_id)
            return messages[-last:] if last else ([] if last == 0 else messages)
        return super().load(session_id, last=last)

    # -- operations ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-tier hits, misses, promotions and errors, and coherence counters."""
        out: dict[str, Any] = {name: tier.as_dict() for name, tier in self._stats.items()}
        if self.memory is not None:
            out["memory"].update(self.memory.stats())
        out["invalidations_sent"] = self.invalidations_sent
        listener = self.listener
        out["invalidations_received"] = listener.received if listener else 0
        out["invalidation_channel_healthy"] = listener.healthy if listener else None
        out["invalidation_disconnects"] = listener.disconnects if listener else 0
        out["durability"] = self.durability
        out["tiers"] = [
            name
            for name, tier in (
                ("memory", self.memory),
                ("redis", self.redis),
                ("archive", self.archive),
            )
            if tier is not None
        ]
        return out

    def _close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        for tier in (self.redis, self.archive, self.memory):
            if tier is not None:
                tier.close()
