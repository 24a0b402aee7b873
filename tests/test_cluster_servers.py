"""The Redis Cluster test servers: the session fixtures reach every primary, and a
private cluster fails over when a primary is killed, then serves every slot again."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from tests.conftest import LoopThread
from tests.servers import RedisClusterServers


def keys_for_every_slot(prefix: str = "slot") -> dict[int, str]:
    """One key per hash slot (found by trying names until all 16384 are covered)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < REDIS_CLUSTER_HASH_SLOTS:
        key = f"{prefix}-{i}"
        found.setdefault(key_slot(key.encode()), key)
        i += 1
    return found


def test_cluster_client_reads_back_keys_on_every_primary(
    cluster_client: Any, redis_prefix: str
) -> None:
    keys = [f"{redis_prefix}:cluster-check:{i}" for i in range(64)]
    for i, key in enumerate(keys):
        cluster_client.set(key, f"value-{i}")
    assert [cluster_client.get(key) for key in keys] == [f"value-{i}".encode() for i in range(64)]
    owners = {cluster_client.get_node_from_key(key).name for key in keys}
    primaries = {node.name for node in cluster_client.get_primaries()}
    assert owners == primaries


def test_async_cluster_client_sees_what_the_sync_one_wrote(
    cluster_client: Any, async_cluster_client: Any, loop_thread: LoopThread, redis_prefix: str
) -> None:
    keys = [f"{redis_prefix}:async-check:{i}" for i in range(16)]
    for key in keys:
        cluster_client.set(key, key)

    async def read() -> list[Any]:
        return [await async_cluster_client.get(key) for key in keys]

    assert loop_thread.run(read()) == [key.encode() for key in keys]


@pytest.fixture
def private_cluster() -> Iterator[RedisClusterServers]:
    """3 primaries and 3 replicas with a short node timeout; killed whatever the outcome."""
    servers = RedisClusterServers(masters=3, replicas=1, node_timeout_ms=1000)
    with servers:
        yield servers


def write_every_slot(servers: RedisClusterServers, timeout: float = 60.0) -> RedisCluster:
    """Write one key in every slot, retrying (new client) until the cluster takes them all."""
    keys = keys_for_every_slot()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = RedisCluster(host=servers.host, port=servers.live_ports()[0], socket_timeout=5)
        try:
            pipe = client.pipeline()
            for slot, key in keys.items():
                pipe.set(key, slot)
            pipe.execute()
            return client
        except Exception as exc:  # MOVED storms, a refused node: the topology is settling
            last = exc
            client.close()
        time.sleep(0.2)
    raise TimeoutError(f"the cluster did not take writes on every slot in {timeout}s: {last!r}")


@pytest.mark.slow
def test_killed_primary_fails_over_and_every_slot_takes_writes(
    private_cluster: RedisClusterServers,
) -> None:
    servers = private_cluster
    primaries = servers.primaries()
    assert len(primaries) == 3
    assert len(servers.ports) == 6
    victim, victim_pid = primaries[0]
    replica = servers.replica_of(victim)
    assert servers.pid(victim) == victim_pid

    servers.kill(victim)
    promoted = servers.wait_for_failover(victim, timeout=60)

    assert promoted == replica
    assert victim not in [port for port, _ in servers.primaries()]
    assert promoted in [port for port, _ in servers.primaries()]
    client = write_every_slot(servers)
    try:
        key = keys_for_every_slot()[0]
        assert client.get(key) == b"0"
    finally:
        client.close()


def test_stop_kills_every_node_and_can_repeat() -> None:
    servers = RedisClusterServers(masters=3, replicas=0, node_timeout_ms=1000)
    try:
        servers.start()
        pids = [pid for _, pid in servers.primaries()]
        folder = servers.dir
        assert len(pids) == 3 and folder is not None and folder.exists()
    finally:
        servers.stop()
    servers.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not folder.exists()
