"""Sharded invalidation listeners (SSUBSCRIBE) against a real 3-master Redis Cluster.

A private cluster is started for this module on free loopback ports. Sixteen
channels ``t:{0}:inval`` .. ``t:{15}:inval`` spread over the three primaries.
Every scenario runs with the thread listener and the asyncio one (run on its
own loop thread, so one test body drives both): delivery of SPUBLISHed
invalidations on every shard, a killed shard connection, a migrated slot.
Plus the I/O-free core's planning and confirmation counting, and a sharded
listener on standalone Redis.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from tests.conftest import REDIS_URL
from tieredstore.coherence import (
    AsyncInvalidationListener,
    Generation,
    InvalidationListener,
    ListenerCore,
    SubscriptionLost,
    channel_slot,
    encode_invalidation,
)

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server and redis-cli are needed for a private cluster",
)

CHANNELS = [f"t:{{{i}}}:inval" for i in range(16)]
LISTENER_USER, LISTENER_PASSWORD = "inval-listener", "listener-secret"


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in time: {what or predicate}")
        time.sleep(0.01)


# -- the private cluster -----------------------------------------------------------


def _port_pair_free(port: int) -> bool:
    """``port`` and its cluster bus port (``port + 10000``) can both be bound."""
    for candidate in (port, port + 10000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def _free_cluster_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(30000, 55000)
        if port not in ports and _port_pair_free(port):
            ports.append(port)
    return ports


@dataclass
class Cluster:
    ports: list[int]
    admin: RedisCluster
    nodes: dict[str, redis.Redis] = field(default_factory=dict)  # "host:port" -> client
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def wait_ok(self) -> None:
        for client in self.nodes.values():
            wait_until(
                lambda c=client: c.execute_command("CLUSTER INFO").get("cluster_state") == "ok",
                timeout=60,
                what="cluster_state:ok",
            )

    def owner(self, channel: str) -> str:
        """The primary that serves ``channel``'s slot, asked afresh."""
        self.admin.nodes_manager.initialize()
        return str(self.admin.nodes_manager.get_node_from_slot(channel_slot(channel)).name)

    def listener_connections(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """Per node, the connections named ``name``."""
        return {
            node: [info for info in client.client_list() if info.get("name") == name]
            for node, client in self.nodes.items()
        }


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    tmp = tempfile.mkdtemp(prefix="tieredstore-cluster-")
    processes: list[subprocess.Popen[bytes]] = []
    admin: RedisCluster | None = None
    nodes: dict[str, redis.Redis] = {}
    try:
        ports = _free_cluster_ports(3)
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"{tmp}/nodes-{port}.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        tmp,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            nodes[f"127.0.0.1:{port}"] = redis.Redis(host="127.0.0.1", port=port)
            wait_until(lambda c=nodes[f"127.0.0.1:{port}"]: _answers(c), what="node up")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        found = Cluster(ports, RedisCluster(host="127.0.0.1", port=ports[0]), nodes)
        admin = found.admin
        found.processes = {
            f"127.0.0.1:{port}": process for port, process in zip(ports, processes, strict=True)
        }
        found.wait_ok()
        for client in nodes.values():
            # A user of the listeners' own: switching it off on one node keeps
            # a listener from resubscribing there, so its unhealthy spell can be seen.
            client.execute_command(
                "ACL", "SETUSER", LISTENER_USER, "on", f">{LISTENER_PASSWORD}", "~*", "&*", "+@all"
            )
        wait_until(lambda: len(found.admin.get_primaries()) == 3, what="three primaries")
        assert len({found.owner(channel) for channel in CHANNELS}) == 3, "channels not spread"
        yield found
    finally:
        if admin is not None:
            admin.close()
        for client in nodes.values():
            client.close()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


# -- one body for both listeners ---------------------------------------------------


class Recorder:
    """What a listener reported: invalidations in order, and flushes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.invalidations: list[tuple[str, Generation]] = []
        self.resubscribes = 0

    def on_invalidate(self, sid: str, generation: Generation) -> None:
        with self._lock:
            self.invalidations.append((sid, generation))

    def on_resubscribe(self) -> None:
        with self._lock:
            self.resubscribes += 1

    def heard(self) -> set[tuple[str, Generation]]:
        with self._lock:
            return set(self.invalidations)


class Running:
    """A started listener of either kind on the cluster, as the listener user."""

    def __init__(self, kind: str, port: int, recorder: Recorder) -> None:
        self.kind = kind
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        options: dict[str, Any] = {
            "sharded": True,
            "on_invalidate": recorder.on_invalidate,
            "on_resubscribe": recorder.on_resubscribe,
            "ping_interval": 0.5,
        }
        auth = {"username": LISTENER_USER, "password": LISTENER_PASSWORD}
        self.listener: InvalidationListener | AsyncInvalidationListener
        if kind == "sync":
            self._client: Any = RedisCluster(host="127.0.0.1", port=port, **auth)
            self.listener = InvalidationListener(self._client, CHANNELS, **options)
            self.listener.start(wait=20)
            return
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, daemon=True)
        self._thread.start()

        async def build() -> AsyncInvalidationListener:
            self._client = AsyncRedisCluster(host="127.0.0.1", port=port, **auth)
            listener = AsyncInvalidationListener(self._client, CHANNELS, **options)
            await listener.start(wait=20)
            return listener

        self.listener = self._call(build())

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def stop(self) -> None:
        listener = self.listener
        if isinstance(listener, InvalidationListener):
            listener.stop()
            self._client.close()
            return
        assert self._loop is not None and self._thread is not None
        self._call(listener.stop())
        self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture(params=["sync", "async"])
def running(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[tuple[Running, Recorder]]:
    recorder = Recorder()
    started = Running(request.param, cluster.ports[0], recorder)
    try:
        wait_until(lambda: started.listener.healthy, what="listener healthy")
        yield started, recorder
    finally:
        started.stop()


def publish_all(cluster: Cluster, round_: int) -> set[tuple[str, Generation]]:
    """SPUBLISH one invalidation on every channel; what the listener should hear."""
    expected = set()
    for index, channel in enumerate(CHANNELS):
        sid = f"s-{round_}-{index}"
        generation = (1_700_000_000_000 + round_, index + 1)
        cluster.admin.spublish(channel, encode_invalidation(*generation, sid))
        expected.add((sid, generation))
    return expected


def _shard_connections(cluster: Cluster, name: str) -> dict[str, list[dict[str, Any]]]:
    return {node: infos for node, infos in cluster.listener_connections(name).items() if infos}


# -- the scenarios -----------------------------------------------------------------


def test_every_shard_delivers_and_the_listener_is_healthy(
    running: tuple[Running, Recorder], cluster: Cluster
) -> None:
    started, recorder = running
    listener = started.listener
    assert listener.healthy and listener.subscriptions == 1 and recorder.resubscribes == 1
    assert listener.core.failures == 0, "a stable cluster is subscribed at the first attempt"
    owners = {cluster.owner(channel) for channel in CHANNELS}
    assert len(owners) == 3
    connections = _shard_connections(cluster, listener.client_name)
    assert set(connections) == owners, "one connection on each primary owning a channel"
    for node, infos in connections.items():
        assert len(infos) == 1
        owned = sum(cluster.owner(channel) == node for channel in CHANNELS)
        assert int(infos[0]["ssub"]) == owned and int(infos[0]["sub"]) == 0
    since = time.monotonic()
    wait_until(
        lambda: (
            set(listener.core.last_heard) == owners
            and all(at > since for at in listener.core.last_heard.values())
        ),
        what="a PING answered on every shard connection",
    )
    expected = publish_all(cluster, 1)
    wait_until(lambda: expected <= recorder.heard(), what="every channel's invalidation")
    assert listener.received >= len(CHANNELS)
    assert listener.disconnects == 0 and recorder.resubscribes == 1


def test_a_killed_shard_connection_resubscribes_everything(
    running: tuple[Running, Recorder], cluster: Cluster
) -> None:
    started, recorder = running
    listener = started.listener
    node = cluster.owner(CHANNELS[0])
    admin = cluster.nodes[node]
    subscriptions, disconnects = listener.subscriptions, listener.disconnects
    admin.execute_command("ACL", "SETUSER", LISTENER_USER, "off")
    try:
        (info,) = cluster.listener_connections(listener.client_name)[node]
        admin.client_kill_filter(_id=info["id"])
        # The listener cannot log in there again, so it must stay unhealthy.
        wait_until(lambda: not listener.healthy, what="unhealthy after the kill")
        assert listener.disconnects == disconnects + 1
        assert not listener.healthy
    finally:
        admin.execute_command("ACL", "SETUSER", LISTENER_USER, "on")
    wait_until(
        lambda: listener.healthy and listener.subscriptions > subscriptions,
        what="resubscribed",
    )
    assert listener.subscriptions == subscriptions + 1 == recorder.resubscribes
    connections = _shard_connections(cluster, listener.client_name)
    assert len(connections) == 3 and all(len(infos) == 1 for infos in connections.values())
    expected = publish_all(cluster, 2)
    wait_until(lambda: expected <= recorder.heard(), what="invalidations after resubscribing")


def test_a_silent_shard_makes_the_listener_unhealthy_until_it_answers(
    running: tuple[Running, Recorder], cluster: Cluster
) -> None:
    started, recorder = running
    listener = started.listener
    node = cluster.owner(CHANNELS[0])
    subscriptions, disconnects = listener.subscriptions, listener.disconnects
    pid = cluster.processes[node].pid
    os.kill(pid, signal.SIGSTOP)  # open sockets, no replies: only the PINGs can tell
    try:
        wait_until(lambda: listener.disconnects > disconnects, what="the silence noticed")
        assert not listener.healthy
    finally:
        os.kill(pid, signal.SIGCONT)
    cluster.wait_ok()
    wait_until(
        lambda: listener.healthy and listener.subscriptions > subscriptions,
        timeout=60,
        what="resubscribed after the silence",
    )
    assert recorder.resubscribes == listener.subscriptions
    expected = publish_all(cluster, 4)
    wait_until(lambda: expected <= recorder.heard(), what="invalidations after the silence")


def test_a_migrated_slot_is_followed_to_its_new_owner(
    running: tuple[Running, Recorder], cluster: Cluster
) -> None:
    started, recorder = running
    listener = started.listener
    owners = {channel: cluster.owner(channel) for channel in CHANNELS}
    counts = {node: list(owners.values()).count(node) for node in cluster.nodes}
    source = max(counts, key=lambda node: counts[node])
    target = min(counts, key=lambda node: counts[node])
    channel = next(c for c in CHANNELS if owners[c] == source)
    slot = channel_slot(channel)
    subscriptions, resubscribes = listener.subscriptions, recorder.resubscribes
    source_id = cluster.nodes[source].execute_command("CLUSTER MYID").decode()
    target_id = cluster.nodes[target].execute_command("CLUSTER MYID").decode()
    cluster.nodes[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
    cluster.nodes[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    cluster.nodes[target].execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    for node, client in cluster.nodes.items():  # the source last, as redis-cli does
        if node != target and node != source:
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    cluster.nodes[source].execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    assert cluster.owner(channel) == target
    wait_until(
        lambda: listener.healthy and listener.subscriptions > subscriptions,
        what="resubscribed after the move",
    )
    assert recorder.resubscribes > resubscribes
    assert listener.disconnects >= 1
    moved = {c: cluster.owner(c) for c in CHANNELS}
    for node, infos in _shard_connections(cluster, listener.client_name).items():
        (info,) = infos
        assert int(info["ssub"]) == list(moved.values()).count(node), node
    sid, generation = f"moved-{uuid.uuid4().hex[:6]}", (1_800_000_000_000, 7)
    cluster.admin.spublish(channel, encode_invalidation(*generation, sid))
    wait_until(lambda: (sid, generation) in recorder.heard(), what="the moved channel")
    expected = publish_all(cluster, 3)
    wait_until(lambda: expected <= recorder.heard(), what="every channel after the move")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_sharded_listener_on_standalone_redis(kind: str) -> None:
    """SSUBSCRIBE works on standalone Redis 7 too: one connection, one command per slot."""
    channels = [f"ts-test-{uuid.uuid4().hex[:8]}:{{{i}}}:inval" for i in range(4)]
    recorder = Recorder()
    publisher = redis.Redis.from_url(REDIS_URL)
    options: dict[str, Any] = {
        "sharded": True,
        "on_invalidate": recorder.on_invalidate,
        "on_resubscribe": recorder.on_resubscribe,
    }

    def publish() -> set[tuple[str, Generation]]:
        for index, channel in enumerate(channels):
            publisher.spublish(channel, encode_invalidation(1, index, f"x{index}"))
        return {(f"x{index}", (1, index)) for index in range(len(channels))}

    try:
        if kind == "sync":
            listener = InvalidationListener(redis.Redis.from_url(REDIS_URL), channels, **options)
            listener.start(wait=10)
            try:
                wait_until(lambda: listener.healthy)
                expected = publish()
                wait_until(lambda: expected <= recorder.heard())
            finally:
                listener.stop()
        else:

            async def main() -> None:
                client = redis.asyncio.Redis.from_url(REDIS_URL)
                listener = AsyncInvalidationListener(client, channels, **options)
                await listener.start(wait=10)
                try:
                    deadline = time.monotonic() + 20
                    while not listener.healthy:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.01)
                    expected = await asyncio.to_thread(publish)
                    while not expected <= recorder.heard():
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.01)
                finally:
                    await listener.stop()
                    await client.aclose()

            asyncio.run(main())
        assert recorder.resubscribes == 1
    finally:
        publisher.close()


# -- the I/O-free core -------------------------------------------------------------


def _core(channels: list[str], recorder: Recorder, *, sharded: bool = True) -> ListenerCore:
    return ListenerCore(
        channels,
        sharded=sharded,
        on_invalidate=recorder.on_invalidate,
        on_resubscribe=recorder.on_resubscribe,
    )


def test_core_plans_one_command_per_slot_on_each_owner() -> None:
    channels = ["a:{1}:inval", "a:{2}:inval", "b:{1}:inval", "a:{3}:inval"]
    owners = {"a:{1}:inval": "n1", "b:{1}:inval": "n1", "a:{2}:inval": "n2", "a:{3}:inval": "n1"}
    plan = _core(channels, Recorder()).plan(owners)
    assert plan == {
        "n1": [("a:{1}:inval", "b:{1}:inval"), ("a:{3}:inval",)],
        "n2": [("a:{2}:inval",)],
    }
    unsharded = _core(channels, Recorder(), sharded=False).plan(dict.fromkeys(channels, "n"))
    assert unsharded == {"n": [tuple(channels)]}


def test_core_flushes_once_when_every_connection_confirmed() -> None:
    recorder = Recorder()
    core = _core(["a:{1}", "a:{2}", "a:{3}"], recorder)
    core.begin(core.plan({"a:{1}": "n1", "a:{2}": "n2", "a:{3}": "n2"}))
    core.step("n2", {"type": "ssubscribe", "channel": b"a:{2}", "data": 1})
    core.step("n2", {"type": "smessage", "channel": b"a:{2}", "data": b"5 1 sid"})
    core.step("n2", {"type": "ssubscribe", "channel": b"a:{3}", "data": 2})
    assert recorder.resubscribes == 0 and not core.subscribed and not core.healthy
    core.step("n1", {"type": "ssubscribe", "channel": b"a:{1}", "data": 1})
    assert recorder.resubscribes == 1 and core.subscriptions == 1 and core.healthy
    assert recorder.invalidations == [("sid", (5, 1))]
    with pytest.raises(SubscriptionLost):
        core.step("n1", {"type": "sunsubscribe", "channel": b"a:{1}", "data": 0})
    with pytest.raises(SubscriptionLost):  # confirmed again: renewed underneath
        core.step("n2", {"type": "ssubscribe", "channel": b"a:{2}", "data": 1})
    core.failed(SubscriptionLost("moved"), expected=True)
    assert not core.healthy and core.disconnects == 1 and recorder.resubscribes == 1


def test_core_wants_a_channel() -> None:
    with pytest.raises(ValueError):
        _core([], Recorder())
