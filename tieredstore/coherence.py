"""Cross-process coherence of memory tiers: the invalidation listener.

Every Redis write script publishes ``"<created_ms> <version> <session id>"``
on the namespace's invalidation channel in the same atomic step as the write
(a delete publishes ``"<now_ms> 0 <id>"``). Each :class:`TieredStore` with a
memory tier runs one listener thread (an :class:`AsyncTieredStore`, one
asyncio task) that drops any cached session whose ``(created_ms, version)``
is older than the one announced. What a message means, health and backoff
live once in :class:`ListenerCore`; the thread and the task only read.

While the channel is down (connection lost, ``CLIENT KILL``, Redis restart)
the listener reports itself unhealthy; memory entries are then served only
while younger than ``stale_after`` seconds. When the subscription is back the
whole memory tier is flushed, since invalidations sent meanwhile were lost.
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
from collections.abc import Callable, Mapping
from typing import Any

import redis
import redis.asyncio

__all__ = [
    "AsyncInvalidationListener",
    "Generation",
    "InvalidationListener",
    "ListenerCore",
    "SeenGenerations",
]

log = logging.getLogger(__name__)

Generation = tuple[int, int]
"""``(created_ms, version)`` — orders every state a session id ever had."""


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


class ListenerCore:
    """The listener's I/O-free half: what a pub/sub message means, health, backoff.

    ``on_invalidate(sid, generation)`` runs for each announcement and
    ``on_resubscribe()`` each time a subscription (re)starts. ``healthy`` is
    true only while subscribed and heard from within ``3 * ping_interval``.
    The thread and asyncio shells below feed it what they read.
    """

    def __init__(
        self,
        channel: str,
        *,
        on_invalidate: Callable[[str, Generation], None],
        on_resubscribe: Callable[[], None],
        ping_interval: float = 1.0,
    ) -> None:
        self.channel = channel
        self._on_invalidate = on_invalidate
        self._on_resubscribe = on_resubscribe
        self.ping_interval = ping_interval
        self.subscribed = False
        self._last_heard = 0.0
        self._next_ping = 0.0
        self._backoff = _FIRST_BACKOFF
        self.received = 0
        self.subscriptions = 0
        self.disconnects = 0

    @property
    def healthy(self) -> bool:
        return self.subscribed and time.monotonic() - self._last_heard < 3 * self.ping_interval

    @property
    def poll_timeout(self) -> float:
        """How long one poll for a message may wait."""
        return min(self.ping_interval / 2, 0.25)

    def begin(self) -> None:
        """A connection was opened and SUBSCRIBE sent."""
        now = time.monotonic()
        self._last_heard = now
        self._next_ping = now + self.ping_interval

    def step(self, message: Mapping[str, Any] | None) -> bool:
        """Account for one poll's result; ``True`` when a PING is due.

        Raises :class:`redis.exceptions.TimeoutError` when the channel has been
        silent for three ping intervals (a dead connection that never closed).
        """
        now = time.monotonic()
        if message is not None:
            self._last_heard = now
            kind = message.get("type")
            if kind == "subscribe":
                self.subscriptions += 1
                self._on_resubscribe()
                self.subscribed = True
                self._backoff = _FIRST_BACKOFF
            elif kind == "message":
                decoded = decode_invalidation(message["data"])
                if decoded is not None:
                    self.received += 1
                    generation, sid = decoded
                    self._on_invalidate(sid, generation)
        if now - self._last_heard > 3 * self.ping_interval:
            raise redis.exceptions.TimeoutError("no reply from the invalidation channel")
        if now >= self._next_ping:
            self._next_ping = now + self.ping_interval
            return True
        return False

    def failed(self, exc: BaseException, *, expected: bool) -> float:
        """The connection broke; returns how long to wait before reconnecting."""
        if expected:
            if self.subscribed:
                self.disconnects += 1
                log.warning("invalidation channel %s lost: %s", self.channel, exc)
        else:  # pragma: no cover - keep the listener alive whatever happens
            log.error("invalidation listener error", exc_info=exc)
        self.subscribed = False
        pause = self._backoff
        self._backoff = min(self._backoff * 2, 1.0)
        return pause


_FIRST_BACKOFF = 0.05
_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class _Counters:
    """Read-only views of a listener's :class:`ListenerCore`."""

    core: ListenerCore

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
    """A daemon thread subscribed to one invalidation channel (see :class:`ListenerCore`)."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        *,
        on_invalidate: Callable[[str, Generation], None],
        on_resubscribe: Callable[[], None],
        ping_interval: float = 1.0,
    ) -> None:
        self.client_name = listener_name()
        pool = client.connection_pool
        kwargs = {**pool.connection_kwargs, "client_name": self.client_name}
        self._client = redis.Redis(
            connection_pool=type(pool)(
                connection_class=pool.connection_class, max_connections=2, **kwargs
            )
        )
        self.core = ListenerCore(
            channel,
            on_invalidate=on_invalidate,
            on_resubscribe=on_resubscribe,
            ping_interval=ping_interval,
        )
        self.channel = channel
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"tieredstore-invalidation[{channel}]", daemon=True
        )

    def start(self, wait: float = 2.0) -> None:
        self._thread.start()
        self._subscribed.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                self._listen(pubsub)
            except Exception as exc:
                self._subscribed.clear()
                self._stop.wait(self.core.failed(exc, expected=isinstance(exc, _CONNECTION_ERRORS)))
            finally:
                self.core.subscribed = False
                self._subscribed.clear()
                try:
                    pubsub.close()
                except Exception:  # pragma: no cover
                    log.debug("closing pubsub failed", exc_info=True)

    def _listen(self, pubsub: Any) -> None:
        self.core.begin()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=self.core.poll_timeout)
            if self.core.step(message):
                pubsub.ping()
            if self.core.subscribed:
                self._subscribed.set()


class AsyncInvalidationListener(_Counters):
    """An asyncio task subscribed to one invalidation channel (see :class:`ListenerCore`)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        channel: str,
        *,
        on_invalidate: Callable[[str, Generation], None],
        on_resubscribe: Callable[[], None],
        ping_interval: float = 1.0,
    ) -> None:
        self.client_name = listener_name()
        pool = client.connection_pool
        kwargs = {**pool.connection_kwargs, "client_name": self.client_name}
        self._client = redis.asyncio.Redis(
            connection_pool=type(pool)(
                connection_class=pool.connection_class, max_connections=2, **kwargs
            )
        )
        self.core = ListenerCore(
            channel,
            on_invalidate=on_invalidate,
            on_resubscribe=on_resubscribe,
            ping_interval=ping_interval,
        )
        self.channel = channel
        self._task: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None

    async def start(self, wait: float = 2.0) -> None:
        """Start the task on the running loop and wait (up to ``wait`` s) until subscribed."""
        self._subscribed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(self._subscribed), name=f"tieredstore-invalidation[{self.channel}]"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    async def _run(self, subscribed: asyncio.Event) -> None:
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._listen(pubsub, subscribed)
            except Exception as exc:
                subscribed.clear()
                pause = self.core.failed(exc, expected=isinstance(exc, _CONNECTION_ERRORS))
                await asyncio.sleep(pause)
            finally:
                self.core.subscribed = False
                subscribed.clear()
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Exception:  # pragma: no cover
                    log.debug("closing pubsub failed", exc_info=True)

    async def _listen(self, pubsub: Any, subscribed: asyncio.Event) -> None:
        self.core.begin()
        handled = 0
        while True:
            message = await pubsub.get_message(timeout=self.core.poll_timeout)
            if self.core.step(message):
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
