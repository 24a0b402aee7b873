"""What the adapters share: stores built from URLs, shared per configuration; ``ttl``.

Frameworks build a history object per request (LangChain's
``RunnableWithMessageHistory`` calls its factory on every invocation), so a
``from_url`` that opened a new store each time would open connections, an
engine and an invalidation listener per request, and two objects on one
session would each cache it in their own memory tier. Instead every object
built with the same settings shares one store; the store is closed when the
last of them is closed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from tieredstore.core import TTLLike, resolve_ttl_ms

__all__ = [
    "ClosesOnExit",
    "SharedStores",
    "optional_ttl",
    "shared_stores",
    "shared_tiered_store",
]


class ClosesOnExit:
    """``with obj:`` calls ``obj.close()`` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Entry:
    __slots__ = ("store", "users")

    def __init__(self, store: Any) -> None:
        self.store = store
        self.users = 0


class SharedStores:
    """One store per distinct settings, reference-counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}

    def acquire(
        self, settings: Mapping[str, Any], build: Callable[[], Any]
    ) -> tuple[Any, Callable[[], None]]:
        """``(store, release)``: the store for ``settings`` (built by ``build`` if
        none is open) and the function that gives it back (idempotent).

        Settings that cannot be hashed (a client object, say) get a store of
        their own, closed by ``release``.
        """
        try:
            key: Hashable = tuple(sorted(settings.items()))
            hash(key)
        except TypeError:
            store = build()
            return store, _once(store.close)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry(build())
                self._entries[key] = entry
            entry.users += 1

        def release() -> None:
            with self._lock:
                entry.users -= 1
                last = entry.users == 0
                if last and self._entries.get(key) is entry:
                    del self._entries[key]
            if last:
                entry.store.close()

        return entry.store, _once(release)

    def open_count(self) -> int:
        """How many shared stores are open."""
        with self._lock:
            return len(self._entries)


def _once(action: Callable[[], None]) -> Callable[[], None]:
    lock = threading.Lock()
    done = False

    def call() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        action()

    return call


#: The registry every adapter's ``from_url`` uses.
shared_stores = SharedStores()


def shared_tiered_store(settings: Mapping[str, Any]) -> tuple[Any, Callable[[], None]]:
    """``(store, release)``: the shared ``TieredStore.from_url(**settings)``.

    ``durability`` (unset or ``None``) defaults to ``"write_through"`` when
    both ``redis_url`` and ``database_url`` are given, so that what an
    adapter writes is in the archive (and its search) at once; else to the
    store's default. Without URLs the store is the embedded default, whose
    place is the data directory of the moment, so the directory is part of
    what is shared on.
    """
    from tieredstore.store import TieredStore
    from tieredstore.tiered_shell import default_data_dir

    options = dict(settings)
    both = bool(options.get("redis_url")) and bool(options.get("database_url"))
    if options.get("durability") is None:
        options["durability"] = "write_through" if both else "archive"
    key = dict(options)
    if not options.get("redis_url") and not options.get("database_url"):
        key["embedded data directory"] = str(default_data_dir())
    return shared_stores.acquire(key, lambda: TieredStore.from_url(**options))


def optional_ttl(ttl: TTLLike | None) -> TTLLike | None:
    """An adapter's ``ttl``, checked; ``0`` means none, as in langchain-redis and
    LlamaIndex's ``RedisChatStore`` (both skip the expiry for a falsy ttl)."""
    if isinstance(ttl, timedelta | int | float) and not isinstance(ttl, bool) and not ttl:
        return None
    resolve_ttl_ms(ttl, None)
    return ttl
