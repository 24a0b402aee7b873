"""A primary of a private Redis Cluster is killed under a write_through TieredStore.

A writer thread keeps appending to sessions in every bucket and records each
acknowledged append; one primary is SIGKILLed and a replica takes over. The
writer sees only typed tieredstore errors meanwhile and resumes on the same
store; afterwards every acknowledged message is loadable in order, ``list()``
shows every session, and the memory tier's sharded listener is subscribed on
the new topology again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.faults.cluster_support import msg, spread_ids, wait_until
from tests.servers import RedisClusterServers
from tieredstore import BackendUnavailable, TieredStoreError
from tieredstore.store import TieredStore
from tieredstore.tiers.redis import DEFAULT_BUCKETS

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server and redis-cli are needed for a private cluster",
)


@pytest.fixture
def private_cluster() -> Iterator[RedisClusterServers]:
    """3 primaries, 3 replicas, a short node timeout; every node killed whatever the outcome."""
    with RedisClusterServers(masters=3, replicas=1, node_timeout_ms=1000) as servers:
        yield servers


def cluster_client(servers: RedisClusterServers) -> RedisCluster:
    """A client that knows every node (any may be the one left to ask) and gives up fast."""
    return RedisCluster(
        startup_nodes=[ClusterNode(servers.host, port) for port in servers.ports],
        socket_timeout=1,
        socket_connect_timeout=1,
    )


class Ledger:
    """What a writer was told: per session the acknowledged ``(version, message)``s
    in order, the messages whose append failed (outcome unknown), error counts."""

    def __init__(self, sids: list[str]) -> None:
        self.sids = sids
        self.acked: dict[str, list[tuple[int, dict[str, Any]]]] = {sid: [] for sid in sids}
        self.failed: dict[str, list[dict[str, Any]]] = {sid: [] for sid in sids}
        self.typed: Counter[str] = Counter()
        self.raw: list[BaseException] = []
        self.count = 0

    def ok(self, sid: str, version: int, message: dict[str, Any]) -> None:
        self.acked[sid].append((version, message))
        self.count += 1

    def error(self, sid: str, message: dict[str, Any], exc: BaseException) -> None:
        self.failed[sid].append(message)
        if isinstance(exc, TieredStoreError):
            self.typed[type(exc).__name__] += 1
        else:
            self.raw.append(exc)

    def acked_total(self) -> int:
        return self.count


class Writer(Ledger):
    """Appends round-robin to ``sids`` on one store from a thread until stopped
    (bounded in count), keeping the ledger."""

    def __init__(self, store: TieredStore, sids: list[str]) -> None:
        super().__init__(sids)
        self.store = store
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="failover-writer")

    def _run(self) -> None:
        for n in range(200_000):
            if self.stop.is_set():
                return
            sid = self.sids[n % len(self.sids)]
            message = msg(f"{sid}-{n}")
            try:
                version = self.store.append(sid, message)
            except Exception as exc:  # typed or not: the test tells them apart
                self.error(sid, message, exc)
                self.stop.wait(0.01)
                continue
            self.ok(sid, version, message)


@pytest.mark.parametrize("durability", ["write_through", "archive"])
def test_primary_killed_under_writes_then_the_same_store_resumes(
    private_cluster: RedisClusterServers, pg_engine: Any, durability: str
) -> None:
    """write_through: the archive takes the writes Redis cannot, so nothing acknowledged
    is lost. archive: Redis alone holds the hot data, so the writer sees typed errors
    while the shard is down (and Redis's asynchronous replication may lose the killed
    primary's last writes: there only what was acknowledged after the failover, and
    everything on the other shards, must be kept)."""
    servers = private_cluster
    namespace = f"failover-{uuid.uuid4().hex[:10]}"
    client = cluster_client(servers)
    store = TieredStore.from_clients(
        redis=client, engine=pg_engine, namespace=namespace, durability=durability,
        stale_after=0.5,
    )
    writer: Writer | None = None
    try:
        listener = store.listener
        assert listener is not None and listener.sharded
        wait_until(lambda: listener.healthy, what="listener subscribed on every shard")
        sids = spread_ids("f", DEFAULT_BUCKETS, 2)
        writer = Writer(store, sids)
        writer.thread.start()
        wait_until(lambda: writer is not None and writer.acked_total() >= 100, timeout=60,
                   what="appends before the kill")
        assert store.redis is not None
        keys = store.redis.keys
        victim = int(client.get_node_from_key(keys.meta(sids[0])).port)
        on_victim = {sid for sid in sids if client.get_node_from_key(keys.meta(sid)).port
                     == victim}
        subscriptions = listener.subscriptions
        servers.kill(victim)
        promoted = servers.wait_for_failover(victim, timeout=60)
        at_failover = writer.acked_total()
        settled = {sid: len(writer.acked[sid]) for sid in sids}
        sent = store.invalidations_sent
        # The same store resumes: appends are acknowledged again, and reach Redis
        # again (its circuit breaker closed, every write script announcing itself).
        wait_until(lambda: writer is not None and writer.acked_total() >= at_failover + 300,
                   timeout=60, what="appends after the failover")
        wait_until(lambda: store.redis is not None and store.redis.breaker.state == "closed"
                   and store.invalidations_sent >= sent + 300,
                   timeout=60, what="writes reaching Redis again after the failover")
        wait_until(lambda: listener.healthy and listener.subscriptions > subscriptions,
                   timeout=60, what="the listener resubscribed after the failover")
        writer.stop.set()
        writer.thread.join(timeout=60)
        assert not writer.thread.is_alive()
        breaker = store.stats()["redis"]["breaker"]
        print(f"\n{durability}: killed primary {victim}, promoted {promoted}: "
              f"{writer.acked_total()} appends acknowledged, failed {dict(writer.typed)}, "
              f"raw {len(writer.raw)}; Redis failures {breaker['failures']}, breaker opened "
              f"{breaker['opened']}, rejected "
              f"{breaker['rejected']}; listener subscriptions {listener.subscriptions}")
        assert writer.raw == [], f"untyped errors escaped: {writer.raw[:3]!r}"
        assert breaker["failures"] >= 1, "the store never noticed the dead primary"
        if durability == "archive":
            assert sum(writer.typed.values()) > 0, "no append failed while a shard was down"
            for sid in on_victim:  # what only the dead primary may have held is not checked
                writer.acked[sid] = writer.acked[sid][settled[sid]:]
        twice = check_nothing_acknowledged_lost(servers, pg_engine, namespace, writer,
                                                archived=durability == "write_through")
        assert twice == {}, f"messages stored twice: {twice}"
    finally:
        if writer is not None:
            writer.stop.set()
            writer.thread.join(timeout=60)
        store.close()
        client.close()


def test_a_connection_torn_down_under_a_call_is_a_typed_error() -> None:
    """What the asyncio cluster client raised in the failover above when it closed a
    node's connection under a task writing on it: redis-py's own AttributeError. The
    Redis tier calls it a lost connection; the same error from other code stays a bug."""
    from redis.asyncio.connection import Connection

    from tieredstore.tiers.redis.errors import driver_fault, translate

    async def write_on_a_closed_connection() -> None:
        await Connection(host="127.0.0.1", port=1)._send_packed_command([b"PING"])

    with pytest.raises(AttributeError) as raised:
        asyncio.run(write_on_a_closed_connection())
    assert driver_fault(raised.value)
    assert isinstance(translate(raised.value), BackendUnavailable)
    try:
        None.writelines  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as ours:
        assert not driver_fault(ours)


def check_nothing_acknowledged_lost(
    servers: RedisClusterServers, pg_engine: Any, namespace: str, writer: Ledger,
    *, archived: bool,
) -> dict[str, list[str]]:
    """Read back through a fresh store and client: every acknowledged message, in
    order; anything else only from appends that failed (their outcome unknown) or
    were not checked. ``archived``: the archive holds the same history. Returns the
    messages found more than once, per session (the callers judge them)."""
    client = cluster_client(servers)
    fresh = TieredStore.from_clients(
        redis=client, engine=pg_engine, namespace=namespace, memory_max_bytes=None
    )
    twice: dict[str, list[str]] = {}
    try:
        assert set(fresh.list(limit=1000).ids) == set(writer.sids)
        for sid in writer.sids:
            versions = [v for v, _ in writer.acked[sid]]
            assert all(a < b for a, b in itertools.pairwise(versions)), (
                f"{sid}: versions not increasing: {versions}")
            full = fresh.load(sid, full=True)
            counts = Counter(m["content"] for m in full)
            if any(n > 1 for n in counts.values()):
                twice[sid] = [content for content, n in counts.items() if n > 1]
            acked = [m for _, m in writer.acked[sid]]
            lost = [m for m in acked if m not in full]
            assert lost == [], f"{sid}: {len(lost)} acknowledged messages lost: {lost[:3]}"
            first_seen = list(dict.fromkeys(m["content"] for m in full))
            contents = {m["content"] for m in acked}
            assert [c for c in first_seen if c in contents] == [m["content"] for m in acked], (
                f"{sid}: acknowledged messages out of order")
            if archived:
                extra = [m for m in full if m not in acked]
                assert all(m in writer.failed[sid] for m in extra), f"{sid}: unknown {extra[:3]}"
                assert fresh.archive is not None
                assert fresh.archive.load(sid) == full, f"{sid}: the archive diverged from Redis"
    finally:
        fresh.close()
        client.close()
    return twice


@pytest.mark.xfail(
    strict=False,
    reason="known open bug: an append whose Redis reply is lost in the failover after the "
    "client's retries are spent is redone in the archive alone, so a version can repeat or "
    "a record be absorbed twice (2 of 3 full-suite runs); the sync variants pass",
)
def test_async_store_resumes_and_resubscribes_after_a_failover(
    private_cluster: RedisClusterServers, pg_url: str, pg_engine: Any
) -> None:
    """The asyncio twin: tasks append on one AsyncTieredStore (write_through) across a
    killed primary; only typed errors, nothing acknowledged lost, and its listener
    task resubscribes on the new topology."""
    from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from tieredstore.aio import AsyncTieredStore
    from tieredstore.tiers.archive import create_async_engine

    servers = private_cluster
    namespace = f"afailover-{uuid.uuid4().hex[:10]}"
    ledger = Ledger(spread_ids("g", DEFAULT_BUCKETS, 1))

    async def main() -> None:
        client = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(servers.host, port) for port in servers.ports],
            socket_timeout=1, socket_connect_timeout=1,
        )
        engine = create_async_engine(pg_url)
        store = AsyncTieredStore.from_clients(
            redis=client, engine=engine, namespace=namespace, durability="write_through",
            stale_after=0.5,
        )
        stop = asyncio.Event()

        async def write(sid: str) -> None:
            for n in range(100_000):
                if stop.is_set():
                    return
                message = msg(f"{sid}-{n}")
                try:
                    version = await store.append(sid, message)
                except Exception as exc:  # typed or not: the test tells them apart
                    ledger.error(sid, message, exc)
                    await asyncio.sleep(0.01)
                    continue
                ledger.ok(sid, version, message)

        async def until(predicate: Any, what: str, timeout: float = 60) -> None:
            deadline = asyncio.get_running_loop().time() + timeout
            while not predicate():
                assert asyncio.get_running_loop().time() < deadline, what
                await asyncio.sleep(0.01)

        try:
            async with store:
                listener = store.listener
                assert listener is not None and listener.sharded
                await until(lambda: listener.healthy, "listener subscribed")
                writers = [asyncio.create_task(write(sid)) for sid in ledger.sids]
                await until(lambda: ledger.acked_total() >= 100, "appends before the kill")
                assert store.redis is not None
                key = store.redis.keys.meta(ledger.sids[0])
                victim = int(client.get_node_from_key(key).port)
                subscriptions = listener.subscriptions
                servers.kill(victim)
                await asyncio.to_thread(servers.wait_for_failover, victim, 60)
                at_failover = ledger.acked_total()
                sent = store.invalidations_sent
                await until(lambda: ledger.acked_total() >= at_failover + 300,
                            "appends after the failover")
                await until(lambda: store.invalidations_sent >= sent + 300,
                            "writes reaching Redis again")
                await until(lambda: listener.healthy and listener.subscriptions > subscriptions,
                            "the listener resubscribed")
                stop.set()
                await asyncio.gather(*writers)
                print(f"\nasync: {ledger.acked_total()} appends acknowledged, failed "
                      f"{dict(ledger.typed)}, raw {[repr(e) for e in ledger.raw[:3]]}, "
                      f"listener subscriptions {listener.subscriptions}")
        finally:
            stop.set()
            await store.aclose()
            await client.aclose()
            await engine.dispose()

    asyncio.run(main())
    assert ledger.raw == [], f"untyped errors escaped: {ledger.raw[:3]!r}"
    twice = check_nothing_acknowledged_lost(servers, pg_engine, namespace, ledger, archived=True)
    # A fenced copy reconciled twice (Redis failing again before the first
    # reconciliation replaced it) must not have its outbox absorbed twice.
    assert not twice, f"outbox records absorbed twice: {twice}"


def test_a_write_the_failover_lost_in_redis_survives_in_write_through(
    private_cluster: RedisClusterServers, pg_engine: Any
) -> None:
    """The worst case of the failover above, made certain: the replica is frozen and cut
    from its primary, one append is acknowledged (Redis primary and archive), then the
    primary dies and the replica, which never got that append, takes over. Another app
    server appends next. Both acknowledged messages must be kept, in order, under
    growing versions, in Redis and the archive alike."""
    servers = private_cluster
    namespace = f"lost-{uuid.uuid4().hex[:10]}"
    client = cluster_client(servers)
    store = TieredStore.from_clients(redis=client, engine=pg_engine, namespace=namespace,
                                     durability="write_through", memory_max_bytes=None)
    sid, frozen = "s", None
    try:
        versions = [store.append(sid, msg(i)) for i in range(5)]
        assert store.redis is not None
        primary = int(client.get_node_from_key(store.redis.keys.meta(sid)).port)
        replica = servers.replica_of(primary)
        frozen = servers.pid(replica)
        os.kill(frozen, signal.SIGSTOP)  # it cannot reconnect and catch up
        with redis.Redis(host=servers.host, port=primary) as direct:
            assert direct.execute_command("CLIENT", "KILL", "TYPE", "replica") == 1
        versions.append(store.append(sid, msg("X")))  # acknowledged by primary and archive
        servers.kill(primary)
        os.kill(frozen, signal.SIGCONT)
        frozen = None
        assert servers.wait_for_failover(primary, timeout=60) == replica
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        store.close()
        client.close()
    other = cluster_client(servers)  # another app server, which never saw Redis fail
    try:
        later = TieredStore.from_clients(redis=other, engine=pg_engine, namespace=namespace,
                                         durability="write_through", memory_max_bytes=None)
        assert later.redis is not None
        deadline = time.monotonic() + 30
        while True:  # Redis itself, until it answers on the new topology
            try:
                in_redis = later.redis.load(sid)
                break
            except BackendUnavailable:
                assert time.monotonic() < deadline, "Redis did not come back"
                time.sleep(0.1)
        assert in_redis == [msg(i) for i in range(5)], "precondition: Redis lost X"
        versions.append(later.append(sid, msg("Y")))
        full = later.load(sid, full=True)
        assert later.archive is not None
        archived = later.archive.load(sid)
        later.close()
    finally:
        other.close()
    print(f"\nafter the failover: versions {versions}, history "
          f"{[m['content'] for m in full]}, archive {[m['content'] for m in archived]}")
    expected = [msg(i) for i in range(5)] + [msg("X"), msg("Y")]
    assert all(a < b for a, b in itertools.pairwise(versions)), versions
    assert full == expected
    assert archived == expected
