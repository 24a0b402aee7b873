"""What only the async API needs beyond the shared suites.

The contract, the middleware and the locks run against the async stores in
``test_conformance``, ``test_middleware`` and ``test_locking`` (through
``SyncFacade``). Here: many tasks at once, the event loop never blocked,
the invalidation task, sync/async interoperability, and the check that the
sync and async classes are thin shells with matching signatures.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import inspect
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import sqlalchemy as sa

from tests.conftest import REDIS_URL
from tests.loopwatch import LoopWatch, loop_watch
from tieredstore import BackendUnavailable, LockTimeout, SessionNotFound
from tieredstore.aio import AsyncBaseStore, AsyncMemoryStore, AsyncTieredStore
from tieredstore.base import BaseStore
from tieredstore.store import TieredStore
from tieredstore.tiers.archive import ArchiveStore, AsyncArchiveStore, create_async_engine
from tieredstore.tiers.memory import MemoryStore
from tieredstore.tiers.redis import AsyncRedisStore, RedisStore

# Async tiered configurations (the tiers present), built inside the running loop.
CONFIGS = ["memory-redis-pg", "memory-redis-pg-write_through", "redis-pg", "memory-redis",
           "memory-sqlite"]  # fmt: skip


@pytest.fixture
def namespace() -> str:
    return f"async-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tiered(request: pytest.FixtureRequest, redis_prefix: str, namespace: str) -> Any:
    """An async context manager factory building an AsyncTieredStore for a config."""
    config: str = request.param
    database_url = (
        request.getfixturevalue("pg_url")
        if "pg" in config
        else request.getfixturevalue("sqlite_url")
        if "sqlite" in config
        else None
    )

    @asynccontextmanager
    async def make(**options: Any) -> AsyncIterator[AsyncTieredStore]:
        client = engine = None
        if "redis" in config:
            client = redis.asyncio.Redis.from_pool(
                redis.asyncio.BlockingConnectionPool.from_url(REDIS_URL, max_connections=50)
            )
        if database_url is not None:
            engine = create_async_engine(database_url, pool_size=20, max_overflow=20)
        store = AsyncTieredStore.from_clients(
            redis=client,
            engine=engine,
            namespace=namespace,
            prefix=redis_prefix,
            memory_max_bytes=64 * 2**20 if "memory" in config else None,
            durability="write_through" if "write_through" in config else "archive",
            **options,
        )
        try:
            async with store:
                yield store
        finally:
            if client is not None:
                await client.aclose()
            if engine is not None:
                await engine.dispose()

    return make


@pytest.mark.parametrize("tiered", CONFIGS, indirect=True)
def test_200_tasks_append_to_20_sessions(tiered: Any) -> None:
    tasks_n, sessions_n, per_task = 200, 20, 10

    async def writer(store: AsyncTieredStore, n: int) -> None:
        sid = f"s{n % sessions_n}"
        for i in range(per_task):
            await store.append(sid, {"role": "user", "content": f"{n}:{i}", "task": n, "i": i})

    async def main() -> None:
        async with tiered() as store:
            started = time.perf_counter()
            await asyncio.gather(*(writer(store, n) for n in range(tasks_n)))
            elapsed = time.perf_counter() - started
            for s in range(sessions_n):
                history = await store.load(f"s{s}")
                assert len(history) == tasks_n // sessions_n * per_task
                assert (await store.get(f"s{s}")).version == len(history)
                for n in range(s, tasks_n, sessions_n):
                    assert [m["i"] for m in history if m["task"] == n] == list(range(per_task))
            print(f"{tasks_n * per_task} appends by {tasks_n} tasks in {elapsed:.2f} s")

    asyncio.run(main())


@pytest.mark.parametrize("tiered", CONFIGS, indirect=True)
def test_no_call_blocks_the_event_loop(tiered: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No call of the async API makes a blocking call on the loop's thread.

    :mod:`tests.loopwatch` records every blocking primitive (sleep, blocking
    socket I/O, name resolution, sync psycopg, sqlite3, thread waits) called on
    the loop thread, and each loop step's CPU time (``time.thread_time``):
    neither depends on how loaded the machine is. A step may spend at most
    100 ms of CPU (the slowest, closing the store's pools, takes ~15 ms; garbage
    collections are not charged to steps). The objects the test process already holds are frozen out
    of the garbage collector, so a full collection over pytest's heap is not
    charged to a step (servers use ``gc.freeze()`` for the same reason).
    """

    async def session_work(store: AsyncTieredStore, n: int) -> None:
        sid = f"w{n}"
        await store.save(sid, [{"role": "system", "content": "rules"}], metadata={"n": n})
        async with store.conversation(sid, last=10, lock=True) as conv:
            conv.add(
                {"role": "user", "content": "x" * 20_000}, {"role": "assistant", "content": "ok"}
            )
        for i in range(5):
            await store.append(sid, {"role": "user", "content": f"m{i}"})
            await store.load(sid, last=3)
        await store.get(sid)
        await store.merge_metadata(sid, {"title": f"t{n}"})
        await store.count(sid)
        await store.history(sid, limit=5)
        await store.fork(sid, f"{sid}-fork")
        await store.list(limit=10)
        async with store.lock(sid, timeout=5):
            await store.exists(sid)
        await store.delete(f"{sid}-fork")

    async def main(watch: LoopWatch) -> None:
        with watch.watching():
            async with tiered() as store:
                await asyncio.gather(*(session_work(store, n) for n in range(40)))

    gc.collect()
    gc.freeze()
    try:
        with loop_watch(monkeypatch) as watch:
            asyncio.run(main(watch), debug=True)  # debug: also checks thread-safety
    finally:
        gc.unfreeze()
    cpu, step = watch.slowest_step
    print(f"{watch.steps} loop steps, {watch.step_cpu_total:.2f} s CPU, slowest "
          f"{cpu * 1000:.1f} ms CPU: {step[:150]}")
    assert watch.steps > 1000  # the watch saw the work
    assert watch.blocking == []
    assert cpu < 0.1, step


def test_the_loop_watch_sees_blocking_calls(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch of the test above catches each kind of blocking call (not a vacuous check)."""
    import concurrent.futures
    import sqlite3

    import psycopg

    dsn = sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def main(watch: LoopWatch) -> None:
        with watch.watching():
            await asyncio.sleep(0.001)  # fine
            time.sleep(0.001)
            redis.Redis.from_url(REDIS_URL).ping()
            with psycopg.connect(dsn) as conn:
                conn.execute("SELECT 1")
            sqlite3.connect(":memory:").close()
            socket.getaddrinfo("127.0.0.1", 6379)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                # the task ends half a second after result() is called, so result()
                # always waits (a task quicker than a descheduled loop would not)
                gate = threading.Event()
                future = pool.submit(gate.wait, 30)
                threading.Timer(0.5, gate.set).start()
                future.result()
            sum(i * i for i in range(3_000_000))  # a step computing for long

    with loop_watch(monkeypatch) as watch:
        asyncio.run(main(watch))
    kinds = {entry.split(" ")[0] for entry in watch.blocking}
    assert kinds >= {"time.sleep", "socket.connect", "socket.sendall", "socket.recv_into",
                     "psycopg.waiting.wait_conn", "psycopg.waiting.wait", "sqlite3.connect",
                     "socket.getaddrinfo", "threading.Condition.wait"}, watch.blocking
    assert watch.slowest_step[0] > 0.05


def test_invalidation_task_keeps_memory_tiers_coherent(
    redis_prefix: str, namespace: str, redis_client: Any
) -> None:
    async def main() -> None:
        clients = [redis.asyncio.Redis.from_url(REDIS_URL) for _ in range(2)]
        a, b = (
            AsyncTieredStore.from_clients(redis=c, namespace=namespace, prefix=redis_prefix)
            for c in clients
        )
        async with a, b:
            await a.save("s", [{"role": "user", "content": "v1"}])
            assert (await b.get("s")).tier == "redis"
            assert (await b.get("s")).tier == "memory"
            await a.append("s", {"role": "user", "content": "v2"})
            deadline = time.monotonic() + 5
            while b.memory is not None and b.memory.peek("s") is not None:
                assert time.monotonic() < deadline, "invalidation never arrived"
                await asyncio.sleep(0.005)
            assert [m["content"] for m in await b.load("s")] == ["v1", "v2"]
            stats = b.stats()
            assert stats["invalidation_channel_healthy"] is True
            assert stats["invalidations_received"] >= 1
            # Kill the listener's connection: it reconnects and flushes memory.
            assert b.listener is not None
            name = b.listener.client_name
            for info in redis_client.client_list():
                if info.get("name") == name:
                    redis_client.client_kill_filter(_id=info["id"])
            deadline = time.monotonic() + 10
            while b.listener.subscriptions < 2:
                assert time.monotonic() < deadline, "listener did not resubscribe"
                await asyncio.sleep(0.01)
            assert b.stats()["invalidation_disconnects"] >= 1
            await a.append("s", {"role": "user", "content": "v3"})
            deadline = time.monotonic() + 5
            while len(await b.load("s")) != 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
        for c in clients:
            await c.aclose()

    asyncio.run(main())


def test_sync_and_async_stores_share_data(
    redis_client: Any, redis_prefix: str, namespace: str
) -> None:
    sync_store = TieredStore.from_clients(
        redis=redis_client, namespace=namespace, prefix=redis_prefix
    )
    sync_store.save("s", [{"role": "user", "content": "from sync"}], user_id="u")

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        async with AsyncTieredStore.from_clients(
            redis=client, namespace=namespace, prefix=redis_prefix
        ) as store:
            assert await store.load("s") == [{"role": "user", "content": "from sync"}]
            await store.append("s", {"role": "assistant", "content": "from async"})
            assert (await store.list(user_id="u")).ids == ["s"]
        await client.aclose()

    asyncio.run(main())
    assert [m["content"] for m in sync_store.load("s")] == ["from sync", "from async"]
    sync_store.close()


def test_async_redis_store_translates_driver_errors() -> None:
    async def main() -> None:
        store = AsyncRedisStore.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        with pytest.raises(BackendUnavailable) as info:
            await store.load("s")
        assert isinstance(info.value.__cause__, redis.exceptions.RedisError)
        await store.aclose()
        await store.aclose()

    asyncio.run(main())


def test_async_tiered_store_reports_a_dead_redis() -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        store = AsyncTieredStore.from_clients(redis=client, memory_max_bytes=None)
        async with store:
            with pytest.raises(BackendUnavailable):
                await store.load("s")
            with pytest.raises(BackendUnavailable):
                await store.append("s", {"role": "user", "content": "lost"})
            assert store.stats()["redis"]["errors"] == 2  # the read and the write
        await client.aclose()

    asyncio.run(main())


def test_embedded_default_shares_the_sync_stores_file(tmp_path: Path, monkeypatch: Any) -> None:
    """``AsyncTieredStore()`` is memory + SQLite (aiosqlite) in the data dir, like the sync one."""
    monkeypatch.setenv("TIEREDSTORE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TIEREDSTORE_REDIS_URL", raising=False)
    monkeypatch.delenv("TIEREDSTORE_DATABASE_URL", raising=False)
    sync_store = TieredStore()
    sync_store.save("s", [{"role": "user", "content": "hi"}])

    async def main() -> None:
        async with AsyncTieredStore() as store:
            assert store.stats()["tiers"] == ["memory", "archive"]
            assert (await store.get("s")).tier == "archive"
            await store.append("s", {"role": "assistant", "content": "hello"})
            assert len(await store.load("s")) == 2
            # Without Redis the lock is process-local, and shared with the sync store.
            async with store.lock("s", blocking_timeout=0):
                with pytest.raises(LockTimeout):
                    sync_store.lock("s", blocking_timeout=0).acquire()

    try:
        asyncio.run(main())
        assert len(sync_store.load("s")) == 2
    finally:
        sync_store.close()
    assert (tmp_path / "archive.db").exists()


def test_async_memory_store_is_the_memory_store() -> None:
    async def main() -> None:
        async with AsyncMemoryStore(max_bytes=10_000) as store:
            await store.save("s", [{"role": "user", "content": "hi"}])
            assert isinstance(store.inner, MemoryStore)
            assert store.inner.load("s") == [{"role": "user", "content": "hi"}]
            with pytest.raises(SessionNotFound):
                await store.load("missing")

    asyncio.run(main())


# -- the shells are thin, and twins -------------------------------------------------

# The memory tier is synchronous in both worlds (it never blocks): its tier
# hooks exist once, on MemoryStore, which AsyncMemoryStore wraps as ``inner``.
_MEMORY_HOOKS = {"peek", "put_entry", "replace_if", "invalidate", "clear", "stats"}
# What the (sync) maintenance functions use of the Redis tier.
_REDIS_UPKEEP = {
    "bucket_count", "now_ms", "claim_buckets", "renew_bucket", "release_buckets",
    "lap_state", "set_place", "finish_lap", "count_expired", "count_idle", "count_indexed",
    "idle_keys", "ranked", "capture_many", "live_expiry", "window_sizes", "evict_many",
    "trim_many", "purge_batch", "sweep",
}
TWINS = [
    (BaseStore, AsyncBaseStore, set()),
    (MemoryStore, AsyncMemoryStore, _MEMORY_HOOKS | {"purge_expired"}),
    (RedisStore, AsyncRedisStore, _REDIS_UPKEEP),
    (ArchiveStore, AsyncArchiveStore, set()),
    (TieredStore, AsyncTieredStore, set()),
]

# Constructors, drivers and lifecycle may branch; operations may not.
_ALLOWED = {
    "__init__",
    "_drive",
    "_drive_plan",
    "_answer",
    "_send",
    "_eval",
    "_cluster_calls",
    "_used_memory",
    "_in_transaction",
    "_listen",
    "__aenter__",
    "aclose",
    "close",
    "_aclose",
    "_close",
}
_BRANCHES = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.Try,
    ast.With,
    ast.AsyncWith,
    ast.IfExp,
    ast.BoolOp,
    ast.comprehension,
    ast.Raise,
)


def _methods(cls: type) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    return {
        node.name: node
        for node in body.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


@pytest.mark.parametrize(
    "cls",
    [
        AsyncBaseStore,
        AsyncMemoryStore,
        AsyncRedisStore,
        AsyncArchiveStore,
        AsyncTieredStore,
        RedisStore,
        ArchiveStore,
        TieredStore,
    ],
    ids=lambda c: c.__name__,
)
def test_shells_hold_no_logic(cls: type) -> None:
    """Every operation of a shell is straight-line: validate via the core, do the I/O."""
    for name, node in _methods(cls).items():
        if name in _ALLOWED or name.startswith("from_"):
            continue
        statements = [s for s in node.body if not isinstance(s, ast.Expr | ast.Pass)]
        assert len(statements) <= 2, f"{cls.__name__}.{name} has {len(statements)} statements"
        branches = [type(n).__name__ for n in ast.walk(node) if isinstance(n, _BRANCHES)]
        assert not branches, f"{cls.__name__}.{name} branches: {branches}"


@pytest.mark.parametrize(
    "sync_cls, async_cls, sync_only", TWINS, ids=[a.__name__ for _, a, _ in TWINS]
)
def test_async_twins_have_the_same_operations(
    sync_cls: type, async_cls: type, sync_only: set[str]
) -> None:
    """Same names, same parameters; what does I/O is a coroutine in the twin."""
    skip = {"close", "__enter__", "__exit__", *sync_only}
    public = [
        name
        for name in dir(sync_cls)
        if (not name.startswith("_") or name in {"_save", "_append", "_load", "_delete"})
        and callable(getattr(sync_cls, name))
        and name not in skip
    ]
    for name in public:
        assert hasattr(async_cls, name), f"{async_cls.__name__} lacks {name}"
        sync_sig = inspect.signature(getattr(sync_cls, name))
        async_sig = inspect.signature(getattr(async_cls, name))
        assert list(sync_sig.parameters) == list(async_sig.parameters), name
        for p_sync, p_async in zip(
            sync_sig.parameters.values(), async_sig.parameters.values(), strict=True
        ):
            assert (p_sync.kind, p_sync.default) == (p_async.kind, p_async.default), name
    assert hasattr(async_cls, "aclose") and inspect.iscoroutinefunction(async_cls.aclose)
