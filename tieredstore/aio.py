"""The asyncio twins: ``AsyncBaseStore``, ``AsyncMemoryStore``, ``AsyncTieredStore``.

Same operations, same semantics, same errors as the synchronous stores, with
``await``, ``async with`` and ``aclose()``::

    async with AsyncTieredStore.from_url(redis_url=..., database_url=...) as store:
        await store.append("s-123", {"role": "user", "content": "Hi"})
        history = await store.load("s-123", last=20)
        async with store.conversation("s-123", lock=True) as conv:
            conv.add({"role": "assistant", "content": "Hello!"})

Nothing here holds logic of its own. Input validation is
:class:`tieredstore.base.StoreCore` (shared with ``BaseStore``); tier
decisions are :class:`tieredstore.tiering.TieredCore`'s plans, which
``TieredStore`` runs with blocking calls and ``AsyncTieredStore`` awaits;
the Redis tier's twin (:class:`~tieredstore.tiers.redis.AsyncRedisStore`)
drives the same :class:`~tieredstore.tiers.redis.RedisOps` plans over
``redis.asyncio``, and the archive's twin
(:class:`~tieredstore.tiers.archive.AsyncArchiveStore`) runs the same
per-operation database work through SQLAlchemy's async engine. The memory
tier never blocks, so both worlds use :class:`MemoryStore` directly; the
invalidation listener is a thread for the one and, for the other, a task on
a loop thread of the store's own.

An async store may be used from any event loop and thread (``asyncio.run``
called again, ``Runner.run_sync`` in worker threads, a framework's loop
beside a thread pool): each tier keeps a client per loop, closed when that
loop shuts down (see :mod:`tieredstore.loops`).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from tieredstore.base import StoreCore
from tieredstore.coherence import AsyncInvalidationListener
from tieredstore.core import Batch, Order, TTLLike, check_before, check_last, check_limit
from tieredstore.locking import AsyncSessionLock
from tieredstore.loops import LoopThread
from tieredstore.middleware import AsyncConversationBlock
from tieredstore.model import FrozenDict, Message, MessageLike, Page, Session
from tieredstore.plans import Plan, arun
from tieredstore.tiered_shell import TieredShell
from tieredstore.tiering import Durability, HistoryPage
from tieredstore.tiers.memory import MemoryStore

if TYPE_CHECKING:
    from tieredstore.tiers.archive import AsyncArchiveStore
    from tieredstore.tiers.redis import AsyncRedisStore

__all__ = ["AsyncBaseStore", "AsyncMemoryStore", "AsyncTieredStore"]

T = TypeVar("T")

_LISTENER_STOP_WAIT = 5.0
"""Seconds :meth:`AsyncTieredStore.aclose` waits for the listener's loop to finish."""


class AsyncBaseStore(StoreCore, ABC):
    """The asynchronous contract over a backend's async primitives.

    The twin of :class:`tieredstore.base.BaseStore`: every method validates
    through :class:`~tieredstore.base.StoreCore` and awaits one primitive.
    """

    async def save(
        self,
        session_id: str,
        messages: Iterable[MessageLike],
        /,
        *,
        ttl: TTLLike | None = None,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        expected_version: int | None = None,
    ) -> int:
        """See :meth:`tieredstore.BaseStore.save`."""
        a = self._save_args(session_id, messages, ttl, metadata, user_id, expected_version)
        return await self._save(
            a.sid,
            a.batch,
            ttl_ms=a.ttl_ms,
            metadata=a.metadata,
            user_id=a.user_id,
            expected_version=a.expected_version,
        )

    async def append(
        self,
        session_id: str,
        /,
        *messages: MessageLike,
        ttl: TTLLike | None = None,
        expected_version: int | None = None,
    ) -> int:
        """See :meth:`tieredstore.BaseStore.append`."""
        a = self._append_args(session_id, messages, ttl, expected_version)
        return await self._append(
            a.sid, a.batch, ttl_ms=a.ttl_ms, expected_version=a.expected_version
        )

    async def load(self, session_id: str, /, *, last: int | None = None) -> list[Message]:
        """See :meth:`tieredstore.BaseStore.load`."""
        return await self._load(self._sid(session_id), check_last(last))

    async def get(self, session_id: str, /, *, last: int | None = None) -> Session:
        """See :meth:`tieredstore.BaseStore.get`."""
        return await self._get(self._sid(session_id), check_last(last))

    async def count(self, session_id: str, /) -> int:
        """See :meth:`tieredstore.BaseStore.count`."""
        return await self._count(self._sid(session_id))

    async def exists(self, session_id: str, /) -> bool:
        return await self._exists(self._sid(session_id))

    async def merge_metadata(self, session_id: str, updates: Mapping[str, Any], /) -> FrozenDict:
        """See :meth:`tieredstore.BaseStore.merge_metadata`."""
        return await self._merge_metadata(*self._merge_args(session_id, updates))

    async def delete(self, session_id: str, /) -> bool:
        """See :meth:`tieredstore.BaseStore.delete`."""
        return await self._delete(self._sid(session_id))

    async def list(
        self,
        *,
        user_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "desc",
    ) -> Page:
        """See :meth:`tieredstore.BaseStore.list`."""
        return await self._list(*self._list_args(user_id, limit, cursor, order))

    async def fork(self, source_id: str, new_id: str, /, *, ttl: TTLLike | None = None) -> int:
        """See :meth:`tieredstore.BaseStore.fork`."""
        src, dst, ttl_ms = self._fork_args(source_id, new_id, ttl)
        return await self._fork(src, dst, ttl_ms=ttl_ms)

    def lock(
        self,
        session_id: str,
        /,
        *,
        timeout: float = 30.0,
        blocking_timeout: float | None = 10.0,
    ) -> AsyncSessionLock:
        """``async with store.lock(id):`` — see :meth:`tieredstore.BaseStore.lock`."""
        return AsyncSessionLock(
            self._lock_plan(session_id, timeout, blocking_timeout), self._lock_backend()
        )

    def conversation(
        self,
        session_id: str,
        /,
        *,
        last: int | None = None,
        lock: bool = False,
        lock_timeout: float = 30.0,
        blocking_timeout: float | None = 10.0,
        commit_on_error: bool = False,
        check_version: bool = False,
        ttl: TTLLike | None = None,
    ) -> AsyncConversationBlock:
        """``async with store.conversation(id) as conv:`` — see
        :meth:`tieredstore.BaseStore.conversation`."""
        plan = self._conversation_plan(
            session_id,
            last=last,
            lock=lock,
            lock_timeout=lock_timeout,
            blocking_timeout=blocking_timeout,
            commit_on_error=commit_on_error,
            check_version=check_version,
            ttl=ttl,
        )
        return AsyncConversationBlock(plan, self, self._lock_backend())

    # -- lifecycle ----------------------------------------------------------

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        if not self._closed:
            self._closed = True
            await self._aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _aclose(self) -> None:
        """Backend hook for :meth:`aclose`."""

    # -- primitives a backend implements -----------------------------------

    @abstractmethod
    async def _save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> int: ...

    @abstractmethod
    async def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int: ...

    @abstractmethod
    async def _load(self, sid: str, last: int | None) -> builtins.list[Message]: ...

    @abstractmethod
    async def _get(self, sid: str, last: int | None) -> Session: ...

    @abstractmethod
    async def _count(self, sid: str) -> int: ...

    @abstractmethod
    async def _exists(self, sid: str) -> bool: ...

    @abstractmethod
    async def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict: ...

    @abstractmethod
    async def _delete(self, sid: str) -> bool: ...

    @abstractmethod
    async def _list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Page: ...

    @abstractmethod
    async def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int: ...


class AsyncMemoryStore(AsyncBaseStore):
    """The asyncio face of :class:`MemoryStore` (which never blocks: it is used as is).

    Takes the same options as :class:`MemoryStore`; ``inner`` is the store.
    """

    tier = "memory"

    def __init__(
        self, *, max_bytes: int = 64 * 2**20, max_entries: int = 100_000, **options: Any
    ) -> None:
        super().__init__(**options)
        self.inner = MemoryStore(max_bytes=max_bytes, max_entries=max_entries, **options)

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
        return self.inner._save(
            sid,
            batch,
            ttl_ms=ttl_ms,
            metadata=metadata,
            user_id=user_id,
            expected_version=expected_version,
        )

    async def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int:
        return self.inner._append(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)

    async def _load(self, sid: str, last: int | None) -> builtins.list[Message]:
        return self.inner._load(sid, last)

    async def _get(self, sid: str, last: int | None) -> Session:
        return self.inner._get(sid, last)

    async def _count(self, sid: str) -> int:
        return self.inner._count(sid)

    async def _exists(self, sid: str) -> bool:
        return self.inner._exists(sid)

    async def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return self.inner._merge_metadata(sid, updates)

    async def _delete(self, sid: str) -> bool:
        return self.inner._delete(sid)

    async def _list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Page:
        return self.inner._list(user_id, limit, cursor, order)

    async def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return self.inner._fork(src, dst, ttl_ms=ttl_ms)

    def _lock_scope(self) -> str:
        return self.inner._lock_scope()

    async def _aclose(self) -> None:
        self.inner.close()


class AsyncTieredStore(TieredShell, AsyncBaseStore):
    """The asyncio twin of :class:`tieredstore.TieredStore`.

    Tiers are ``memory`` (a :class:`MemoryStore`, shared as is),
    ``redis`` (an :class:`~tieredstore.tiers.redis.AsyncRedisStore`) and
    ``archive`` (an :class:`~tieredstore.tiers.archive.AsyncArchiveStore`);
    options and behaviour are those of ``TieredStore``.

    Any event loop, on any thread, may use the store: each tier keeps a
    client per loop (see :mod:`tieredstore.loops`). The invalidation
    listener, an asyncio task, runs on the store's own loop thread, started
    by the first operation (or ``async with``) and stopped by
    :meth:`aclose`, so it never depends on a caller's loop.
    """

    _redis_class = "AsyncRedisStore"
    _archive_class = "AsyncArchiveStore"
    redis: AsyncRedisStore | None
    archive: AsyncArchiveStore | None
    listener: AsyncInvalidationListener | None

    def __init__(
        self,
        *,
        memory: MemoryStore | None = None,
        redis: AsyncRedisStore | None = None,
        archive: AsyncArchiveStore | None = None,
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
            listener_class=AsyncInvalidationListener,
            listen=listen,
        )
        self._listener_lock = threading.Lock()
        self._listener_thread: LoopThread | None = None
        self._listener_started: concurrent.futures.Future[None] | None = None
        self._listener_source: Any = None  # a cluster listener's own client

    # -- the I/O shell ----------------------------------------------------------

    async def _drive(self, plan: Plan[T]) -> T:
        if self._listener_started is None and self.listener is not None:
            await self._listen()
        return await arun(plan, self._targets)

    async def _answer(
        self, work: builtins.list[Message] | Plan[builtins.list[Message]]
    ) -> builtins.list[Message]:
        """What the core had at hand (a hit), or what its plan returns."""
        return work if isinstance(work, builtins.list) else await self._drive(work)

    async def _listen(self) -> None:
        """Start the invalidation listener on the store's loop thread (once), and
        wait until it subscribed (up to the listener's own bound)."""
        with self._listener_lock:
            if self.listener is None or self._closed:
                return
            if self._listener_started is None:
                thread = LoopThread(f"tieredstore-listener[{self.listener.channels[0]}]")
                self._listener_thread = thread
                self._listener_started = thread.submit(_start_listener(self))
                weakref.finalize(self, thread.stop)
            started = self._listener_started
        await asyncio.wrap_future(started)

    async def __aenter__(self) -> Self:
        await self._listen()
        return self

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
            self._core.save(
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
            self._core.append(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    async def _load(self, sid: str, last: int | None) -> builtins.list[Message]:
        return await self._drive(self._core.load(sid, last))

    async def _get(self, sid: str, last: int | None) -> Session:
        return await self._drive(self._core.get(sid, last))

    async def _count(self, sid: str) -> int:
        return await self._drive(self._core.count(sid))

    async def _exists(self, sid: str) -> bool:
        return await self._drive(self._core.exists(sid))

    async def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return await self._drive(self._core.merge_metadata(sid, updates))

    async def _delete(self, sid: str) -> bool:
        return await self._drive(self._core.delete(sid))

    async def _list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Page:
        return await self._drive(self._core.list(user_id, limit, cursor, order))

    async def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return await self._drive(self._core.fork(src, dst, ttl_ms=ttl_ms))

    # -- full history -------------------------------------------------------------

    async def load(
        self, session_id: str, /, *, last: int | None = None, full: bool = False
    ) -> builtins.list[Message]:
        """See :meth:`tieredstore.TieredStore.load`."""
        return await self._answer(self._core.load_now_or_plan(session_id, last, full))

    async def history(
        self, session_id: str, /, *, before: int | None = None, limit: int = 100
    ) -> HistoryPage:
        """See :meth:`tieredstore.TieredStore.history`."""
        sid, before = self._sid(session_id), check_before(before)
        return await self._drive(self._core.history(sid, before, limit))

    async def history_all(self, session_id: str, /) -> builtins.list[Message]:
        """See :meth:`tieredstore.TieredStore.history_all`."""
        return await self._drive(self._core.history_all(self._sid(session_id)))

    async def settle(self, *, limit: int = 1000) -> tuple[int, int, bool]:
        """See :meth:`tieredstore.TieredStore.settle`."""
        return await self._drive(self._core.settle(check_limit(limit)))

    async def _aclose(self) -> None:
        with self._listener_lock:
            thread, self._listener_thread = self._listener_thread, None
        if thread is not None:
            stopped = asyncio.wrap_future(thread.submit(_stop_listener(self)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped, _LISTENER_STOP_WAIT)
            thread.stop()
            await asyncio.to_thread(thread.join, _LISTENER_STOP_WAIT)
        for tier in (self.redis, self.archive):
            if tier is not None:
                await tier.aclose()
        if self.memory is not None:
            self.memory.close()


async def _start_listener(store: AsyncTieredStore) -> None:
    """On the listener's loop: start it (a cluster listener over a client of its own)."""
    redis, listener = store.redis, store.listener
    assert redis is not None and listener is not None
    if redis.cluster:
        store._listener_source = redis.listener_client()
        listener = AsyncInvalidationListener(
            store._listener_source,
            redis.invalidation_channels,
            sharded=True,
            on_invalidate=store._core.on_invalidate,
            on_resubscribe=store._core.on_resubscribe,
        )
        store.listener = store._core.listener = listener
    await listener.start()


async def _stop_listener(store: AsyncTieredStore) -> None:
    """On the listener's loop: stop it, and close the client it had of its own."""
    if store.listener is not None:
        await store.listener.stop()
    if store._listener_source is not None:
        await store._listener_source.aclose()
