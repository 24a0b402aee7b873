"""The tiered store on a real Redis Cluster: coherence, races, the session lock.

Every test runs on the cluster of the ``cluster_url`` fixture (the shared dev
cluster when ``TIEREDSTORE_TEST_CLUSTER_URL`` answers, else a private one) and
the run's PostgreSQL. Sessions are spread over every bucket, so every shard,
its sharded invalidation channel and its scripts are exercised. Maintenance
and failover live in ``test_cluster_maintenance`` and ``test_cluster_failover``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tests.conftest import LoopThread, SyncFacade
from tests.faults.cluster_support import (
    cluster_nodes_of,
    msg,
    spanning_namespace,
    spread_ids,
    wait_until,
)
from tests.faults.test_consistency import gone_everywhere
from tests.test_locking import _HOLDER
from tieredstore import ArchiveStore, LockTimeout, SessionNotFound
from tieredstore.aio import AsyncTieredStore
from tieredstore.maintenance import archive_idle
from tieredstore.store import TieredStore
from tieredstore.tiers.redis import DEFAULT_BUCKETS

Factory = Callable[..., TieredStore]


@pytest.fixture
def namespace(cluster_client: RedisCluster) -> str:
    """A fresh namespace with buckets on every primary."""
    return spanning_namespace(cluster_client, "cluster", DEFAULT_BUCKETS)


@pytest.fixture
def make_cluster(make_tiered: Factory, cluster_client: RedisCluster) -> Factory:
    """TieredStores over the cluster and the run's PostgreSQL, in this test's namespace."""

    def make(**options: Any) -> TieredStore:
        options.setdefault("redis", cluster_client)
        return make_tiered(**options)

    return make


def cluster_store_url(cluster_url: str) -> str:
    """The store's URL form of a cluster node URL: ``redis+cluster://host:port/0``."""
    return "redis+cluster://" + cluster_url.split("://", 1)[1]


# -- cross-process coherence -----------------------------------------------------------


def _writer_process(
    conn: Any, redis_url: str, pg_url: str, namespace: str, prefix: str, sids: list[str],
    rounds: int,
) -> None:
    """Another process: on each "go", appends one message to every session and
    sends back the versions it got."""
    store = TieredStore.from_url(
        redis_url=redis_url, database_url=pg_url, namespace=namespace, prefix=prefix,
        memory_max_bytes=None,
    )
    try:
        assert store.redis is not None and store.redis.cluster
        conn.send("ready")
        for r in range(rounds):
            assert conn.recv() == "go"
            conn.send({sid: store.append(sid, msg(f"{sid}-{r}")) for sid in sids})
    finally:
        store.close()


def _parent_store(
    kind: str, request: pytest.FixtureRequest, make_cluster: Factory, namespace: str,
    redis_prefix: str,
) -> Any:
    """A store with a memory tier whose entries never age out while its listener
    is healthy (``stale_after`` an hour): only invalidations can refresh them."""
    if kind == "sync":
        return make_cluster(stale_after=3600)
    loop: LoopThread = request.getfixturevalue("loop_thread")
    store = AsyncTieredStore.from_clients(
        redis=request.getfixturevalue("async_cluster_client"),
        engine=request.getfixturevalue("async_pg_engine"),
        namespace=namespace, prefix=redis_prefix, stale_after=3600,
    )
    loop.run(store.__aenter__())  # starts the listener task on the loop
    facade = SyncFacade(store, loop)
    request.addfinalizer(facade.close)
    return facade


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_another_process_writes_in_every_bucket_and_memory_follows(
    kind: str, request: pytest.FixtureRequest, make_cluster: Factory, cluster_url: str,
    cluster_client: RedisCluster, pg_url: str, namespace: str, redis_prefix: str,
) -> None:
    rounds = 4
    store = _parent_store(kind, request, make_cluster, namespace, redis_prefix)
    listener = store.listener
    assert listener is not None and listener.sharded
    wait_until(lambda: listener.healthy, what="listener subscribed on every shard")
    sids = spread_ids("x", DEFAULT_BUCKETS, 3)
    assert store.redis is not None
    assert len(cluster_nodes_of(cluster_client, sids, store.redis.keys)) == len(
        cluster_client.get_primaries()
    ), "the sessions do not span every primary"
    for sid in sids:
        store.save(sid, [msg(f"{sid}-base")])
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(
        target=_writer_process,
        args=(theirs, cluster_store_url(cluster_url), pg_url, namespace, redis_prefix, sids,
              rounds),
    )
    child.start()
    subscriptions = listener.subscriptions
    try:
        assert ours.poll(60), "the writer process did not start"
        assert ours.recv() == "ready"
        for r in range(rounds):
            for sid in sids:  # cache every session in memory first
                store.get(sid)
                assert store.get(sid).tier == "memory", sid
            ours.send("go")
            assert ours.poll(60), "the writer process did not answer"
            versions: dict[str, int] = ours.recv()
            pending = set(sids)

            def caught_up(pending: set[str] = pending, versions: dict[str, int] = versions,
                          r: int = r) -> bool:
                for sid in list(pending):
                    session = store.get(sid)
                    if session.version == versions[sid]:
                        assert session.messages[-1] == msg(f"{sid}-{r}"), sid
                        pending.discard(sid)
                return not pending

            wait_until(caught_up, timeout=20, what=f"round {r}: new versions seen")
    finally:
        child.join(30)
        if child.is_alive():  # pragma: no cover - only on failure
            child.kill()
            child.join()
    assert child.exitcode == 0
    stats = store.stats()
    print(f"\n{kind}: {rounds * len(sids)} writes by another process in {DEFAULT_BUCKETS} "
          f"buckets, {stats['invalidations_received']} invalidations received, "
          f"memory hits {stats['memory']['hits']}")
    # Seen through invalidations alone: never a reconnect (which flushes memory).
    assert listener.subscriptions == subscriptions and listener.disconnects == 0
    assert listener.healthy
    assert stats["invalidations_received"] >= rounds * len(sids)
    assert stats["memory"]["hits"] >= rounds * len(sids)


# -- archival races ----------------------------------------------------------------------


def archive_all(store: TieredStore, **limits: Any) -> Any:
    """archive_idle for every session, including those written this millisecond."""
    return archive_idle(store, archive_after=0, now=time.time() + 1, **limits)


def test_appends_racing_archive_idle_lose_nothing(make_cluster: Factory) -> None:
    """Idle sessions archived over and over while threads append to half of them."""
    store = make_cluster(memory_max_bytes=None, max_messages=6)
    sids = spread_ids("r", DEFAULT_BUCKETS, 8)
    base = 8
    for sid in sids:
        store.save(sid, [msg(f"{sid}-{j}") for j in range(base)])
    targets = random.Random(3).sample(sids, len(sids) // 2)
    acked: dict[str, list[tuple[int, dict[str, Any]]]] = {sid: [] for sid in sids}
    running = threading.Event()
    running.set()
    errors: list[BaseException] = []

    def appender(chunk: list[str], seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(100_000):  # bounded; ends when the archiver is done
                if not running.is_set():
                    return
                sid = rng.choice(chunk)
                message = msg(f"{sid}-a{n}")
                acked[sid].append((store.append(sid, message), message))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(targets[i::4], i)) for i in range(4)]
    for thread in threads:
        thread.start()
    changed = skipped = 0
    try:
        for rounds in range(1, 41):
            result = archive_all(store, batch_size=10)
            changed += result.changed
            skipped += result.skipped
            if rounds >= 4 and skipped and changed > len(sids):
                break
    finally:
        running.clear()
        for thread in threads:
            thread.join()
    assert not errors, errors
    appended = sum(len(v) for v in acked.values())
    print(f"\nappends racing archive_idle on the cluster: {appended} appends, {rounds} runs, "
          f"{changed} archived, {skipped} skipped (changed meanwhile)")
    assert skipped > 0, "no append landed between a copy and its eviction"
    while archive_all(store, batch_size=100).changed:
        pass
    for sid in sids:
        versions = [v for v, _ in acked[sid]]
        assert versions == sorted(set(versions)), f"{sid}: versions not increasing"
        expected = [msg(f"{sid}-{j}") for j in range(base)] + [m for _, m in acked[sid]]
        assert store.load(sid, full=True) == expected, sid


def test_delete_beats_copies_in_flight(make_cluster: Factory, pg_engine: Any,
                                       namespace: str) -> None:
    """A promotion and an archival that captured a session before it was deleted
    bring back nothing, in whichever bucket it lives."""
    store = make_cluster(memory_max_bytes=None)
    archive = ArchiveStore(pg_engine, namespace=namespace)
    hot = store.redis
    assert hot is not None
    for sid in spread_ids("d", DEFAULT_BUCKETS, 1):
        archive.save(sid + "c", [msg(1), msg(2)])
        snap = archive.snapshot(sid + "c")
        assert snap is not None and store.delete(sid + "c") is True
        assert hot.promote(snap) == -1
        store.save(sid, [msg(1)])
        (captured,) = hot.capture_many([sid])
        assert captured is not None and store.delete(sid) is True
        assert archive.absorb_many([captured.copy()]) == [False]
        assert hot.evict_many(hot.keys.bucket(sid), [captured]) == [False]
        for gone in (sid, sid + "c"):
            assert gone_everywhere(store, archive, gone), gone


def test_delete_racing_promoting_reads_resurrects_nothing(
    make_cluster: Factory, pg_engine: Any, namespace: str
) -> None:
    readers = [make_cluster(memory_max_bytes=None) for _ in range(2)]
    deleter = make_cluster(memory_max_bytes=None)
    checker = make_cluster(memory_max_bytes=None)
    archive = ArchiveStore(pg_engine, namespace=namespace)
    sids = spread_ids("p", DEFAULT_BUCKETS, 3)
    resurrected = []

    def read(store: TieredStore, sid: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        with contextlib.suppress(SessionNotFound):
            store.load(sid)

    for sid in sids:
        archive.save(sid, [msg(sid)])
        barrier = threading.Barrier(3)
        threads = [threading.Thread(target=read, args=(r, sid, barrier)) for r in readers]
        for thread in threads:
            thread.start()
        barrier.wait()
        deleter.delete(sid)
        for thread in threads:
            thread.join()
        if not gone_everywhere(checker, archive, sid):
            resurrected.append(sid)
    print(f"\ndelete vs promoting reads on the cluster: {len(sids)} rounds, "
          f"{len(resurrected)} resurrected")
    assert resurrected == []


def test_delete_racing_archive_idle_resurrects_nothing(
    make_cluster: Factory, pg_engine: Any, namespace: str
) -> None:
    writer = make_cluster(memory_max_bytes=None)
    worker = make_cluster(memory_max_bytes=None)
    checker = make_cluster(memory_max_bytes=None)
    archive = ArchiveStore(pg_engine, namespace=namespace)
    sids = spread_ids("a", DEFAULT_BUCKETS, 6)
    for sid in sids:
        writer.save(sid, [msg(sid), msg(sid + "-2")])
    running = threading.Event()
    running.set()
    failures: list[BaseException] = []

    def archiver() -> None:
        try:
            while running.is_set():
                archive_idle(worker, archive_after=0, batch_size=3, max_batches=4)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    thread = threading.Thread(target=archiver)
    thread.start()
    try:
        for sid in sids:
            writer.delete(sid)
    finally:
        running.clear()
        thread.join()
    assert not failures, failures
    archive_all(worker)
    resurrected = [sid for sid in sids if not gone_everywhere(checker, archive, sid)]
    print(f"\ndelete vs archive_idle on the cluster: {len(sids)} rounds, "
          f"{len(resurrected)} resurrected")
    assert resurrected == []
    writer.append(sids[0], msg("new"))  # a new history, never the deleted one's
    assert checker.get(sids[0]).version == 1
    assert checker.load(sids[0], full=True) == [msg("new")]


# -- the session lock --------------------------------------------------------------------


def test_lock_excludes_across_stores_and_threads(
    make_cluster: Factory, cluster_url: str
) -> None:
    """Threads of two stores (each with its own cluster client) bump counters in
    sessions of several buckets under the lock: no update is lost."""
    clients = [RedisCluster.from_url(cluster_url) for _ in range(2)]
    try:
        stores = [make_cluster(redis=c, memory_max_bytes=None) for c in clients]
        counters = spread_ids("k", DEFAULT_BUCKETS, 1)[:4]
        for sid in counters:
            stores[0].save(sid, [{"role": "system", "content": "0"}])
        errors: list[BaseException] = []
        held = {sid: 0 for sid in counters}

        def bump(n: int) -> None:
            store = stores[n % 2]
            try:
                for i in range(12):
                    sid = counters[(n + i) % len(counters)]
                    with store.lock(sid, timeout=10, blocking_timeout=30):
                        held[sid] += 1
                        assert held[sid] == 1, "two holders at once"
                        value = int(store.load(sid)[0]["content"])
                        store.save(sid, [{"role": "system", "content": str(value + 1)}])
                        held[sid] -= 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=bump, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert sum(int(stores[1].load(sid)[0]["content"]) for sid in counters) == 6 * 12
        lock = stores[0].lock(counters[0], timeout=10)
        with lock, pytest.raises(LockTimeout):
            stores[1].lock(counters[0], blocking_timeout=0.05).acquire()
    finally:
        for c in clients:
            c.close()


def test_async_lock_excludes_across_stores_and_tasks(
    cluster_url: str, redis_prefix: str, namespace: str
) -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    sid = spread_ids("ak", DEFAULT_BUCKETS, 1)[5]

    async def main() -> None:
        clients = [AsyncRedisCluster.from_url(cluster_url) for _ in range(2)]
        stores = [
            AsyncTieredStore.from_clients(redis=c, namespace=namespace, prefix=redis_prefix,
                                          memory_max_bytes=None)
            for c in clients
        ]
        try:
            await stores[0].save(sid, [{"role": "system", "content": "0"}])
            inside = 0

            async def bump(n: int) -> None:
                nonlocal inside
                store = stores[n % 2]
                for _ in range(8):
                    async with store.lock(sid, timeout=10, blocking_timeout=30):
                        inside += 1
                        assert inside == 1, "two holders at once"
                        value = int((await store.load(sid))[0]["content"])
                        await asyncio.sleep(0.001)
                        await store.save(sid, [{"role": "system", "content": str(value + 1)}])
                        inside -= 1

            await asyncio.gather(*(bump(n) for n in range(6)))
            assert (await stores[1].load(sid))[0]["content"] == str(6 * 8)
        finally:
            for store in stores:
                await store.aclose()
            for c in clients:
                await c.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_killed_holder_process_releases_the_cluster_lock_by_expiry(
    make_cluster: Factory, cluster_url: str, redis_prefix: str, namespace: str, mode: str
) -> None:
    store = make_cluster(memory_max_bytes=None)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, cluster_store_url(cluster_url), redis_prefix,
         namespace, mode],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"holding"
        assert store.lock("shared").locked()
        with pytest.raises(LockTimeout):
            store.lock("shared", blocking_timeout=0.05).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        with store.conversation("shared", lock=True, blocking_timeout=10) as conv:
            assert conv.history == (), "the killed block must not have written"
            conv.add({"role": "user", "content": "after the holder died"})
        assert store.load("shared") == [{"role": "user", "content": "after the holder died"}]
    finally:
        if holder.poll() is None:  # pragma: no cover - only on failure
            holder.kill()
            holder.wait()
