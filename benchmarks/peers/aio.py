"""Asyncio throughput: 50 tasks doing load + append, through the stores and raw.

Every contestant shares one ``redis.asyncio`` client (one
``BlockingConnectionPool`` of :data:`POOL` connections). Each task owns one
50-message session (held at 50 by ``max_messages``) and runs
``load`` then ``append`` in a loop. Raw ``redis.asyncio`` sends what
``AsyncTieredStore`` sends for the same sessions (see
:mod:`benchmarks.peers.calls`: its snapshot read and its append, with a
fresh call id), decoding the read's entries as the store does. Runs
alternate between contestants, the order rotating.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from benchmarks.peers.calls import RawStep, decoded, raw_append, raw_read
from benchmarks.peers.conversations import conversation
from tieredstore import AsyncTieredStore
from tieredstore.tiers.redis import AsyncRedisStore

TASKS = 50
POOL = 50
SIZE = 50
STREAM = conversation(8, seed=13)

ASYNC_TIERED = "AsyncTieredStore"
ASYNC_REDIS = "AsyncRedisStore"
RAW_ASYNC = "raw redis.asyncio"


class AsyncGroup:
    """The asyncio contestants, built and run on ``loop``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, url: str, prefix: str, sync_client: redis.Redis
    ) -> None:
        self.loop = loop
        self.sids = [f"task-{i:02d}" for i in range(TASKS)]
        loop.run_until_complete(self._build(url, prefix))
        tier = self.tiered.redis
        self.read_calls = [raw_read(sync_client, tier, sid, None) for sid in self.sids]
        self.append_calls = [
            [raw_append(sync_client, tier, sid, m, create=True, outbox=False) for m in STREAM]
            for sid in self.sids
        ]
        first = self.read_calls[0]
        reply = loop.run_until_complete(first.asend(self.client))
        assert decoded(first.entries(reply)) == loop.run_until_complete(
            self.tiered.load(self.sids[0])
        )

    async def _build(self, url: str, prefix: str) -> None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=POOL, timeout=30)
        self.client = redis.asyncio.Redis(connection_pool=pool)
        self.tiered = AsyncTieredStore.from_clients(
            redis=self.client,
            prefix=prefix,
            namespace="aio-tiered",
            memory_max_bytes=None,
            max_messages=SIZE,
        )
        self.redis_store = AsyncRedisStore(
            self.client, prefix=prefix, namespace="aio-redis", max_messages=SIZE
        )
        history = conversation(SIZE)
        for sid in self.sids:
            await self.tiered.save(sid, history)
            await self.redis_store.save(sid, history)

    # -- workers ------------------------------------------------------------------

    def _store_worker(self, store: Any) -> Callable[[int, int], Awaitable[None]]:
        async def work(task: int, loops: int) -> None:
            sid = self.sids[task]
            for i in range(loops):
                await store.load(sid)
                await store.append(sid, STREAM[i % len(STREAM)])

        return work

    async def _raw_worker(self, task: int, loops: int) -> None:
        client = self.client
        read: RawStep = self.read_calls[task]
        appends = self.append_calls[task]
        for i in range(loops):
            reply = await read.asend(client)
            decoded(read.entries(reply))
            await appends[i % len(appends)].asend(client)

    async def _timed(
        self, worker: Callable[[int, int], Awaitable[None]], loops: int
    ) -> tuple[float, int]:
        cpu = time.thread_time_ns()
        start = time.perf_counter()
        await asyncio.gather(*(worker(task, loops) for task in range(TASKS)))
        return time.perf_counter() - start, time.thread_time_ns() - cpu

    def run(self, loops: int, repeats: int) -> dict[str, dict[str, Any]]:
        """``repeats`` runs of each contestant (``loops`` load+append per task):
        median throughput in operations per second and client CPU per operation."""
        workers = {
            ASYNC_TIERED: self._store_worker(self.tiered),
            ASYNC_REDIS: self._store_worker(self.redis_store),
            RAW_ASYNC: self._raw_worker,
        }
        for worker in workers.values():
            self.loop.run_until_complete(self._timed(worker, 2))
        rates: dict[str, list[float]] = {name: [] for name in workers}
        cpu_per_op: dict[str, list[float]] = {name: [] for name in workers}
        names = list(workers)
        operations = TASKS * loops * 2
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                seconds, cpu_ns = self.loop.run_until_complete(
                    self._timed(workers[name], loops)
                )
                rates[name].append(operations / seconds)
                cpu_per_op[name].append(cpu_ns / operations / 1000)
        return {
            name: {
                "ops_per_s": statistics.median(rates[name]),
                "ops_per_s_min": min(rates[name]),
                "ops_per_s_max": max(rates[name]),
                "cpu_per_op_us": statistics.median(cpu_per_op[name]),
                "runs": repeats,
                "operations_per_run": operations,
            }
            for name in names
        }

    def round_trip_ops(self) -> dict[str, Callable[[], Any]]:
        run, sid = self.loop.run_until_complete, self.sids[0]
        return {
            f"{ASYNC_TIERED} load": lambda: run(self.tiered.load(sid)),
            f"{ASYNC_TIERED} append": lambda: run(self.tiered.append(sid, STREAM[0])),
            f"{ASYNC_REDIS} load": lambda: run(self.redis_store.load(sid)),
            f"{ASYNC_REDIS} append": lambda: run(self.redis_store.append(sid, STREAM[0])),
        }

    def close(self) -> None:
        async def close() -> None:
            for sid in self.sids:
                await self.tiered.delete(sid)
                await self.redis_store.delete(sid)
            await self.tiered.aclose()
            await self.redis_store.aclose()
            await self.client.aclose()

        self.loop.run_until_complete(close())
