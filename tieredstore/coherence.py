"""Cross-process coherence of memory tiers: the invalidation listener.

Every Redis write script publishes ``"<created_ms> <version> <session id>"``
on an invalidation channel in the same atomic step as the write (a delete
publishes ``"<now_ms> 0 <id>"``). On standalone Redis that is PUBLISH on one
channel per namespace; on Redis Cluster it is SPUBLISH on one channel per
bucket, each name carrying its bucket's hash tag, so the channels spread over
the shards. Each :class:`TieredStore` with a memory tier runs one listener
thread (an :class:`AsyncTieredStore`, one asyncio task) that drops any cached
session whose ``(created_ms, version)`` is older than the one announced. What
a message means, which connection subscribes what, health and backoff live
once in :class:`ListenerCore`; the thread and the task only do the I/O.

A sharded listener opens one connection per primary owning any of its
channels (as the cluster says when connecting) and SSUBSCRIBEs there. It
never follows a moved slot in place: a lost connection, silence, a MOVED
reply or an ``sunsubscribe`` it did not ask for (Redis sends one when a slot
leaves the node) tears every connection down, refreshes the topology and
subscribes anew, since messages sent meanwhile may be lost.

While any subscription is down the listener reports itself unhealthy; memory
entries are then served only while younger than ``stale_after`` seconds. When
every subscription is back the whole memory tier is flushed, since
invalidations sent meanwhile were lost. Losing the channel and getting it
back are logged once each, at WARNING, however many reconnection attempts
lie between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tieredstore import metrics

__all__ = [
    "AsyncInvalidationListener",
    "Generation",
    "InvalidationListener",
    "ListenerCore",
    "Plan",
    "SeenGenerations",
    "SubscriptionLost",
    "channel_slot",
]

log = logging.getLogger(__name__)

Generation = tuple[int, int]
"""``(created_ms, version)`` — orders every state a session id ever had."""

Plan = dict[str, list[tuple[str, ...]]]
"""Per connection (named by its node), the channel lists to subscribe there, one command each."""


def encode_invalidation(created_ms: int, version: int, sid: str) -> bytes:
    return f"{created_ms} {version} {sid}".encode()


def decode_invalidation(data: bytes | str) -> tuple[Generation, str] | None:
    text = data.decode() if isinstance(data, bytes) else data
    parts = text.split(" ", 2)
    if len(parts) != 3:
        return None
    try:
        return (int(parts[0]), int(parts[1])), parts[2]
    except ValueError:
        return None


class SeenGenerations:
    """The newest generation announced per session, bounded LRU.

    It closes the race where a slow read from Redis would cache a state that
    an invalidation already superseded while the read was in flight.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: OrderedDict[str, Generation] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def note(self, sid: str, generation: Generation) -> None:
        with self._lock:
            current = self._seen.get(sid)
            if current is None or generation > current:
                self._seen[sid] = generation
            self._seen.move_to_end(sid)
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)

    def superseded(self, sid: str, generation: Generation) -> bool:
        with self._lock:
            current = self._seen.get(sid)
            return current is not None and current > generation

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


class SubscriptionLost(redis.exceptions.ConnectionError):
    """Redis ended a subscription the listener never gave up (its slot moved
    away), or confirmed one it never asked for (a connection renewed underneath)."""


@dataclass
class _Link:
    """One connection's state: confirmations still due, when heard, when to ping."""

    pending: int
    last_heard: float
    next_ping: float


_CONFIRMATIONS = frozenset({"subscribe", "ssubscribe"})
_MESSAGES = frozenset({"message", "smessage"})
_UNSUBSCRIPTIONS = frozenset({"unsubscribe", "sunsubscribe"})


class ListenerCore:
    """The listener's I/O-free half: what goes where, what a message means, health, backoff.

    ``on_invalidate(sid, generation)`` runs for each announcement and
    ``on_resubscribe()`` once each time every subscription is (re)confirmed.
    ``healthy`` is true only while every connection is subscribed and was
    heard from within ``3 * ping_interval``. The thread and asyncio shells
    below open the connections :meth:`plan` asks for and feed it what they read,
    and set ``stopped`` when they are stopped.
    """

    def __init__(
        self,
        channels: str | Sequence[str],
        *,
        sharded: bool = False,
        on_invalidate: Callable[[str, Generation], None],
        on_resubscribe: Callable[[], None],
        ping_interval: float = 1.0,
    ) -> None:
        names = (channels,) if isinstance(channels, str) else tuple(channels)
        self.channels: tuple[str, ...] = tuple(dict.fromkeys(names))
        if not self.channels:
            raise ValueError("an invalidation listener needs at least one channel")
        self.sharded = sharded
        self._on_invalidate = on_invalidate
        self._on_resubscribe = on_resubscribe
        self.ping_interval = ping_interval
        self.subscribed = False
        self._links: dict[str, _Link] = {}
        self._backoff = _FIRST_BACKOFF
        self.received = 0
        self.subscriptions = 0
        self.disconnects = 0
        self.failures = 0  # every failed round, counted or not as a disconnect
        self.stopped = False
        self._lost_at: float | None = None  # since when the channel is down (logged once)
        metrics.track_listener(self)

    @property
    def label(self) -> str:
        """A short name of the channels, for logs and thread names."""
        first = self.channels[0]
        return first if len(self.channels) == 1 else f"{first}+{len(self.channels) - 1}"

    @property
    def healthy(self) -> bool:
        if not self.subscribed:
            return False
        heard_since = time.monotonic() - 3 * self.ping_interval
        for link in tuple(self._links.values()):  # noqa: SIM110 (read on every memory hit)
            if link.last_heard <= heard_since:
                return False
        return True

    @property
    def last_heard(self) -> dict[str, float]:
        """Per connection (node name), when (``time.monotonic()``) it was last heard from."""
        return {node: link.last_heard for node, link in list(self._links.items())}

    @property
    def poll_timeout(self) -> float:
        """How long one poll for a message may wait."""
        return min(self.ping_interval / 2, 0.25)

    def plan(self, owners: Mapping[str, str]) -> Plan:
        """The subscribe commands per connection, given each channel's node.

        Unsharded: one SUBSCRIBE of every channel on the one node. Sharded:
        on each channel's owner one SSUBSCRIBE per slot, since a cluster
        refuses channels of several slots in one command.
        """
        if not self.sharded:
            return {owners[self.channels[0]]: [self.channels]}
        by_slot: dict[tuple[str, int], list[str]] = {}
        for channel in self.channels:
            by_slot.setdefault((owners[channel], channel_slot(channel)), []).append(channel)
        plan: Plan = {}
        for (node, _slot), group in by_slot.items():
            plan.setdefault(node, []).append(tuple(group))
        return plan

    def begin(self, plan: Plan) -> None:
        """The connections of ``plan`` were opened and their subscribe commands sent."""
        now = time.monotonic()
        self.subscribed = False
        self._links = {
            node: _Link(sum(len(group) for group in commands), now, now + self.ping_interval)
            for node, commands in plan.items()
        }

    def step(self, node: str, message: Mapping[str, Any] | None) -> bool:
        """Account for one poll's result on ``node``'s connection; ``True`` when a PING is due.

        Raises :class:`redis.exceptions.TimeoutError` when that connection has
        been silent for three ping intervals (dead without closing), and
        :class:`SubscriptionLost` when Redis dropped a subscription.
        """
        link = self._links[node]
        now = time.monotonic()
        if message is not None:
            link.last_heard = now
            kind = message.get("type")
            if kind in _CONFIRMATIONS:
                link.pending -= 1
                if link.pending < 0:
                    raise SubscriptionLost(f"unasked {kind} confirmation from {node}")
                if not self.subscribed and all(
                    other.pending == 0 for other in self._links.values()
                ):
                    self.subscriptions += 1
                    self._on_resubscribe()
                    self.subscribed = True
                    self._backoff = _FIRST_BACKOFF
                    if self._lost_at is not None:
                        log.warning(
                            "invalidation channel %s resubscribed after %.1f s: memory tier "
                            "flushed (invalidations sent meanwhile were lost)",
                            self.label, now - self._lost_at,
                        )
                        self._lost_at = None
                        metrics.listener_event("resubscribed")
            elif kind in _MESSAGES:
                decoded = decode_invalidation(message["data"])
                if decoded is not None:
                    self.received += 1
                    metrics.invalidation_received()
                    generation, sid = decoded
                    self._on_invalidate(sid, generation)
            elif kind in _UNSUBSCRIPTIONS:
                raise SubscriptionLost(f"{node} ended the subscription to {message['channel']!r}")
        if now - link.last_heard > 3 * self.ping_interval:
            raise redis.exceptions.TimeoutError(f"no reply from the invalidation channel on {node}")
        if now >= link.next_ping:
            link.next_ping = now + self.ping_interval
            return True
        return False

    def failed(self, exc: BaseException, *, expected: bool) -> float:
        """A connection broke; returns how long to wait before reconnecting them all."""
        was_subscribed, self.subscribed = self.subscribed, False
        self.failures += 1
        if expected:
            if was_subscribed:
                self.disconnects += 1
            if self._lost_at is None:
                self._lost_at = time.monotonic()
                log.warning(
                    "invalidation channel %s %s: %s; memory entries are served for at most "
                    "stale_after seconds until it is back",
                    self.label, "lost" if was_subscribed else "unavailable", exc,
                )
                metrics.listener_event("lost")
        else:  # pragma: no cover - keep the listener alive whatever happens
            log.error("invalidation listener error", exc_info=exc)
        pause = self._backoff
        self._backoff = min(self._backoff * 2, 1.0)
        return pause


_FIRST_BACKOFF = 0.05
_DRAIN_BATCH = 64
_EXPECTED_ERRORS = (
    redis.exceptions.ConnectionError,  # SubscriptionLost too
    redis.exceptions.TimeoutError,
    OSError,
    redis.exceptions.AskError,  # MOVED too
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,  # no node answered the refresh, slot not covered
)


def channel_slot(channel: str) -> int:
    """The cluster hash slot of a channel name (its hash tag's, when it has one)."""
    return key_slot(channel.encode())


def _node_name(kwargs: Mapping[str, Any]) -> str:
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _dedicated(kwargs: Mapping[str, Any], client_name: str, retry: Any) -> dict[str, Any]:
    """A listener connection's kwargs: the client's own, its name, and a retry
    that retries nothing. redis-py's pub/sub otherwise reconnects and
    resubscribes in place on a failed read (even with zero retries), to a node
    that may no longer own the channel, and messages meanwhile go missing."""
    own = {k: v for k, v in kwargs.items() if k not in ("retry_on_error", "retry_on_timeout")}
    return {**own, "client_name": client_name, "retry": retry}


class _Counters:
    """Read-only views of a listener's :class:`ListenerCore`."""

    core: ListenerCore

    @property
    def channels(self) -> tuple[str, ...]:
        return self.core.channels

    @property
    def sharded(self) -> bool:
        return self.core.sharded

    @property
    def healthy(self) -> bool:
        return self.core.healthy

    @property
    def received(self) -> int:
        return self.core.received

    @property
    def subscriptions(self) -> int:
        return self.core.subscriptions

    @property
    def disconnects(self) -> int:
        return self.core.disconnects

    @property
    def ping_interval(self) -> float:
        return self.core.ping_interval


class InvalidationListener(_Counters):
    """A daemon thread subscribed to the invalidation channels (see :class:`ListenerCore`).

    ``client`` is the store's client: a ``redis.Redis`` (SUBSCRIBE, or with
    ``sharded`` SSUBSCRIBE, on one connection) or a ``RedisCluster`` (with
    ``sharded``, one connection per primary owning a channel; without, one
    SUBSCRIBE connection to its default node). Every connection is
    dedicated, built from the client's own connection settings and named
    :attr:`client_name`.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        channels: str | Sequence[str],
        *,
        sharded: bool = False,
        on_invalidate: Callable[[str, Generation], None],
        on_resubscribe: Callable[[], None],
        ping_interval: float = 1.0,
    ) -> None:
        self.client_name = listener_name()
        self._source = client
        self.core = ListenerCore(
            channels,
            sharded=sharded,
            on_invalidate=on_invalidate,
            on_resubscribe=on_resubscribe,
            ping_interval=ping_interval,
        )
        self._retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0, supported_errors=())
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"tieredstore-invalidation[{self.core.label}]", daemon=True
        )

    def start(self, wait: float = 2.0) -> None:
        """Start the thread and wait (up to ``wait`` s) until every channel is subscribed."""
        self._thread.start()
        self._subscribed.wait(wait)

    def stop(self) -> None:
        self.core.stopped = True
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)

    def _topology(self, refresh: bool) -> tuple[dict[str, str], dict[str, Any]]:
        """Each channel's node and each node's connection pool, as the client
        knows it, or (``refresh``, after a failure) as the cluster says now."""
        client = self._source
        if not isinstance(client, RedisCluster):
            pool = client.connection_pool
            name = _node_name(pool.connection_kwargs)
            return dict.fromkeys(self.core.channels, name), {name: pool}
        manager = client.nodes_manager
        if refresh and self.core.sharded:
            manager.initialize(disconnect_startup_nodes_pools=False)
        if self.core.sharded:
            nodes = {c: manager.get_node_from_slot(channel_slot(c)) for c in self.core.channels}
        else:
            default: Any = client.get_default_node()  # type: ignore[no-untyped-call]
            nodes = dict.fromkeys(self.core.channels, default)
        pools: dict[str, Any] = {}
        for node in nodes.values():
            connection = client.get_redis_connection(node)
            pools[node.name] = connection.connection_pool
        return {channel: node.name for channel, node in nodes.items()}, pools

    def _connect(self, pool: Any) -> tuple[Any, Any]:
        """A dedicated pool (one connection) like ``pool`` and a pub/sub on it."""
        kwargs = _dedicated(pool.connection_kwargs, self.client_name, self._retry)
        own = type(pool)(connection_class=pool.connection_class, max_connections=2, **kwargs)
        return own, redis.Redis(connection_pool=own).pubsub()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        refresh = False
        while not self._stop.is_set():
            links: list[tuple[str, Any, Any]] = []
            try:
                owners, pools = self._topology(refresh)
                plan = self.core.plan(owners)
                for node, commands in plan.items():
                    pool, pubsub = self._connect(pools[node])
                    links.append((node, pool, pubsub))
                    for group in commands:
                        if self.core.sharded:
                            pubsub.ssubscribe(*group)
                        else:
                            pubsub.subscribe(*group)
                self.core.begin(plan)
                self._listen([(node, pubsub) for node, _pool, pubsub in links])
            except Exception as exc:
                refresh = True
                self._subscribed.clear()
                self._stop.wait(self.core.failed(exc, expected=isinstance(exc, _EXPECTED_ERRORS)))
            finally:
                self.core.subscribed = False
                self._subscribed.clear()
                for _node, pool, pubsub in links:
                    try:
                        pubsub.close()
                        pool.disconnect()
                    except Exception:  # pragma: no cover
                        log.debug("closing pubsub failed", exc_info=True)

    def _listen(self, links: list[tuple[str, Any]]) -> None:
        """Poll every connection until one fails: drain what each has buffered,
        and when none had anything wait briefly on one of them in turn."""
        core = self.core
        wait = core.poll_timeout / len(links)
        turn = 0
        while not self._stop.is_set():
            idle = True
            for node, pubsub in links:
                for _ in range(_DRAIN_BATCH):
                    message = pubsub.get_message(timeout=0.0)
                    if core.step(node, message):
                        pubsub.ping()
                    if message is None:
                        break
                    idle = False
            if idle:
                node, pubsub = links[turn % len(links)]
                turn += 1
                if core.step(node, pubsub.get_message(timeout=wait)):
                    pubsub.ping()
            if core.subscribed:
                self._subscribed.set()


class AsyncInvalidationListener(_Counters):
    """An asyncio task subscribed to the invalidation channels (see :class:`ListenerCore`).

    ``client`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``,
    as for :class:`InvalidationListener`. One supervising task opens the
    connections and runs one reading task per connection; when any fails,
    all are torn down and opened again.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | AsyncRedisCluster,
        channels: str | Sequence[str],
        *,
        sharded: bool = False,
        on_invalidate: Callable[[str, Generation], None],
        on_resubscribe: Callable[[], None],
        ping_interval: float = 1.0,
    ) -> None:
        self.client_name = listener_name()
        self._source = client
        self.core = ListenerCore(
            channels,
            sharded=sharded,
            on_invalidate=on_invalidate,
            on_resubscribe=on_resubscribe,
            ping_interval=ping_interval,
        )
        self._retry = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0, supported_errors=())
        self._task: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None

    async def start(self, wait: float = 2.0) -> None:
        """Start the task on the running loop and wait (up to ``wait`` s) until subscribed."""
        self._subscribed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(self._subscribed), name=f"tieredstore-invalidation[{self.core.label}]"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait)

    async def stop(self) -> None:
        self.core.stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _topology(
        self, refresh: bool
    ) -> tuple[dict[str, str], dict[str, tuple[Any, Any, Any]]]:
        """Each channel's node, and each node's (pool class, connection class,
        connection kwargs), as the client knows it, or (``refresh``, after a
        failure) as the cluster says now."""
        client = self._source
        if not isinstance(client, AsyncRedisCluster):
            pool = client.connection_pool
            name = _node_name(pool.connection_kwargs)
            spec = (type(pool), pool.connection_class, pool.connection_kwargs)
            return dict.fromkeys(self.core.channels, name), {name: spec}
        await client.initialize()  # once per client; it then owns (and closes) the nodes
        manager = client.nodes_manager
        if refresh and self.core.sharded:
            await manager.initialize()
        if self.core.sharded:
            nodes = {c: manager.get_node_from_slot(channel_slot(c)) for c in self.core.channels}
        else:
            nodes = dict.fromkeys(self.core.channels, manager.default_node)
        specs = {
            node.name: (redis.asyncio.ConnectionPool, node.connection_class, node.connection_kwargs)
            for node in nodes.values()
        }
        return {channel: node.name for channel, node in nodes.items()}, specs

    def _connect(self, spec: tuple[Any, Any, Any]) -> tuple[Any, Any]:
        """A dedicated pool (one connection) from ``spec`` and a pub/sub on it."""
        pool_class, connection_class, kwargs = spec
        own = pool_class(
            connection_class=connection_class,
            max_connections=2,
            **_dedicated(kwargs, self.client_name, self._retry),
        )
        return own, redis.asyncio.Redis(connection_pool=own).pubsub()

    async def _run(self, subscribed: asyncio.Event) -> None:
        refresh = False
        while True:
            links: list[tuple[str, Any, Any]] = []
            readers: list[asyncio.Task[None]] = []
            try:
                owners, specs = await self._topology(refresh)
                plan = self.core.plan(owners)
                for node, commands in plan.items():
                    pool, pubsub = self._connect(specs[node])
                    links.append((node, pool, pubsub))
                    for group in commands:
                        if self.core.sharded:
                            await pubsub.ssubscribe(*group)
                        else:
                            await pubsub.subscribe(*group)
                self.core.begin(plan)
                loop = asyncio.get_running_loop()
                readers = [
                    loop.create_task(self._listen(node, pubsub, subscribed))
                    for node, _pool, pubsub in links
                ]
                done, _running = await asyncio.wait(readers, return_when=asyncio.FIRST_EXCEPTION)
                for reader in done:
                    reader.result()
            except Exception as exc:
                refresh = True
                subscribed.clear()
                pause = self.core.failed(exc, expected=isinstance(exc, _EXPECTED_ERRORS))
                await asyncio.sleep(pause)
            finally:
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                self.core.subscribed = False
                subscribed.clear()
                for _node, pool, pubsub in links:
                    try:
                        await pubsub.aclose()
                        await pool.disconnect()
                    except Exception:  # pragma: no cover
                        log.debug("closing pubsub failed", exc_info=True)

    async def _listen(self, node: str, pubsub: Any, subscribed: asyncio.Event) -> None:
        """Read one connection until it fails."""
        handled = 0
        while True:
            message = await pubsub.get_message(timeout=self.core.poll_timeout)
            if self.core.step(node, message):
                await pubsub.ping()
            if self.core.subscribed:
                subscribed.set()
            if message is not None:
                handled += 1
                if handled % 32 == 0:
                    # Buffered messages are read without suspending: let
                    # other tasks run between batches.
                    await asyncio.sleep(0)


def listener_name() -> str:
    """A CLIENT SETNAME for a listener connection, unique per process and listener."""
    return f"tieredstore-inval-{os.getpid()}-{uuid.uuid4().hex[:8]}"
