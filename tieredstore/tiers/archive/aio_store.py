"""``AsyncArchiveStore``: the asyncio shell of the archive tier (see :class:`ArchiveShared`)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine.base import OptionEngine
from sqlalchemy.ext.asyncio import AsyncEngine

from tieredstore.aio import AsyncBaseStore
from tieredstore.breaker import CircuitBreaker
from tieredstore.core import Batch, Order
from tieredstore.errors import InvalidInput
from tieredstore.loops import PerLoop
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.plans import Plan, arun
from tieredstore.tiers.archive.engines import create_async_engine
from tieredstore.tiers.archive.partitions import PartitionRange
from tieredstore.tiers.archive.records import ArchiveCopy, PreparedCopies, Reconciled
from tieredstore.tiers.archive.retention import HOLD_KEY, DroppedMonth, Live, RetainBatch
from tieredstore.tiers.archive.shared import ArchiveShared
from tieredstore.tiers.transfer import DEFAULT_TOMBSTONE_TTL, HistoryPart
from tieredstore.timeouts import ArchiveTimeouts, db_failure

if TYPE_CHECKING:
    from tieredstore.tiers.redis import Fenced
    from tieredstore.tiers.transfer import Snapshot, WriteReceipt

T = TypeVar("T")


@dataclass(frozen=True)
class _LoopEngines:
    """One event loop's engine, and its views with each role's execution options."""

    engine: AsyncEngine
    roles: dict[str, AsyncEngine]

    @classmethod
    def of(cls, engine: AsyncEngine, roles: Mapping[str, Mapping[str, Any]]) -> _LoopEngines:
        return cls(
            engine,
            {role: engine.execution_options(**opts) if opts else engine
             for role, opts in roles.items()},
        )

    def twin(self, roles: Mapping[str, Mapping[str, Any]]) -> _LoopEngines:
        """Another loop's engines: this engine's configuration and events, a new pool."""
        engine = self.engine.sync_engine
        # An engine with execution options shares (and would replace) its parent's pool.
        parent = engine._proxied if isinstance(engine, OptionEngine) else engine
        base = copy.copy(parent)
        base.pool = base.pool.recreate()
        twin = AsyncEngine(base)
        if parent is not engine:
            twin = twin.execution_options(**engine.get_execution_options())
        return _LoopEngines.of(twin, roles)

    async def dispose(self, close: bool) -> None:
        """Dispose of the engine's pool when ``close`` (a caller's own engine stays open)."""
        if close:
            await self.engine.dispose()


_FIRST_CONNECT_WAIT = 10.0
"""Seconds a loop waits for another loop's first connection before it connects anyway."""


class _FirstConnection:
    """Until a first connection has succeeded, engines connect one at a time.

    Every loop's engine shares the dialect, which the first connection
    initializes (server version, isolation level); a connection of another
    loop made meanwhile would see it half done.
    """

    def __init__(self) -> None:
        self.done = False
        self._lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def gate(self) -> AsyncIterator[None]:
        deadline = time.monotonic() + _FIRST_CONNECT_WAIT
        held = self._lock.acquire(blocking=False)
        while not held and not self.done and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # polled: a cancelled waiter holds nothing
            held = self._lock.acquire(blocking=False)
        try:
            yield
            self.done = True
        finally:
            if held:
                self._lock.release()


class AsyncArchiveStore(ArchiveShared, AsyncBaseStore):
    """The asyncio twin of :class:`ArchiveStore` over SQLAlchemy's async engine.

    Pass an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (``postgresql+psycopg``
    or ``sqlite+aiosqlite``) or a ``url`` (a plain ``postgresql://`` or
    ``sqlite:///`` URL picks those drivers; see :func:`create_async_engine`).
    Each operation runs the same database work as :class:`ArchiveStore`,
    through ``AsyncConnection.run_sync``, so statements, locking and retries are
    identical. One difference: :meth:`absorb_many` creates new sessions with
    ``INSERT`` rather than PostgreSQL's binary ``COPY``.

    Any event loop may use the store: the engine serves the first loop that
    uses it, and each other loop gets a copy of it with a pool of its own,
    disposed of when that loop shuts down (see :mod:`tieredstore.loops`).
    ``engine`` is the running loop's.
    """

    def __init__(
        self,
        engine: AsyncEngine | None = None,
        *,
        url: str | sa.URL | None = None,
        namespace: str = "default",
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        timeouts: ArchiveTimeouts | None = None,
        breaker: CircuitBreaker | bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if (engine is None) == (url is None):
            raise InvalidInput("AsyncArchiveStore needs either an engine or a url")
        self._owns_engine = engine is None
        if engine is None:
            assert url is not None
            engine = create_async_engine(url, timeouts=timeouts)
        self._roles = self._setup(engine.sync_engine, namespace, tombstone_ttl)
        self._setup_bounds(engine.sync_engine, breaker, timeouts)
        self._bulk_copy = False
        self._engines = PerLoop(
            _LoopEngines.of(engine, self._roles),
            twin=lambda: self._engines.first.twin(self._roles),
            close=lambda engines, first: engines.dispose(self._owns_engine or not first),
        )
        self._first_connection = _FirstConnection()
        self._targets = {"db": self, "clock": asyncio}

    @classmethod
    def from_url(
        cls,
        url: str | sa.URL,
        *,
        engine_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncArchiveStore:
        """A store on its own async engine for ``url``; see :meth:`ArchiveStore.from_url`."""
        engine = create_async_engine(url, timeouts=kwargs.get("timeouts"), **(engine_options or {}))
        store = cls(engine, **kwargs)
        store._owns_engine = True
        return store

    # -- one engine per event loop --------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        """The engine of the running event loop (outside a loop: the first one)."""
        return self._engines.get().engine

    # -- the I/O shell ------------------------------------------------------------

    async def _in_transaction(self, work: Callable[[sa.Connection], T], role: str) -> T:
        first = self._first_connection
        gate = contextlib.nullcontext() if first.done else first.gate()
        with self.breaker.guard(db_failure):
            async with gate, self._engines.get().roles[role].connect() as conn:
                with self._bounded(conn.sync_connection):
                    async with conn.begin():
                        return await conn.run_sync(work)

    async def _drive(self, plan: Plan[T]) -> T:
        return await arun(plan, self._targets)

    async def _aclose(self) -> None:
        await self._engines.aclose()

    # -- primitives ---------------------------------------------------------------

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
            self._plan_save(
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
            self._plan_append(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    async def _load(self, sid: str, last: int | None) -> list[Message]:
        return await self._drive(self._plan_load(sid, last))

    async def _get(self, sid: str, last: int | None) -> Session:
        return await self._drive(self._plan_get(sid, last))

    async def _count(self, sid: str) -> int:
        return await self._drive(self._plan_count(sid))

    async def _exists(self, sid: str) -> bool:
        return await self._drive(self._plan_exists(sid))

    async def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return await self._drive(self._plan_merge_metadata(sid, updates))

    async def _delete(self, sid: str) -> bool:
        return await self._drive(self._plan_delete(sid))

    async def _list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Page:
        return await self._drive(self._plan_list(user_id, limit, cursor, order))

    async def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return await self._drive(self._plan_fork(src, dst, ttl_ms=ttl_ms))

    # -- the tiered layer -----------------------------------------------------------

    async def write_save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> WriteReceipt:
        """See :meth:`ArchiveStore.write_save`."""
        return await self._drive(
            self._plan_write_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
                detached=detached,
            )
        )

    async def write_append(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> WriteReceipt:
        """See :meth:`ArchiveStore.write_append`."""
        return await self._drive(
            self._plan_write_append(
                sid, batch, ttl_ms=ttl_ms, expected_version=expected_version, detached=detached
            )
        )

    async def write_merge_metadata(
        self, sid: str, updates: FrozenDict, *, detached: bool = False
    ) -> FrozenDict:
        """See :meth:`ArchiveStore.write_merge_metadata`."""
        return await self._drive(self._plan_merge_metadata(self._sid(sid), updates, detached))

    async def delete_at(self, sid: str, *, floor_ms: int = 0, detached: bool = False) -> bool:
        """See :meth:`ArchiveStore.delete_at`."""
        return await self._drive(self._plan_delete(self._sid(sid), floor_ms, detached))

    async def detached_sessions(self, limit: int = 1000) -> list[str]:
        """See :meth:`ArchiveStore.detached_sessions`."""
        return await self._drive(self._plan_detached(limit))

    async def reconcile(self, sid: str, fenced: Fenced | None) -> Reconciled:
        """See :meth:`ArchiveStore.reconcile`."""
        return await self._drive(self._plan_reconcile(self._sid(sid), fenced))

    async def list_keys(
        self,
        user_id: str | None,
        limit: int,
        position: tuple[int, str] | None,
        order: Order,
    ) -> list[tuple[int, str]]:
        """See :meth:`ArchiveStore.list_keys`."""
        return await self._drive(self._plan_list_keys(user_id, limit, position, order))

    async def snapshot(
        self, session_id: str, last: int | None = None, /, *, refresh: bool = False
    ) -> Snapshot | None:
        """See :meth:`ArchiveStore.snapshot`."""
        return await self._drive(self._plan_snapshot(session_id, last, refresh=refresh))

    async def history_page(
        self, session_id: str, before: int | None, limit: int
    ) -> HistoryPart | None:
        """See :meth:`ArchiveStore.history_page`."""
        return await self._drive(self._plan_history_page(session_id, before, limit))

    async def mirror(
        self,
        session_id: str,
        batch: Batch,
        receipt: WriteReceipt,
        *,
        replace: bool,
        metadata: FrozenDict | None = None,
        user_id: str | None = None,
    ) -> bool:
        """See :meth:`ArchiveStore.mirror`."""
        return await self._drive(
            self._plan_mirror(
                session_id, batch, receipt, replace=replace, metadata=metadata, user_id=user_id
            )
        )

    async def mirror_metadata(
        self, session_id: str, metadata: FrozenDict, receipt: WriteReceipt
    ) -> bool:
        """See :meth:`ArchiveStore.mirror_metadata`."""
        return await self._drive(self._plan_mirror_metadata(session_id, metadata, receipt))

    async def restore(self, snapshot: Snapshot) -> bool:
        """See :meth:`ArchiveStore.restore`."""
        return await self._drive(self._plan_restore(snapshot))

    async def absorb_many(self, copies: Sequence[ArchiveCopy] | PreparedCopies) -> list[bool]:
        """See :meth:`ArchiveStore.absorb_many` (new sessions by ``INSERT``, not ``COPY``)."""
        return await self._drive(self._plan_absorb_many(copies))

    # -- partitions and retention -----------------------------------------------------

    async def partitions(self) -> list[PartitionRange]:
        """See :meth:`ArchiveStore.partitions`."""
        return await self._drive(self._plan_partitions())

    async def ensure_partitions(self, ahead: int = 3) -> list[str]:
        """See :meth:`ArchiveStore.ensure_partitions`."""
        return await self._drive(self._plan_ensure_ahead(ahead))

    async def analyze(self) -> None:
        """See :meth:`ArchiveStore.analyze`."""
        await self._drive(self._plan_analyze())

    async def drop_month(
        self,
        partition: PartitionRange,
        cutoff_ms: int,
        *,
        live: Live | None = None,
        hold_key: str = HOLD_KEY,
        dry_run: bool = False,
    ) -> DroppedMonth | None:
        """See :meth:`ArchiveStore.drop_month` (``live`` must not block)."""
        return await self._drive(
            self._plan_drop_month(partition, cutoff_ms, live=live, hold_key=hold_key,
                                  dry_run=dry_run)
        )

    async def retain_batch(
        self,
        cutoff_ms: int,
        *,
        batch_size: int = 500,
        after: tuple[int, str] | None = None,
        live: Live | None = None,
        hold_key: str = HOLD_KEY,
        dry_run: bool = False,
        skip: Sequence[tuple[int, int]] = (),
    ) -> RetainBatch:
        """See :meth:`ArchiveStore.retain_batch` (``live`` must not block)."""
        return await self._drive(
            self._plan_retain_batch(cutoff_ms, batch_size=batch_size, after=after, live=live,
                                    hold_key=hold_key, dry_run=dry_run, skip=skip)
        )

    async def purge_expired(
        self,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
    ) -> int:
        """See :meth:`ArchiveStore.purge_expired`."""
        return await self._drive(
            self._plan_purge_expired(batch_size=batch_size, max_batches=max_batches, live=live)
        )

    async def purge_expired_batch(
        self,
        batch_size: int,
        *,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
        now_ms: int | None = None,
    ) -> tuple[int, int]:
        """See :meth:`ArchiveStore.purge_expired_batch` (``live`` must not block)."""
        return await self._drive(
            self._plan_purge_expired_batch(batch_size, live=live, now_ms=now_ms)
        )

    async def trim_batch(
        self,
        *,
        max_messages: int | None,
        max_bytes: int | None,
        batch_size: int,
        after: str | None = None,
        dry_run: bool = False,
    ) -> tuple[list[str], int, int]:
        """See :meth:`ArchiveStore.trim_batch`."""
        return await self._drive(
            self._plan_trim_batch(
                max_messages=max_messages,
                max_bytes=max_bytes,
                batch_size=batch_size,
                after=after,
                dry_run=dry_run,
            )
        )

    async def stats(self) -> dict[str, Any]:
        """See :meth:`ArchiveStore.stats`."""
        return {**(await self._drive(self._plan_stats())), "breaker": self.breaker.stats()}
