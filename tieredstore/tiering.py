"""The I/O-free core of ``TieredStore`` and ``AsyncTieredStore``: every tier decision, once.

:class:`TieredCore` decides where a read is served from, what gets promoted,
where a write goes and what happens when a tier is down. Each operation is a
plan (see :mod:`tieredstore.plans`) that yields ``Op("redis", ...)`` and
``Op("archive", ...)`` — calls of the Redis and archive tiers' methods — and
uses the memory tier directly (it never blocks). ``TieredStore`` runs the
plans against ``RedisStore``/``ArchiveStore``; ``AsyncTieredStore`` awaits
the same calls on ``AsyncRedisStore``/``AsyncArchiveStore``, whose methods
have the same names and signatures.

:class:`tieredstore.tiered_shell.TieredShell` holds what both shells share
besides the plans: construction, statistics and the choice of lock.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tieredstore import instrumentation, metrics
from tieredstore.codec import decode_cursor, encode_cursor, encode_json, resident_nbytes
from tieredstore.coherence import Generation, SeenGenerations
from tieredstore.config import Limits
from tieredstore.core import (
    Batch,
    Clock,
    Order,
    check_last,
    check_limit,
    check_session_id,
    prepare_batch,
    to_ms,
)
from tieredstore.errors import (
    BackendUnavailable,
    InvalidInput,
    SessionExists,
    SessionNotFound,
    VersionConflict,
)
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.plans import Op, Plan
from tieredstore.policy import message_kind, plan_trim
from tieredstore.reconciling import Reconciler
from tieredstore.reconciling import archive_op as _archive
from tieredstore.reconciling import redis_op as _redis
from tieredstore.tiers.memory import (
    MESSAGE_OVERHEAD,
    MemoryStore,
    SessionEntry,
    entry_size,
    newest,
)
from tieredstore.tiers.transfer import (
    HistoryPart,
    SessionFenced,
    Snapshot,
    WriteReceipt,
)

__all__ = [
    "Durability",
    "HistoryPage",
    "ListenerStatus",
    "TierStats",
    "TieredCore",
]

Durability = Literal["archive", "write_through"]

_ATTEMPTS = 8
"""How often a call retries a session that moves between tiers under it
(archived and evicted by the worker, fenced for reconciliation)."""


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


class ListenerStatus(Protocol):
    """What the core reads from an invalidation listener (thread or task)."""

    @property
    def healthy(self) -> bool: ...

    @property
    def received(self) -> int: ...

    @property
    def disconnects(self) -> int: ...


def _kept_moving(sid: str) -> BackendUnavailable:
    return BackendUnavailable(
        "redis", f"session {sid!r} kept moving between tiers during the write; retry"
    )


class TieredCore(Reconciler):
    """Every decision of the tiered store, as plans over the Redis and archive tiers.

    ``memory`` is used directly; ``has_redis``/``has_archive`` say which of
    the other two exist. ``listener`` (set by the shell) reports the health
    of the invalidation channel.
    """

    def __init__(
        self,
        *,
        memory: MemoryStore | None,
        has_redis: bool,
        has_archive: bool,
        durability: Durability,
        stale_after: float,
        max_messages: int | None,
        sliding_ttl: bool,
        default_ttl_ms: int | None,
        limits: Limits,
        clock: Clock,
    ) -> None:
        if durability not in ("archive", "write_through"):
            raise InvalidInput(
                f"durability must be 'archive' or 'write_through', got {durability!r}"
            )
        if isinstance(stale_after, bool) or not isinstance(stale_after, int | float) or not (
            0 <= stale_after <= 365 * 86_400
        ):
            raise InvalidInput(f"stale_after must be a number of seconds, got {stale_after!r}")
        self.memory = memory
        self.has_redis = has_redis
        self.has_archive = has_archive
        self.durability: Durability = durability
        self.stale_after = stale_after
        self.max_messages = max_messages
        self.sliding_ttl = sliding_ttl
        self.default_ttl_ms = default_ttl_ms
        self.limits = limits
        self.clock = clock
        self.stats = {"memory": TierStats(), "redis": TierStats(), "archive": TierStats()}
        metrics.track_tiers(self, self.stats)  # exported at scrape time, no cost per read
        self.seen = SeenGenerations()
        self._init_reconciler()
        self.invalidations_sent = 0
        self.listener: ListenerStatus | None = None

    @property
    def write_through(self) -> bool:
        return self.durability == "write_through" and self.has_archive

    # -- memory tier (no I/O) -----------------------------------------------------

    def on_invalidate(self, sid: str, generation: Generation) -> None:
        self.seen.note(sid, generation)
        if self.memory is not None:
            self.memory.invalidate(sid, older_than=generation)

    def on_resubscribe(self) -> None:
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
            and time.monotonic() - entry.cached_at > self.stale_after
            and not self.listener.healthy
        ):
            self.memory.invalidate(sid)
            return None
        return entry

    def load_now_or_plan(
        self, sid: Any, last: Any, full: bool
    ) -> list[Message] | Plan[list[Message]]:
        """A ``load``'s answer when the memory tier alone has it, with no plan and
        no I/O (counted as a hit), else the :meth:`load` plan. The plan is needed
        on a miss, for a sliding TTL to extend, for ``full``, while metrics are
        observed (they wrap plans), and for arguments it must validate.

        A hit needs no validation of ``sid``: only valid ids are ever cached.
        """
        if (
            not full
            and type(sid) is str
            and (last is None or (type(last) is int and last >= 0))
            and instrumentation.observer is None
        ):
            entry = self._memory_get(sid)
            if entry is not None and not (self.sliding_ttl and entry.ttl_ms is not None):
                self.stats["memory"].hits += 1
                return newest(entry.messages, last)
        return self.load(check_session_id(sid, self.limits), check_last(last), full)

    def _memory_fill(self, snapshot: Snapshot) -> None:
        if self.memory is None or not snapshot.complete:
            return
        if self.seen.superseded(snapshot.sid, (snapshot.created_ms, snapshot.version)):
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
                seqs=snapshot.seqs,
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
        seqs = entry.seqs + tuple(range(receipt.first_seq, receipt.next_seq))
        if len(seqs) != len(messages):  # an entry without seqs stays without
            seqs = ()
        lead, drop = plan_trim(kinds, self.max_messages)
        if drop:
            messages = messages[:lead] + messages[lead + drop :]
            kinds = kinds[:lead] + kinds[lead + drop :]
            seqs = seqs[:lead] + seqs[lead + drop :]
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
            nbytes=entry.nbytes + batch.nbytes + MESSAGE_OVERHEAD * len(batch),
            cached_at=entry.cached_at,
            next_seq=receipt.next_seq,
            seqs=seqs,
        )
        generation = (receipt.created_ms, receipt.version)
        if self.seen.superseded(sid, generation):
            return
        if not self.memory.replace_if(sid, entry, updated) and self.memory.peek(sid) is None:
            self.memory.put_entry(sid, updated)
        if self.seen.superseded(sid, generation):
            self.memory.invalidate(sid)

    def _memory_forget(self, sid: str) -> None:
        if self.memory is not None:
            self.memory.invalidate(sid)

    def _slide(self, sid: str, entry: SessionEntry) -> Plan[SessionEntry]:
        """Extend the primary's expiry on a memory hit, at most every half TTL."""
        assert entry.ttl_ms is not None and entry.expires_ms is not None
        refreshed_ms = entry.expires_ms - entry.ttl_ms
        if to_ms(self.clock()) - refreshed_ms < entry.ttl_ms // 2:
            return entry
        primary = "redis" if self.has_redis else "archive"
        snap = yield Op(primary, "snapshot", (sid, 0), {"refresh": True})
        if snap is None or self.memory is None:
            return entry
        slid = dataclasses.replace(entry, expires_ms=snap.expires_ms)
        self.memory.replace_if(sid, entry, slid)
        return slid

    # -- Redis calls ------------------------------------------------------------------

    def _archive_takes_over(self, exc: BackendUnavailable) -> bool:
        """Whether the archive serves a call that failed with ``exc`` (write_through,
        Redis unreachable) instead of the error reaching the caller."""
        return self.write_through and exc.backend == "redis"

    def _redis_call(self, name: str, *args: Any, **kwargs: Any) -> Plan[Any]:
        """Call Redis; after an outage, first reconcile what the archive took meanwhile."""
        swept = yield from self._before_redis()
        try:
            result = yield _redis(name, *args, **kwargs)
        except BackendUnavailable:
            self.stats["redis"].errors += 1
            self._note_redis_down()
            raise
        self._note_redis_up(swept)
        return result

    # -- reading ------------------------------------------------------------------------

    def _read(
        self,
        sid: str,
        last: int | None,
        redis_down: BackendUnavailable | None = None,
        *,
        missed: bool = False,
    ) -> Plan[tuple[Snapshot | SessionEntry, str]]:
        """The session from the first tier holding it (promoting it upward).

        Redis is not asked again when this read just found it down
        (``redis_down``) or found the session missing there (``missed``).
        """
        entry = self._memory_get(sid)
        if entry is not None:
            self.stats["memory"].hits += 1
            if self.sliding_ttl and entry.ttl_ms is not None:
                entry = yield from self._slide(sid, entry)
            return entry, "memory"
        if self.memory is not None:
            self.stats["memory"].misses += 1
        fenced = False
        if missed:
            self.stats["redis"].misses += 1
        elif self.has_redis and redis_down is None:
            fetch_last = None if self.memory is not None else last
            snap = None
            for _ in range(_ATTEMPTS):
                try:
                    snap = yield from self._redis_call(
                        "snapshot", sid, fetch_last, refresh=self.sliding_ttl
                    )
                except BackendUnavailable as exc:
                    redis_down = exc
                except SessionFenced:
                    fenced = True
                    yield from self.reconcile(sid)
                    continue
                break
            if snap is not None:
                self.stats["redis"].hits += 1
                self._memory_fill(snap)
                return snap, "redis"
            if redis_down is None:
                self.stats["redis"].misses += 1
        if self.has_archive:
            try:
                snap = yield from self._archive_snapshot(sid, last)
            except BackendUnavailable:
                self.stats["archive"].errors += 1
                raise
            if snap is not None:
                self.stats["archive"].hits += 1
                promoted = 1
                if self.has_redis and redis_down is None and not fenced:
                    promoted = yield from self._promote(snap)
                if promoted >= 0:
                    self._memory_fill(snap)
                return snap, "archive"
            self.stats["archive"].misses += 1
        if redis_down is not None:
            raise redis_down
        raise SessionNotFound(sid)

    def _archive_snapshot(self, sid: str, last: int | None) -> Plan[Snapshot | None]:
        """Read from the archive: all of it when it is the primary, else the hot window."""
        if not self.has_redis:
            fetch_last = None if self.memory is not None else last
            snap: Snapshot | None = yield _archive(
                "snapshot", sid, fetch_last, refresh=self.sliding_ttl
            )
            return snap
        return (yield from self._archive_window(sid))

    def _archive_window(self, sid: str) -> Plan[Snapshot | None]:
        """The newest window of an archived history by the trim policy (system prompt kept)."""
        window = self.max_messages
        tail: Snapshot | None = yield _archive("snapshot", sid, window)
        if tail is None or window is None or tail.complete:
            return tail
        part = yield _archive("history_page", sid, tail.base_seq + window, window)
        by_seq = {seq: message for seq, message in (part.pairs if part is not None else ())}
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
            nbytes=sum(resident_nbytes(encode_json(m)) for m in messages),
        )

    def _promote(self, snap: Snapshot) -> Plan[int]:
        """Copy an archived session into Redis: 1 copied, 0 already there, -1 refused
        (a generation deleted meanwhile: its copy must not come back)."""
        try:
            outcome = int((yield _redis("promote", snap)))
        except BackendUnavailable:
            self.stats["redis"].errors += 1
            return 0
        if outcome > 0:
            self.stats["archive"].promotions += 1
        return outcome

    def get(self, sid: str, last: int | None) -> Plan[Session]:
        found, tier = yield from self._read(sid, last)
        if isinstance(found, SessionEntry):
            return found.session(sid, last, tier)
        return found.session(tier, last)  # type: ignore[arg-type]

    def load(self, sid: str, last: int | None, full: bool = False) -> Plan[list[Message]]:
        """The hot window (or its newest ``last``); ``full``: the whole history."""
        if full:
            history = yield from self.history_all(sid)
            return history[-last:] if last else ([] if last == 0 else history)
        redis_down: BackendUnavailable | None = None
        missed = False
        if self.memory is None and self.has_redis and not self.sliding_ttl:
            # No memory tier to fill: only the messages, a lighter read than the snapshot.
            try:
                hot: list[Message] = yield from self._redis_call("load", sid, last=last)
            except SessionNotFound:
                missed = True
            except BackendUnavailable as exc:
                redis_down = exc
            except SessionFenced:
                pass  # the snapshot read below reconciles
            else:
                self.stats["redis"].hits += 1
                return hot
        found, _ = yield from self._read(sid, last, redis_down, missed=missed)
        return newest(found.messages, last)

    def count(self, sid: str) -> Plan[int]:
        found, _ = yield from self._read(sid, 0)
        return found.message_count if isinstance(found, Snapshot) else len(found.messages)

    def exists(self, sid: str) -> Plan[bool]:
        try:
            yield from self._read(sid, 0)
        except SessionNotFound:
            return False
        return True

    # -- writing ----------------------------------------------------------------------

    def _ensure_hot(self, sid: str) -> Plan[bool]:
        """Copy a session that only the archive holds back into Redis before writing.

        ``False`` when the archive holds no live copy that may come back (none,
        or a generation deleted meanwhile): the write then starts a new one.
        """
        if not self.has_archive:
            return False
        snap = yield from self._archive_window(sid)
        if snap is None:
            return False
        return (yield from self._promote(snap)) >= 0

    def _write_redis(self, name: str, sid: str, **kwargs: Any) -> Plan[Any]:
        """Run a Redis write that must not silently shadow an archived session.

        Without an archive the script may create the session. With one it
        first runs with ``create=False``: a session missing from Redis is
        promoted from the archive and the write retried, so a session the
        worker archived (or evicts again meanwhile) keeps its history; only
        when the archive holds none either does the write create it. A fenced
        copy is reconciled first.
        """
        kwargs["outbox"] = self.write_through
        create = not self.has_archive
        for _ in range(_ATTEMPTS):
            try:
                result = yield from self._redis_call(name, sid, create=create, **kwargs)
            except SessionFenced:
                yield from self.reconcile(sid)
                continue
            if result is not None:
                self.invalidations_sent += 1
                return result
            create = not (yield from self._ensure_hot(sid))
        raise _kept_moving(sid)

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
        options = {
            "ttl_ms": ttl_ms,
            "metadata": metadata,
            "user_id": user_id,
            "expected_version": expected_version,
        }
        if not self.has_redis:
            receipt = yield _archive("write_save", sid, batch, **options)
            self._memory_forget(sid)
            return int(receipt.version)
        try:
            receipt = yield from self._write_redis("write_save", sid, batch=batch, **options)
        except BackendUnavailable as exc:
            if not self._archive_takes_over(exc):
                raise
            receipt = yield _archive("write_save", sid, batch, detached=True, **options)
            self._memory_forget(sid)
            return int(receipt.version)
        self._memory_forget(sid)
        if not self.write_through:
            return int(receipt.version)
        mirror = _archive(
            "mirror", sid, batch, receipt, replace=True, metadata=metadata, user_id=user_id
        )
        return (yield from self._mirror(sid, receipt, mirror))

    def append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> Plan[int]:
        options = {"ttl_ms": ttl_ms, "expected_version": expected_version}
        if not self.has_redis:
            receipt = yield _archive("write_append", sid, batch, **options)
            self._memory_forget(sid)
            return int(receipt.version)
        before = self.memory.peek(sid) if self.memory is not None else None
        try:
            receipt = yield from self._write_redis("write_append", sid, batch=batch, **options)
        except BackendUnavailable as exc:
            if not self._archive_takes_over(exc):
                raise
            receipt = yield _archive("write_append", sid, batch, detached=True, **options)
            self._memory_forget(sid)
            return int(receipt.version)
        self._memory_after_append(sid, batch, receipt, before)
        if not self.write_through:
            return int(receipt.version)
        mirror = _archive("mirror", sid, batch, receipt, replace=False, metadata=None, user_id=None)
        return (yield from self._mirror(sid, receipt, mirror))

    def merge_metadata(self, sid: str, updates: FrozenDict) -> Plan[FrozenDict]:
        if not self.has_redis:
            merged = yield _archive("write_merge_metadata", sid, updates)
            self._memory_forget(sid)
            return merged  # type: ignore[no-any-return]
        for _ in range(_ATTEMPTS):
            try:
                merged, receipt = yield from self._redis_call(
                    "write_merge_metadata", sid, updates, outbox=self.write_through
                )
            except SessionFenced:
                yield from self.reconcile(sid)
                continue
            except SessionNotFound:
                # Not in Redis (archived, or evicted meanwhile): promote and retry.
                if not (yield from self._ensure_hot(sid)):
                    raise
                continue
            except BackendUnavailable as exc:
                if not self._archive_takes_over(exc):
                    raise
                merged = yield _archive("write_merge_metadata", sid, updates, detached=True)
                self._memory_forget(sid)
                return merged  # type: ignore[no-any-return]
            break
        else:
            raise _kept_moving(sid)
        self.invalidations_sent += 1
        self._memory_forget(sid)
        if self.write_through:
            mirror = _archive("mirror_metadata", sid, merged, receipt)
            yield from self._mirror(sid, receipt, mirror)
        return merged  # type: ignore[no-any-return]

    def delete(self, sid: str) -> Plan[bool]:
        """Delete from every tier, leaving tombstones that outlive any copy in flight.

        Redis goes first and picks the tombstone time; the archive records the
        same one. With Redis down (write_through only) the archive's tombstone
        is enough until the Redis copy is reconciled (the session is then
        detached); in ``archive`` mode the delete fails instead.
        """
        existed = False
        tombstone = 0
        redis_down = False
        if self.has_redis:
            try:
                existed, tombstone = yield from self._redis_call("write_delete", sid)
            except BackendUnavailable as exc:
                if not self._archive_takes_over(exc):
                    raise
                redis_down = True
            else:
                self.invalidations_sent += 1
                self.seen.note(sid, (tombstone, 0))
        if self.has_archive:
            gone = yield _archive("delete_at", sid, floor_ms=tombstone, detached=redis_down)
            existed = bool(gone) or existed
        self._memory_forget(sid)
        return existed

    def fork(self, src: str, dst: str, *, ttl_ms: int | None) -> Plan[int]:
        session = yield from self.get(src, None)
        history = (yield from self.history_all(src)) if self.has_archive else session.messages
        ttl = ttl_ms or self.default_ttl_ms
        if ttl is None and session.expires_at is not None:
            ttl = max(int((session.expires_at.timestamp() - time.time()) * 1000), 1)
        try:
            return (
                yield from self.save(
                    dst,
                    prepare_batch(history, self.limits),
                    ttl_ms=ttl,
                    metadata=session.metadata,
                    user_id=session.user_id,
                    expected_version=0,
                )
            )
        except VersionConflict:
            raise SessionExists(dst) from None

    # -- listing ------------------------------------------------------------------------

    def list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Plan[Page]:
        if self.has_redis and self.has_archive:
            try:
                return (yield from self._merged_list(user_id, limit, cursor, order))
            except BackendUnavailable as exc:
                if not self._archive_takes_over(exc):
                    raise
                # Every write reached the archive (or is waiting in an outbox).
                cold: Page = yield _archive("_list", user_id, limit, cursor, order)
                return cold
        page: Page = yield Op(
            "redis" if self.has_redis else "archive", "_list", (user_id, limit, cursor, order)
        )
        return page

    def _merged_list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Plan[Page]:
        """Merge the hot and archive indexes; a session in both counts where Redis has it."""
        position = decode_cursor(cursor) if cursor is not None else None
        hot: builtins.list[tuple[int, str]] = yield from self._redis_call(
            "list_keys", user_id, limit, position, order
        )
        cold: builtins.list[tuple[int, str]] = []
        cold_position = position
        while True:
            batch = yield _archive("list_keys", user_id, limit, cold_position, order)
            if not batch:
                break
            hot_flags = yield _redis("exists_many", [sid for _, sid in batch])
            cold.extend(key for key, is_hot in zip(batch, hot_flags, strict=True) if not is_hot)
            if len(cold) >= limit or len(batch) < limit:
                break
            cold_position = batch[-1]
        merged = sorted(set(hot) | set(cold), reverse=order == "desc")
        page = merged[:limit]
        more = len(merged) > limit or len(hot) == limit or len(cold) >= limit
        next_cursor = encode_cursor(*page[-1]) if page and more else None
        return Page([sid for _, sid in page], next_cursor)

    # -- full history -------------------------------------------------------------------

    def history(self, sid: str, before: int | None, limit: int) -> Plan[HistoryPage]:
        """A page of the whole history (archive included), oldest first.

        Redis decides what the current history is: archive rows of another
        generation, or from before the seq where the last save restarted the
        history, are not part of it even if the worker has not yet replaced them.
        """
        check_limit(limit, maximum=100_000)
        parts: dict[str, HistoryPart] = {}
        for tier, present in (("redis", self.has_redis), ("archive", self.has_archive)):
            if not present:
                continue
            try:
                part = yield Op(tier, "history_page", (sid, before, limit))
            except (BackendUnavailable, SessionFenced):
                continue
            if part is not None:
                parts[tier] = part
        if not parts:
            raise SessionNotFound(sid)
        pairs: dict[int, Message] = {}
        current = parts.get("redis") or parts["archive"]
        for part in parts.values():
            if part.created_ms != current.created_ms:
                continue
            for seq, message in part.pairs:
                if seq >= current.base_seq:
                    pairs.setdefault(seq, message)
        seqs = sorted(pairs)[-limit:]
        next_before = seqs[0] if seqs and (len(pairs) >= limit) else None
        return HistoryPage([pairs[s] for s in seqs], seqs, next_before)

    def history_all(self, sid: str) -> Plan[builtins.list[Message]]:
        """Every message of the session, archive included, oldest first."""
        pages: builtins.list[builtins.list[Message]] = []
        before: int | None = None
        while True:
            page = yield from self.history(sid, before, 1000)
            pages.append(page.messages)
            if page.next_before is None:
                break
            before = page.next_before
        return [message for page in reversed(pages) for message in page]

    # -- statistics ---------------------------------------------------------------------

    def snapshot_stats(self, tiers: Mapping[str, bool]) -> dict[str, Any]:
        out: dict[str, Any] = {name: tier.as_dict() for name, tier in self.stats.items()}
        if self.memory is not None:
            out["memory"].update(self.memory.stats())
        out["invalidations_sent"] = self.invalidations_sent
        listener = self.listener
        out["invalidations_received"] = listener.received if listener else 0
        out["invalidation_channel_healthy"] = listener.healthy if listener else None
        out["invalidation_disconnects"] = listener.disconnects if listener else 0
        out["durability"] = self.durability
        out["tiers"] = [name for name, present in tiers.items() if present]
        return out
