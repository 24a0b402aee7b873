"""Cross-process coherence of memory tiers: the invalidation listener.

Every Redis write script publishes ``"<created_ms> <version> <session id>"``
on the namespace's invalidation channel in the same atomic step as the write
(a delete publishes ``"<now_ms> 0 <id>"``). Each :class:`TieredStore` with a
memory tier runs one listener thread that drops any cached session whose
``(created_ms, version)`` is older than the one announced.

While the channel is down (connection lost, ``CLIENT KILL``, Redis restart)
the listener reports itself unhealthy; memory entries are then served only
while younger than ``stale_after`` seconds. When the subscription is back the
whole memory tier is flushed, since invalidations sent meanwhile were lost.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis

__all__ = ["Generation", "InvalidationListener"]

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


class InvalidationListener:
    """A daemon thread subscribed to one invalidation channel.

    ``on_invalidate(sid, generation)`` runs for each announcement and
    ``on_resubscribe()`` each time a subscription (re)starts. ``healthy`` is
    true only while subscribed and heard from within ``3 * ping_interval``.
    """

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        *,
        on_invalidate: Callable[[str, Generation], None],
        on_resubscribe: Callable[[], None],
        ping_interval: float = 1.0,
    ) -> None:
        self.client_name = f"tieredstore-inval-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        pool = client.connection_pool
        kwargs = {**pool.connection_kwargs, "client_name": self.client_name}
        self._client = redis.Redis(
            connection_pool=type(pool)(
                connection_class=pool.connection_class, max_connections=2, **kwargs
            )
        )
        self.channel = channel
        self._on_invalidate = on_invalidate
        self._on_resubscribe = on_resubscribe
        self.ping_interval = ping_interval
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._last_heard = 0.0
        self.received = 0
        self.subscriptions = 0
        self.disconnects = 0
        self._pubsub: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"tieredstore-invalidation[{channel}]", daemon=True
        )

    def start(self, wait: float = 2.0) -> None:
        self._thread.start()
        self._subscribed.wait(wait)

    @property
    def healthy(self) -> bool:
        return (
            self._subscribed.is_set()
            and time.monotonic() - self._last_heard < 3 * self.ping_interval
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            self._pubsub = pubsub
            try:
                pubsub.subscribe(self.channel)
                self._listen(pubsub)
                backoff = 0.05
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
            ) as exc:
                if self._subscribed.is_set():
                    self.disconnects += 1
                    log.warning("invalidation channel %s lost: %s", self.channel, exc)
                self._subscribed.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            except Exception:  # pragma: no cover - keep the thread alive whatever happens
                log.exception("invalidation listener error")
                self._subscribed.clear()
                self._stop.wait(backoff)
            finally:
                self._subscribed.clear()
                try:
                    pubsub.close()
                except Exception:  # pragma: no cover
                    log.debug("closing pubsub failed", exc_info=True)

    def _listen(self, pubsub: Any) -> None:
        next_ping = time.monotonic() + self.ping_interval
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=min(self.ping_interval / 2, 0.25))
            now = time.monotonic()
            if message is not None:
                self._last_heard = now
                kind = message.get("type")
                if kind == "subscribe":
                    self.subscriptions += 1
                    self._on_resubscribe()
                    self._subscribed.set()
                elif kind == "message":
                    decoded = decode_invalidation(message["data"])
                    if decoded is not None:
                        self.received += 1
                        generation, sid = decoded
                        self._on_invalidate(sid, generation)
            if now >= next_ping:
                pubsub.ping()
                next_ping = now + self.ping_interval
            if now - self._last_heard > 3 * self.ping_interval:
                raise redis.exceptions.TimeoutError("no reply from the invalidation channel")
