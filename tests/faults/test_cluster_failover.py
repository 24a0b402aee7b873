"""A primary of a private Redis Cluster is killed under a write_through TieredStore.

A writer thread keeps appending to sessions in every bucket and records each
acknowledged append; one primary is SIGKILLed and a replica takes over. The
writer sees only typed tieredstore errors meanwhile and resumes on the same
store; afterwards every acknowledged message is loadable in order, ``list()``
shows every session, and the memory tier's sharded listener is subscribed on
the new topology again.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from redis.cluster import ClusterNode, RedisCluster

from tests.faults.cluster_support import msg, spread_ids, wait_until
from tests.servers import RedisClusterServers
from tieredstore import TieredStoreError
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


class Writer:
    """Appends round-robin to ``sids`` on one store until stopped (bounded in count),
    recording what was acknowledged, what failed with a typed error, and anything else."""

    def __init__(self, store: TieredStore, sids: list[str]) -> None:
        self.store = store
        self.sids = sids
        self.acked: dict[str, list[tuple[int, dict[str, Any]]]] = {sid: [] for sid in sids}
        self.failed: dict[str, list[dict[str, Any]]] = {sid: [] for sid in sids}
        self.typed: Counter[str] = Counter()
        self.raw: list[BaseException] = []
        self.count = 0
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
            except TieredStoreError as exc:
                self.typed[type(exc).__name__] += 1
                self.failed[sid].append(message)
                self.stop.wait(0.01)
                continue
            except BaseException as exc:  # reported by the test
                self.raw.append(exc)
                self.failed[sid].append(message)
                continue
            self.acked[sid].append((version, message))
            self.count += 1

    def acked_total(self) -> int:
        return self.count


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
        check_nothing_acknowledged_lost(servers, pg_engine, namespace, writer,
                                        archived=durability == "write_through")
    finally:
        if writer is not None:
            writer.stop.set()
            writer.thread.join(timeout=60)
        store.close()
        client.close()


def check_nothing_acknowledged_lost(
    servers: RedisClusterServers, pg_engine: Any, namespace: str, writer: Writer,
    *, archived: bool,
) -> None:
    """Read back through a fresh store and client: every acknowledged message, in
    order, once; anything else only from appends that failed (their outcome unknown)
    or were not checked. ``archived``: the archive holds the same history."""
    client = cluster_client(servers)
    fresh = TieredStore.from_clients(
        redis=client, engine=pg_engine, namespace=namespace, memory_max_bytes=None
    )
    try:
        assert set(fresh.list(limit=1000).ids) == set(writer.sids)
        for sid in writer.sids:
            versions = [v for v, _ in writer.acked[sid]]
            assert all(a < b for a, b in itertools.pairwise(versions)), (
                f"{sid}: versions not increasing: {versions}")
            full = fresh.load(sid, full=True)
            assert len(full) == len({m["content"] for m in full}), f"{sid}: a message twice"
            acked = [m for _, m in writer.acked[sid]]
            lost = [m for m in acked if m not in full]
            assert lost == [], f"{sid}: {len(lost)} acknowledged messages lost: {lost[:3]}"
            assert [m for m in full if m in acked] == acked, f"{sid}: out of order"
            if archived:
                extra = [m for m in full if m not in acked]
                assert all(m in writer.failed[sid] for m in extra), f"{sid}: unknown {extra[:3]}"
                assert fresh.archive is not None
                assert fresh.archive.load(sid) == full, f"{sid}: the archive diverged from Redis"
    finally:
        fresh.close()
        client.close()
