"""``AsyncRedisStore``: the asyncio shell of the Redis tier (see :mod:`.plans`)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar

import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import NoScriptError

from tieredstore.aio import AsyncBaseStore
from tieredstore.breaker import CircuitBreaker
from tieredstore.core import Batch, Order, check_limit
from tieredstore.errors import ConfigurationError
from tieredstore.loops import PerLoop
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.tiers.redis.errors import (
    DRIVER_FAULTS,
    REDIS_ERRORS,
    driver_fault,
    raise_first,
    translate,
    used_memory,
)
from tieredstore.tiers.redis.keys import DEFAULT_BUCKETS
from tieredstore.tiers.redis.multi import transaction_async
from tieredstore.tiers.redis.plans import Plan
from tieredstore.tiers.redis.records import (
    Call,
    Calls,
    Commands,
    Fenced,
    OutboxRecord,
    Spilled,
)
from tieredstore.tiers.redis.shell import (
    STORE_OPTIONS,
    RedisShared,
    evalsha_args,
    redis_down,
    source,
)
from tieredstore.tiers.transfer import DEFAULT_TOMBSTONE_TTL, HistoryPart, Snapshot, WriteReceipt
from tieredstore.timeouts import REDIS_TIMEOUTS

__all__ = ["AsyncRedisStore"]

T = TypeVar("T")


def _twin_client(store: AsyncRedisStore) -> Any:
    """A client for another event loop: same settings, its own connections."""
    if store._recipe is not None:
        return store._recipe()
    if store.cluster:
        raise ConfigurationError(
            "redis",
            "this AsyncRedisStore's RedisCluster client belongs to the event loop that "
            "first used it; build the store with from_url (it makes a client for each "
            "loop) or make one store per event loop",
        )
    pool = store._clients.first.connection_pool
    options = dict(pool.connection_kwargs)
    if isinstance(pool, redis.asyncio.BlockingConnectionPool):
        options["timeout"] = pool.timeout
    twin = type(pool)(
        connection_class=pool.connection_class, max_connections=pool.max_connections, **options
    )
    return store._client_class.from_pool(twin)


_CLUSTER_SETTINGS = frozenset(inspect.signature(redis.asyncio.cluster.RedisCluster).parameters) - {
    "host", "port", "startup_nodes", "event_dispatcher",
}
"""The connection settings a RedisCluster keeps that its constructor takes back."""


def _listener_client(store: AsyncRedisStore) -> Any:
    """See :meth:`AsyncRedisStore.listener_client`."""
    first = store._clients.first
    if not store.cluster:
        return first
    if store._recipe is not None:
        return store._recipe()
    settings = first.get_connection_kwargs()
    options = {k: v for k, v in settings.items() if k in _CLUSTER_SETTINGS}
    if issubclass(settings.get("connection_class", object), redis.asyncio.SSLConnection):
        options["ssl"] = True
    nodes = [ClusterNode(node.host, node.port) for node in first.startup_nodes]
    return type(first)(startup_nodes=nodes, **options)


async def _close(store: AsyncRedisStore, client: Any, first: bool) -> None:
    """Close a loop's client: always a twin, the first one if the store built it."""
    if store._owns_client or not first:
        await client.aclose()


class AsyncRedisStore(RedisShared, AsyncBaseStore):
    """The asyncio twin of :class:`RedisStore` over ``redis.asyncio``.

    Same keys, scripts, plans, options and errors; every method that talks
    to Redis is a coroutine. ``client`` is a ``redis.asyncio.Redis``.

    Many concurrent tasks need many connections: :meth:`from_url` builds a
    ``BlockingConnectionPool`` (tasks wait for a free connection, up to its
    ``timeout``, instead of failing with "Too many connections"); give a
    client you build yourself one too.

    Any event loop may use the store: the client it was given or built
    serves the first loop that uses it, and each other loop gets a client of
    its own, with the same connection settings, closed when that loop shuts
    down (see :mod:`tieredstore.loops`). ``client`` is the running loop's.
    A Redis Cluster client you built yourself cannot be copied: a second loop
    gets :class:`~tieredstore.errors.ConfigurationError` at once (the store
    :meth:`from_url` builds has no such limit).
    """

    _client_class = redis.asyncio.Redis
    _cluster_class = redis.asyncio.cluster.RedisCluster
    _pool_class = redis.asyncio.BlockingConnectionPool
    _clients: PerLoop[Any]
    _recipe: Callable[[], Any] | None = None

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
        buckets: int = DEFAULT_BUCKETS,
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
            buckets=buckets,
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """See :meth:`RedisShared.from_url`; other loops' clients are built from ``url`` too."""
        store = super().from_url(url, **kwargs)
        options = {k: v for k, v in kwargs.items() if k not in STORE_OPTIONS}
        store._recipe = functools.partial(cls._client_from_url, url, {**REDIS_TIMEOUTS, **options})
        return store

    # -- one client per event loop ------------------------------------------

    @property
    def client(self) -> Any:
        """The client of the running event loop (outside a loop: the first one)."""
        return self._clients.get()

    @client.setter
    def client(self, client: Any) -> None:
        self._clients = PerLoop(
            client, twin=lambda: _twin_client(self), close=lambda c, first: _close(self, c, first)
        )

    def listener_client(self) -> Any:
        """A client an invalidation listener may use on an event loop of its own.

        Standalone: the store's first client (a listener only reads its
        connection settings). Cluster: a new client, which the caller closes.
        """
        return _listener_client(self)

    # -- the I/O shell ------------------------------------------------------

    async def _drive(self, plan: Plan[T]) -> T:
        """Await a plan's calls; driver errors become ours (see :mod:`.errors`)."""
        if not self._layout_checked:
            await self._drive_plan(self._layout_plan())
        return await self._drive_plan(plan)

    async def _drive_plan(self, plan: Plan[T]) -> T:
        breaker = self.breaker
        try:
            call = next(plan)
            while True:
                try:
                    with breaker.guard(redis_down):
                        reply = await self._send(call)
                except REDIS_ERRORS as exc:
                    raise translate(exc) from exc
                except DRIVER_FAULTS as exc:
                    if not driver_fault(exc):
                        raise
                    raise translate(exc) from exc
                call = plan.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _send(self, call: Call | Calls | Commands) -> Any:
        client = self.client
        if isinstance(call, Call):
            return await self._eval(call)
        if isinstance(call, Commands) and call.atomic:
            return await transaction_async(client, call.commands)
        pipe = client.pipeline(transaction=False)
        if isinstance(call, Commands):
            for command in call.commands:
                pipe.execute_command(*command)
            return await pipe.execute()
        if self.cluster:
            # The cluster pipeline refuses EVALSHA: run them concurrently.
            return raise_first(
                list(await asyncio.gather(*(self._eval(each) for each in call.calls)))
            )
        for each in call.calls:
            pipe.evalsha(*evalsha_args(each))
        replies = await pipe.execute(raise_on_error=False)
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            for name in {call.calls[i].script for i in unknown}:
                await client.script_load(source(name))
            pipe = client.pipeline(transaction=False)
            for i in unknown:
                pipe.evalsha(*evalsha_args(call.calls[i]))
            replies = list(replies)
            for i, reply in zip(unknown, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        return raise_first(replies)

    async def _eval(self, call: Call) -> Any:
        try:
            return await self.client.evalsha(*evalsha_args(call))
        except NoScriptError:
            await self.client.script_load(source(call.script))
            return await self.client.evalsha(*evalsha_args(call))

    async def _aclose(self) -> None:
        await self._clients.aclose()

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
        return await self._drive(self._upkeep.purge_expired(batch_size))

    async def stats(self) -> dict[str, Any]:
        """See :meth:`RedisStore.stats`."""
        counts = await self._drive(self._ops.stats())
        return {**counts, "used_memory": await self._used_memory(), "breaker": self.breaker.stats()}

    async def _used_memory(self) -> int:
        """``used_memory`` of the server, or summed over a cluster's primaries."""
        try:
            if self.cluster:
                info = await self.client.info("memory", target_nodes=self.client.PRIMARIES)
            else:
                info = await self.client.info("memory")
        except REDIS_ERRORS as exc:
            raise translate(exc) from exc
        return used_memory(info)

    async def lock_acquire(self, sid: str, token: str, ttl_ms: int) -> bool:
        return await self._drive(self._ops.lock_acquire(sid, token, ttl_ms))

    async def lock_release(self, sid: str, token: str) -> bool:
        return await self._drive(self._ops.lock_release(sid, token))

    async def lock_extend(self, sid: str, token: str, ttl_ms: int) -> bool:
        return await self._drive(self._ops.lock_extend(sid, token, ttl_ms))

    async def lock_held(self, sid: str) -> bool:
        return await self._drive(self._ops.lock_held(sid))
