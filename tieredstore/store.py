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

Every decision lives in :class:`tieredstore.tiering.TieredCore`; this class
only runs its plans with blocking calls (``AsyncTieredStore`` awaits them).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any, TypeVar

from tieredstore.base import BaseStore
from tieredstore.coherence import InvalidationListener
from tieredstore.core import Batch, Order, check_before, check_limit
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.plans import Plan, run
from tieredstore.tiered_shell import TieredShell, default_data_dir
from tieredstore.tiering import Durability, HistoryPage
from tieredstore.tiers.memory import MemoryStore

if TYPE_CHECKING:
    from tieredstore.tiers.archive import ArchiveStore
    from tieredstore.tiers.redis import RedisStore

__all__ = ["Durability", "HistoryPage", "TieredStore", "default_data_dir"]

T = TypeVar("T")


class TieredStore(TieredShell, BaseStore):
    """The three tiers behind one contract.

    ``memory``: a :class:`MemoryStore` used as the per-process LRU tier (or
    ``None``). ``redis``/``archive``: the hot and durable tiers, each optional.
    ``stale_after``: the most a memory entry may lag other processes' writes
    while the invalidation channel is down. ``durability``: ``"archive"``
    (writes go to Redis; the worker archives idle sessions) or
    ``"write_through"`` (each write is also committed to the archive).
    """

    redis: RedisStore | None
    archive: ArchiveStore | None
    listener: InvalidationListener | None

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
        self._init_core(
            memory,
            redis,
            archive,
            durability,
            stale_after,
            options=options,
            listener_class=InvalidationListener,
            listen=listen,
        )
        if self.listener is not None:
            self.listener.start()

    # -- the I/O shell ----------------------------------------------------------

    def _drive(self, plan: Plan[T]) -> T:
        return run(plan, self._targets)

    def _answer(
        self, work: builtins.list[Message] | Plan[builtins.list[Message]]
    ) -> builtins.list[Message]:
        """What the core had at hand (a hit), or what its plan returns."""
        return work if isinstance(work, builtins.list) else self._drive(work)

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
            self._core.save(
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
            self._core.append(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    def _load(self, sid: str, last: int | None) -> builtins.list[Message]:
        return self._drive(self._core.load(sid, last))

    def _get(self, sid: str, last: int | None) -> Session:
        return self._drive(self._core.get(sid, last))

    def _count(self, sid: str) -> int:
        return self._drive(self._core.count(sid))

    def _exists(self, sid: str) -> bool:
        return self._drive(self._core.exists(sid))

    def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return self._drive(self._core.merge_metadata(sid, updates))

    def _delete(self, sid: str) -> bool:
        return self._drive(self._core.delete(sid))

    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page:
        return self._drive(self._core.list(user_id, limit, cursor, order))

    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return self._drive(self._core.fork(src, dst, ttl_ms=ttl_ms))

    # -- full history -------------------------------------------------------------

    def load(
        self, session_id: str, /, *, last: int | None = None, full: bool = False
    ) -> builtins.list[Message]:
        """The hot window (or the newest ``last``); ``full=True`` the whole history."""
        return self._answer(self._core.load_now_or_plan(session_id, last, full))

    def history(
        self, session_id: str, /, *, before: int | None = None, limit: int = 100
    ) -> HistoryPage:
        """A page of the whole history (archive included), oldest first.

        ``before`` is a seq from a previous page's ``next_before``. Use it to
        page back beyond the hot window that ``load`` returns.
        """
        sid, before = self._sid(session_id), check_before(before)
        return self._drive(self._core.history(sid, before, limit))

    def history_all(self, session_id: str, /) -> builtins.list[Message]:
        """Every message of the session, archive included, oldest first."""
        return self._drive(self._core.history_all(self._sid(session_id)))

    def settle(self, *, limit: int = 1000) -> tuple[int, int, bool]:
        """Bring the archive up to date with Redis after an outage of either.

        Reconciles up to ``limit`` sessions the archive took while Redis was
        unreachable and copies up to ``limit`` sessions' outboxes (writes kept
        in Redis while the archive was unreachable) into the archive. Returns
        ``(sessions reconciled, records drained, more left)``. The worker's
        ``reconcile`` task calls this; it is idempotent.
        """
        return self._drive(self._core.settle(check_limit(limit)))

    def _close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        for tier in (self.redis, self.archive, self.memory):
            if tier is not None:
                tier.close()
