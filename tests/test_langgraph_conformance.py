"""LangGraph's own checkpointer conformance suite against ``TieredCheckpointSaver``.

``langgraph-checkpoint-conformance`` registers a saver factory
(``checkpointer_test``) and runs every capability it detects
(``validate``). It calls the async API; the ``sync`` runs wrap the saver so
those calls go to its sync methods instead. The configurations cover the
tiered set-up (Redis + PostgreSQL, ``archive`` and ``write_through``, with a
memory tier), every read served by the archive (each thread archived by the
maintenance function before it is read), the archive alone (PostgreSQL,
SQLite), Redis alone and a Redis Cluster.

Every capability the suite knows is detected and must pass.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from tieredstore.integrations.langgraph import TieredCheckpointSaver
from tieredstore.integrations.langgraph.maintenance import maintain_checkpoints


class SyncDriven(TieredCheckpointSaver):
    """The saver whose async methods call its sync ones on the loop: the suite
    then checks the sync API."""

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        for each in self.list(config, filter=filter, before=before, limit=limit):
            yield each

    async def aput(self, config: RunnableConfig, checkpoint: Any, metadata: Any,
                   new_versions: Any) -> RunnableConfig:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.delete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.copy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.prune(thread_ids, strategy=strategy)


class ColdReads(TieredCheckpointSaver):
    """Before every read, every thread is archived (and removed from Redis) by the
    maintenance function: reads come from the archive and promote."""

    archived = 0

    def _archive_all(self) -> None:
        result = maintain_checkpoints(self, archive_after=0, window=1, max_batches=None)
        assert not result.remaining
        ColdReads.archived += result.changed

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        await asyncio.to_thread(self._archive_all)
        return await super().aget_tuple(config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        await asyncio.to_thread(self._archive_all)
        async for each in super().alist(config, filter=filter, before=before, limit=limit):
            yield each


def _run_suite(name: str, build: Callable[[], TieredCheckpointSaver]) -> None:
    async def factory() -> AsyncIterator[TieredCheckpointSaver]:
        saver = build()
        try:
            yield saver
        finally:
            saver.close()

    registered = checkpointer_test(name=name)(factory)
    report = asyncio.run(validate(registered))
    failures = {cap: r.failures for cap, r in report.results.items() if r.failures}
    assert not failures, failures
    detected = {cap for cap, r in report.results.items() if r.detected}
    assert detected == {c.value for c in ALL_CAPABILITIES}
    assert all(report.results[cap].passed for cap in detected)
    assert report.passed_all()


def _namespace() -> str:
    return f"lg-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("api", ["async", "sync"])
@pytest.mark.parametrize("durability", ["archive", "write_through"])
def test_tiered_redis_and_postgresql(api: str, durability: str, redis_client: Any,
                                     redis_prefix: str, pg_engine: Any) -> None:
    cls = SyncDriven if api == "sync" else TieredCheckpointSaver
    memory = 2**20 if durability == "write_through" else None

    def build() -> TieredCheckpointSaver:
        return cls.from_clients(redis=redis_client, engine=pg_engine, namespace=_namespace(),
                                prefix=redis_prefix, durability=durability,
                                memory_max_bytes=memory)

    _run_suite(f"tiered-{durability}-{api}", build)


def test_every_read_from_the_archive(redis_client: Any, redis_prefix: str,
                                     pg_engine: Any) -> None:
    def build() -> TieredCheckpointSaver:
        return ColdReads.from_clients(redis=redis_client, engine=pg_engine,
                                      namespace=_namespace(), prefix=redis_prefix, buckets=2)

    _run_suite("tiered-cold-reads", build)
    assert ColdReads.archived > 50


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("database", ["pg", "sqlite"])
def test_the_archive_alone(database: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue("pg_engine" if database == "pg" else "sqlite_engine")
    _run_suite(f"archive-{database}",
               lambda: TieredCheckpointSaver.from_clients(engine=engine, namespace=_namespace()))


def test_redis_alone(redis_client: Any, redis_prefix: str) -> None:
    _run_suite("redis", lambda: SyncDriven.from_clients(
        redis=redis_client, namespace=_namespace(), prefix=redis_prefix, memory_max_bytes=2**20))


def test_redis_cluster_and_postgresql(cluster_client: Any, redis_prefix: str,
                                      pg_engine: Any) -> None:
    """Every script runs in one slot: the suite passes on a 3-primary cluster."""
    _run_suite("cluster", lambda: TieredCheckpointSaver.from_clients(
        redis=cluster_client, engine=pg_engine, namespace=_namespace(), prefix=redis_prefix,
        durability="write_through"))
