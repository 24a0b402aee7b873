"""OpenAI Agents SDK sessions on tieredstore (``pip install 'tieredstore[openai-agents]'``).

::

    from agents import Agent, Runner
    from tieredstore.integrations.openai_agents import TieredSession

    session = TieredSession.from_url("user-42", redis_url="redis://localhost:6379/0",
                                     database_url="postgresql+psycopg://localhost/app")
    result = await Runner.run(agent, "Hi", session=session)
    await session.aclose()                       # or session.close() from sync code

    TieredSession.from_url("user-42")            # the embedded default: memory + SQLite
    TieredSession(store, "user-42")              # over a store you have (and close yourself)

:class:`TieredSession` implements the SDK's ``Session`` protocol. Every item
is kept exactly as the SDK gave it — messages, function calls and their
outputs, reasoning items, hosted-tool calls, anything future. Items that
carry a chat ``role`` (messages) are stored as they are; the others are
stored as ``{"role": "assistant" | "tool", "agents_item": item}`` (``tool``
for ``*_output`` items, so the trim policy never keeps a tool output without
its call) and unwrapped on the way out.

Like the SDK's own sessions, ``session_settings`` may be a
``SessionSettings`` or a dict of its fields (unknown keys raise the SDK's
``TypeError``), defaults to ``SessionSettings()``, and its ``limit`` is what
:meth:`~TieredSession.get_items` returns by default. The session works on
any event loop and thread (``Runner.run_sync`` in worker threads included):
an async store keeps a client per loop (see :mod:`tieredstore.loops`), a
sync store's calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from agents.memory import SessionSettings

from tieredstore.aio import AsyncBaseStore
from tieredstore.config import Limits
from tieredstore.core import TTLLike, check_session_id, resolve_ttl_ms
from tieredstore.errors import SessionNotFound, StoreClosed, VersionConflict
from tieredstore.integrations import async_target
from tieredstore.model import thaw_json
from tieredstore.plans import Op, Plan, arun

__all__ = ["TieredSession", "coerce_session_settings", "from_record", "to_record"]

_WRAPPED = "agents_item"

# Closes begun by close() inside a running loop; held here until done (the
# loop keeps only weak references to its tasks).
_CLOSING: set[asyncio.Task[None]] = set()


def to_record(item: Mapping[str, Any]) -> dict[str, Any]:
    """An Agents SDK input item as a tieredstore message."""
    item = dict(item)
    if isinstance(item.get("role"), str):
        return item
    role = "tool" if str(item.get("type", "")).endswith("_output") else "assistant"
    return {"role": role, _WRAPPED: item}


def from_record(record: Mapping[str, Any]) -> Any:
    """The item a record holds (see :func:`to_record`), as plain JSON."""
    data = thaw_json(record)
    if len(data) == 2 and _WRAPPED in data:
        return data[_WRAPPED]
    return data


def coerce_session_settings(
    value: SessionSettings | Mapping[str, Any] | None,
) -> SessionSettings:
    """``value`` as a ``SessionSettings``, as the SDK's own sessions normalise it.

    ``None`` is ``SessionSettings()``; a dict names its fields (an unknown
    key raises ``TypeError: Unknown session settings: ...``); anything else
    is a ``TypeError``.
    """
    if value is None:
        return SessionSettings()
    if isinstance(value, SessionSettings):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            "session must be a SessionSettings instance or a dict, "
            f"got {type(value).__name__}"
        )
    known = {field.name for field in dataclasses.fields(SessionSettings) if field.init}
    unknown = sorted(str(name) for name in value if name not in known)
    if unknown:
        raise TypeError(f"Unknown session settings: {', '.join(unknown)}")
    return SessionSettings(**value)


class TieredSession:
    """One conversation of the OpenAI Agents SDK, kept in a tieredstore store.

    ``store`` is an async store (or a sync one, whose calls then run in a
    worker thread); with ``owns_store=True`` :meth:`close`/:meth:`aclose`
    close it too. ``session_settings``: see the module docstring. ``ttl``
    applies to every write. The session id and ``ttl`` are checked here.
    """

    def __init__(
        self,
        store: Any,
        session_id: str,
        *,
        ttl: TTLLike | None = None,
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
        owns_store: bool = False,
    ) -> None:
        self.session_id = check_session_id(session_id, getattr(store, "limits", Limits()))
        resolve_ttl_ms(ttl, None)
        self.session_settings = session_settings
        self.store = store
        self.ttl = ttl
        self.owns_store = owns_store
        self._targets = {"store": async_target(store)}
        self._closed = False
        self._closing: asyncio.Task[None] | None = None

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        ttl: TTLLike | None = None,
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
        memory_max_bytes: int | None = None,
        **store_options: Any,
    ) -> Self:
        """A session on an :class:`~tieredstore.AsyncTieredStore` of its own, built from URLs.

        The URLs and ``store_options`` (``namespace``, ``max_messages``,
        ``durability``, ``migrate``, ...) are those of
        ``AsyncTieredStore.from_url``; with neither URL it is the embedded
        default (memory + SQLite in the data directory). The store has no
        memory tier unless ``memory_max_bytes`` is given: for one session it
        would save little and cost an invalidation subscription. The session
        owns the store: :meth:`close`/:meth:`aclose` close it. Arguments are
        checked before the store is built.
        """
        from tieredstore.aio import AsyncTieredStore

        limits = store_options.get("limits")
        check_session_id(session_id, limits if isinstance(limits, Limits) else Limits())
        resolve_ttl_ms(ttl, None)
        settings = coerce_session_settings(session_settings)
        store = AsyncTieredStore.from_url(
            redis_url=redis_url,
            database_url=database_url,
            memory_max_bytes=memory_max_bytes,
            **store_options,
        )
        return cls(store, session_id, ttl=ttl, session_settings=settings, owns_store=True)

    @property
    def session_settings(self) -> SessionSettings:
        """The session's ``SessionSettings`` (a dict assigned here is normalised)."""
        return self._settings

    @session_settings.setter
    def session_settings(self, value: SessionSettings | Mapping[str, Any] | None) -> None:
        self._settings = coerce_session_settings(value)

    # -- the logic, once ----------------------------------------------------------

    def _limit(self, limit: int | None) -> int | None:
        if limit is None:
            limit = self._settings.limit
        return None if limit is None or limit < 0 else limit

    def _get(self, limit: int | None) -> Plan[list[Any]]:
        if limit == 0:
            return []
        try:
            records = yield Op("store", "load", (self.session_id,), {"last": limit})
        except SessionNotFound:
            return []
        return [from_record(record) for record in records]

    def _add(self, items: list[Any]) -> Plan[None]:
        if items:
            records = [to_record(item) for item in items]
            yield Op("store", "append", (self.session_id, *records), {"ttl": self.ttl})

    def _clear(self) -> Plan[None]:
        yield Op("store", "delete", (self.session_id,))

    def _pop(self) -> Plan[Any]:
        """Remove the newest item: a compare-and-swap on the session's version, retried."""
        while True:
            try:
                session = yield Op("store", "get", (self.session_id,))
            except SessionNotFound:
                return None
            if not session.messages:
                return None
            try:
                yield Op(
                    "store",
                    "save",
                    (self.session_id, session.messages[:-1]),
                    {"expected_version": session.version},
                )
            except VersionConflict:
                continue  # written meanwhile: pop from the new state
            return from_record(session.messages[-1])

    def _open(self) -> dict[str, Any]:
        if self._closed:
            raise StoreClosed(f"{type(self).__name__} is closed")
        return self._targets

    # -- the Session protocol -------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[Any]:
        """The newest ``limit`` items (default: the settings' limit, else all), oldest first."""
        return await arun(self._get(self._limit(limit)), self._open())

    async def add_items(self, items: list[Any]) -> None:
        """Append ``items`` atomically."""
        await arun(self._add(items), self._open())

    async def pop_item(self) -> Any | None:
        """Remove and return the newest item (``None`` when there is none).

        It rewrites the session (atomically, by version); on a tiered store
        with ``max_messages`` the history keeps its hot window only.
        """
        return await arun(self._pop(), self._open())

    async def clear_session(self) -> None:
        """Delete every item of the session."""
        await arun(self._clear(), self._open())

    # -- lifecycle ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the store if the session owns it; then the session refuses calls
        (:class:`~tieredstore.errors.StoreClosed`). Idempotent; a session over a
        store it does not own leaves the store open and stays usable."""
        if not self.owns_store:
            return
        closing = self._closing
        if self._closed:
            if closing is not None and closing.get_loop() is asyncio.get_running_loop():
                await closing
            return
        self._closed = True
        if isinstance(self.store, AsyncBaseStore):
            await self.store.aclose()
        else:
            await asyncio.to_thread(self.store.close)

    def close(self) -> None:
        """:meth:`aclose` for synchronous code (``SQLiteSession.close()``'s twin).

        Inside a running loop it cannot wait, so the store's closing runs as
        a task of that loop (what the loop itself opened is closed by the
        time it shuts down in any case).
        """
        if not self.owns_store or self._closed:
            return
        store = self.store
        if not isinstance(store, AsyncBaseStore):
            self._closed = True
            store.close()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.aclose())
            return
        self._closed = True
        self._closing = task = loop.create_task(store.aclose())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.session_id!r}, store={self.store!r})"
