"""``TieredCheckpointSaver``: a LangGraph checkpointer on memory, Redis and the archive.

The saver turns LangGraph's checkpoints, metadata and writes into stored
records — with LangGraph's own serializer (``self.serde``) for checkpoints
and write values, and JSON for metadata, as ``PostgresSaver`` keeps it — and
leaves every tier decision to :class:`~.tiers.CheckpointTiers`.

Async methods run the same sync calls in a worker thread (as every adapter
of this package does with a sync store): they never block the event loop and
work from any loop or thread.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, cast

import orjson
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from tieredstore.config import DEFAULT_BUCKETS, Limits
from tieredstore.core import resolve_ttl_ms
from tieredstore.errors import InvalidInput
from tieredstore.integrations.langgraph.cold import ColdCheckpoints
from tieredstore.integrations.langgraph.hot import HotCheckpoints
from tieredstore.integrations.langgraph.maintenance import DEFAULT_WINDOW
from tieredstore.integrations.langgraph.records import (
    MAX_NS_LENGTH,
    Found,
    StoredCheckpoint,
    StoredWrite,
    check_part,
    check_thread_id,
)
from tieredstore.integrations.langgraph.tiers import CheckpointTiers, Durability, RecordCache
from tieredstore.integrations.shared import ClosesOnExit
from tieredstore.tiers.archive import ArchiveStore
from tieredstore.tiers.redis import RedisStore
from tieredstore.tiers.transfer import DEFAULT_TOMBSTONE_TTL

__all__ = ["DEFAULT_WINDOW", "TieredCheckpointSaver"]


def _no_nul(value: Any, where: str) -> None:
    # PostgreSQL's JSONB cannot hold U+0000 (LangGraph strips it from top-level strings).
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(f"checkpoint metadata {where} holds U+0000")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, where)
            _no_nul(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for item in value:
            _no_nul(item, where)


class TieredCheckpointSaver(ClosesOnExit, BaseCheckpointSaver[str]):
    """LangGraph checkpoints hot in Redis (and a memory tier), durable in the archive.

    ``redis``/``archive``: the tiers (a :class:`RedisStore` and an
    :class:`ArchiveStore`; either may be left out). ``durability``:
    ``"archive"`` (writes go to Redis; the worker moves older checkpoints and
    idle threads to the archive) or ``"write_through"`` (each write is also
    committed to the archive before it returns). ``ttl`` (seconds or a
    ``timedelta``): each write sets its thread to expire that long after it.
    ``window``: checkpoints per thread and namespace that stay in Redis when
    the worker archives. ``memory_max_bytes``: bound of the memory tier
    (``None``: none; needs Redis). ``serde``: LangGraph's serializer (default
    ``JsonPlusSerializer``). Build it with :meth:`from_url`,
    :meth:`from_clients` or :meth:`from_store`.
    """

    def __init__(
        self,
        *,
        redis: RedisStore | None = None,
        archive: ArchiveStore | None = None,
        durability: Durability = "archive",
        ttl: float | timedelta | None = None,
        window: int = DEFAULT_WINDOW,
        memory_max_bytes: int | None = None,
        serde: SerializerProtocol | None = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(serde=serde)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InvalidInput(f"window must be a positive integer, got {window!r}")
        if redis is not None and archive is not None and redis.keys.namespace != archive.namespace:
            raise InvalidInput(
                f"the Redis tier's namespace {redis.keys.namespace!r} differs from the "
                f"archive's {archive.namespace!r}")
        self.redis = redis
        self.archive = archive
        self.limits = limits or Limits()
        self.tiers = CheckpointTiers(
            HotCheckpoints(redis, window=window) if redis is not None else None,
            ColdCheckpoints(archive) if archive is not None else None,
            durability=durability,
            ttl_ms=resolve_ttl_ms(ttl, None),
            memory=RecordCache(memory_max_bytes) if memory_max_bytes else None,
            limits=self.limits,
        )
        self._owned: list[RedisStore | ArchiveStore] = []

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        buckets: int = DEFAULT_BUCKETS,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        migrate: bool = False,
        **options: Any,
    ) -> Self:
        """A saver on tiers it builds (and closes) from URLs; a ``None`` URL leaves that
        tier out, and with neither it uses the embedded SQLite archive (migrated).

        ``migrate=True`` upgrades the archive schema first. The tiers get the
        timeouts and circuit breakers of :class:`RedisStore` and
        :class:`ArchiveStore`; ``options`` are the saver's own.
        """
        redis = archive = None
        if redis_url:
            redis = RedisStore.from_url(redis_url, namespace=namespace, prefix=prefix,
                                        buckets=buckets, tombstone_ttl=tombstone_ttl,
                                        publish=False)
        if database_url or not redis_url:
            if database_url is None:
                from tieredstore.tiered_shell import embedded_archive_url

                database_url = embedded_archive_url()
            elif migrate:
                from tieredstore.migration import migrate as run_migrations

                run_migrations(database_url)
            archive = ArchiveStore.from_url(database_url, namespace=namespace,
                                            tombstone_ttl=tombstone_ttl)
        try:
            saver = cls(redis=redis, archive=archive, **options)
        except BaseException:
            for store in (redis, archive):
                if store is not None:
                    store.close()
            raise
        saver._owned = [s for s in (redis, archive) if s is not None]
        return saver

    @classmethod
    def from_clients(
        cls,
        *,
        redis: Any | None = None,
        engine: Any | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        buckets: int = DEFAULT_BUCKETS,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        **options: Any,
    ) -> Self:
        """A saver over a ``redis.Redis`` (or ``RedisCluster``) client and a SQLAlchemy
        ``Engine`` you already have; the caller keeps ownership of both."""
        hot = (RedisStore(redis, namespace=namespace, prefix=prefix, buckets=buckets,
                          tombstone_ttl=tombstone_ttl, publish=False)
               if redis is not None else None)
        cold = (ArchiveStore(engine, namespace=namespace, tombstone_ttl=tombstone_ttl)
                if engine is not None else None)
        return cls(redis=hot, archive=cold, **options)

    @classmethod
    def from_store(cls, store: Any, **options: Any) -> Self:
        """A saver on the Redis tier and archive of a :class:`~tieredstore.TieredStore`
        (same namespace, connections and breakers; the store stays the owner)."""
        return cls(redis=getattr(store, "redis", None), archive=getattr(store, "archive", None),
                   **options)

    def close(self) -> None:
        """Close the tiers :meth:`from_url` built (idempotent)."""
        owned, self._owned = self._owned, []
        for store in owned:
            store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)

    # -- conversions -------------------------------------------------------------------

    def _where(self, config: RunnableConfig) -> tuple[str, str, str | None]:
        conf = config.get("configurable") or {}
        if "thread_id" not in conf:
            raise InvalidInput("the config has no configurable thread_id")
        tid = check_thread_id(conf["thread_id"], self.limits)
        ns = check_part(conf.get("checkpoint_ns", ""), "checkpoint_ns", empty=True,
                        longest=MAX_NS_LENGTH)
        cid = get_checkpoint_id(config)
        return tid, ns, check_part(cid, "checkpoint_id") if cid else None

    def _tuple(self, tid: str, found: Found) -> CheckpointTuple:
        cp = found.checkpoint
        config: RunnableConfig = {"configurable": {
            "thread_id": tid, "checkpoint_ns": cp.checkpoint_ns,
            "checkpoint_id": cp.checkpoint_id}}
        parent: RunnableConfig | None = None
        if cp.parent_id:
            parent = {"configurable": {"thread_id": tid, "checkpoint_ns": cp.checkpoint_ns,
                                       "checkpoint_id": cp.parent_id}}
        writes = sorted(found.writes, key=lambda w: (w.task_path, w.task_id, w.idx))
        return CheckpointTuple(
            config=config,
            checkpoint=self.serde.loads_typed((cp.type, cp.blob)),
            metadata=cast(CheckpointMetadata, orjson.loads(cp.metadata)),
            parent_config=parent,
            pending_writes=[(w.task_id, w.channel, self.serde.loads_typed((w.type, w.value)))
                            for w in writes],
        )

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    # -- the sync API ------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its namespace's newest without a
        ``checkpoint_id``), with its pending writes; ``None`` if there is none."""
        tid, ns, cid = self._where(config)
        found = self.tiers.get(tid, ns, cid)
        return None if found is None else self._tuple(tid, found)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and its ``checkpoint_ns``
        if the config names one; only its ``checkpoint_id`` if it names one), or of
        every thread with ``config=None`` (which reads every thread);
        ``filter``: metadata keys that must be equal; ``before``: ids below that
        config's checkpoint id."""
        tid = ns = cid = None
        if config is not None:
            tid, in_ns, cid = self._where(config)
            if "checkpoint_ns" in (config.get("configurable") or {}):
                ns = in_ns
        below = get_checkpoint_id(before) if before is not None else None
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise InvalidInput(f"limit must be a non-negative integer, got {limit!r}")
        if limit == 0:
            return
        if cid is not None:  # a config naming a checkpoint lists that one (as PostgresSaver)
            found = self.tiers.listing(tid, ns, None, None, filter)
            found = [f for f in found if f.checkpoint.checkpoint_id == cid
                     and (below is None or cid < below)][:limit]
        else:
            found = self.tiers.listing(tid, ns, below, limit, filter)
        for each in found:
            yield self._tuple(each.thread_id, each)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint (the whole of it, channel values included) as the
        newest of its thread and namespace; the config that names it."""
        tid, ns, parent = self._where(config)
        cid = check_part(checkpoint["id"], "checkpoint id")
        type_, blob = self.serde.dumps_typed(checkpoint)
        meta = get_serializable_checkpoint_metadata(config, metadata)
        _no_nul(meta, "")
        try:
            encoded = orjson.dumps(meta, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise InvalidInput(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc
        self.tiers.put(tid, StoredCheckpoint(ns, cid, parent, self._now_ms(), type_, blob,
                                             encoded))
        return {"configurable": {"thread_id": config["configurable"]["thread_id"],
                                 "checkpoint_ns": ns, "checkpoint_id": cid}}

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes for the checkpoint ``config`` names; a write
        stored before under the same ``(task_id, idx)`` is kept, except on LangGraph's
        special channels (errors, interrupts, ...), which are replaced."""
        tid, ns, cid = self._where(config)
        if cid is None:
            raise InvalidInput("put_writes needs a config with a checkpoint_id")
        task = check_part(task_id, "task_id")
        path = check_part(task_path, "task_path", empty=True, longest=MAX_NS_LENGTH)
        stored = []
        for i, (channel, value) in enumerate(writes):
            type_, blob = self.serde.dumps_typed(value)
            stored.append(StoredWrite(task, WRITES_IDX_MAP.get(channel, i),
                                      check_part(channel, "channel"), type_, blob, path))
        self.tiers.put_writes(tid, ns, cid, stored, self._now_ms())

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of the thread from every tier. A copy in
        flight (archival, promotion, a mirror) never brings it back."""
        self.tiers.delete(check_thread_id(thread_id, self.limits))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and writes) of these runs (``metadata["run_id"]``)
        from every thread and tier. It reads every thread hot in Redis (which keeps
        no index by run), so its cost grows with the hot tier."""
        if isinstance(run_ids, str):
            raise TypeError("run_ids must be a sequence of run ids, not a str")
        self.tiers.delete_runs([str(r) for r in run_ids])

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint (whole parent chains) and write of one thread into another."""
        self.tiers.copy(check_thread_id(source_thread_id, self.limits),
                        check_thread_id(target_thread_id, self.limits), self._now_ms())

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep the newest checkpoint of each namespace (with its
        writes), in every tier; threads using a ``DeltaChannel`` are refused
        (``NotImplementedError``). ``"delete"``: delete the threads."""
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread ids, not a str")
        self.tiers.prune([check_thread_id(t, self.limits) for t in thread_ids], strategy)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions as ``PostgresSaver`` makes them: a zero-padded counter and a random
        fraction, so they order as strings and concurrent writers never collide."""
        if current is None:
            count = 0
        elif isinstance(current, int):
            count = current
        else:
            count = int(str(current).split(".")[0])
        return f"{count + 1:032}.{random.random():016}"

    # -- the async API (the sync calls in a worker thread) ---------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for each in found:
            yield each

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(lambda: self.prune(thread_ids, strategy=strategy))
