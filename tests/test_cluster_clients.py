"""Cluster URLs and clients: stores, the tiered store and the worker on a Redis Cluster."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio.cluster
import redis.cluster

from tieredstore import ConfigurationError, RedisStore, TieredStore
from tieredstore.aio import AsyncTieredStore
from tieredstore.tiers.redis import AsyncRedisStore


def _cluster_form(url: str) -> str:
    return url.replace("redis://", "redis+cluster://", 1)


def test_a_cluster_url_builds_a_cluster_client(cluster_url: str, redis_prefix: str) -> None:
    ns = f"url-{uuid.uuid4().hex[:8]}"
    with RedisStore.from_url(_cluster_form(cluster_url), namespace=ns, prefix=redis_prefix) as s:
        assert isinstance(s.client, redis.cluster.RedisCluster) and s.cluster
        s.save("a", [{"role": "user", "content": "hi"}], user_id="u")
        assert s.list(user_id="u").ids == ["a"]
        assert s.invalidation_channels == s.keys.bucket_channels()
        assert s.stats()["used_memory"] > 0
        s.delete("a")


def test_a_tiered_store_from_a_cluster_url_listens_on_every_shard(
    cluster_url: str, redis_prefix: str
) -> None:
    ns = f"url-{uuid.uuid4().hex[:8]}"
    store = TieredStore.from_url(redis_url=_cluster_form(cluster_url), namespace=ns,
                                 prefix=redis_prefix)
    try:
        assert store.redis is not None and store.redis.cluster
        assert store.listener is not None and store.listener.sharded
        store.save("a", [{"role": "user", "content": "hi"}])
        assert store.load("a")[0]["content"] == "hi"
        store.delete("a")
    finally:
        store.close()


def test_the_async_twins_take_a_cluster_url(
    cluster_url: str, redis_prefix: str, loop_thread: Any
) -> None:
    ns = f"url-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        redis_store = AsyncRedisStore.from_url(_cluster_form(cluster_url), namespace=ns,
                                               prefix=redis_prefix)
        assert isinstance(redis_store.client, redis.asyncio.cluster.RedisCluster)
        await redis_store.save("b", [{"role": "user", "content": "yo"}])
        assert (await redis_store.get("b")).version == 1
        await redis_store.delete("b")
        await redis_store.aclose()
        tiered = AsyncTieredStore.from_url(redis_url=_cluster_form(cluster_url), namespace=ns,
                                           prefix=redis_prefix)
        try:
            await tiered.save("c", [{"role": "user", "content": "yo"}])
            assert len(await tiered.load("c")) == 1
            await tiered.delete("c")
        finally:
            await tiered.aclose()

    loop_thread.run(run())


def test_a_cluster_cannot_be_the_celery_broker() -> None:
    from worker.app import broker_url

    with pytest.raises(ConfigurationError, match="TIEREDSTORE_BROKER_URL"):
        broker_url({"TIEREDSTORE_REDIS_URL": "redis+cluster://127.0.0.1:7000"})
    assert broker_url({"TIEREDSTORE_REDIS_URL": "redis+cluster://127.0.0.1:7000",
                       "TIEREDSTORE_BROKER_URL": "amqp://guest@127.0.0.1//"}).startswith("amqp")


def test_the_worker_coordinates_through_a_cluster(
    cluster_client: Any, redis_prefix: str, pg_engine: Any
) -> None:
    """Slots, N-wide locks and the run log of the Celery worker work on a cluster store."""
    from tieredstore.maintenance import MaintenanceSettings
    from worker.tasks import Maintenance

    ns = f"wk-{uuid.uuid4().hex[:8]}"
    store = TieredStore.from_clients(redis=cluster_client, engine=pg_engine, namespace=ns,
                                     prefix=redis_prefix, memory_max_bytes=None)
    try:
        assert store.redis is not None
        settings = MaintenanceSettings(parallel=2)
        ctx = Maintenance(store, settings, cluster_client, store.redis.keys.root + "maint:")
        claimed, slot = ctx.claim_slot("expire", 3600)
        assert claimed and ctx.claim_slot("expire", 3600) == (False, slot)
        first, second = ctx.acquire("expire"), ctx.acquire("expire")
        assert first is not None and second is not None and first[1] != second[1]
        assert ctx.acquire("expire") is None  # two wide, both held
        assert ctx.extend("expire", *first)
        ctx.release("expire", *first)
        again = ctx.acquire("expire")
        assert again is not None and again[1] == first[1]
        ctx.record({"task": "expire", "slot": slot})
        assert cluster_client.llen(ctx.root + "runs") == 1
    finally:
        store.close()
