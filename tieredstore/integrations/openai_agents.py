"""OpenAI Agents SDK sessions on tieredstore (``pip install 'tieredstore[openai-agents]'``).

::

    from agents import Agent, Runner
    from tieredstore import AsyncTieredStore
    from tieredstore.integrations.openai_agents import TieredSession

    store = AsyncTieredStore.from_url(redis_url=..., database_url=...)
    result = await Runner.run(agent, "Hi", session=TieredSession(store, "user-42"))

:class:`TieredSession` implements the SDK's ``Session`` protocol. Every item
is kept exactly as the SDK gave it — messages, function calls and their
outputs, reasoning items, hosted-tool calls, anything future. Items that
carry a chat ``role`` (messages) are stored as they are; the others are
stored as ``{"role": "assistant" | "tool", "agents_item": item}`` (``tool``
for ``*_output`` items, so the trim policy never keeps a tool output without
its call) and unwrapped on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tieredstore.core import TTLLike
from tieredstore.errors import SessionNotFound, VersionConflict
from tieredstore.integrations import async_target
from tieredstore.model import thaw_json
from tieredstore.plans import Op, Plan, arun

__all__ = ["TieredSession", "from_record", "to_record"]

_WRAPPED = "agents_item"


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


class TieredSession:
    """One conversation of the OpenAI Agents SDK, kept in a tieredstore store.

    ``store`` is an async store (or a sync one, whose calls then run in a
    worker thread). ``session_settings`` is the SDK's ``SessionSettings``
    (its ``limit`` is the default of :meth:`get_items`); ``ttl`` applies to
    every write.
    """

    def __init__(
        self,
        store: Any,
        session_id: str,
        *,
        ttl: TTLLike | None = None,
        session_settings: Any | None = None,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.ttl = ttl
        self.session_settings = session_settings
        self._targets = {"store": async_target(store)}

    def _limit(self, limit: int | None) -> int | None:
        if limit is None and self.session_settings is not None:
            limit = getattr(self.session_settings, "limit", None)
        return None if limit is None or limit < 0 else limit

    def _get(self, limit: int | None) -> Plan[list[Any]]:
        try:
            records = yield Op("store", "load", (self.session_id,), {"last": self._limit(limit)})
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

    async def get_items(self, limit: int | None = None) -> list[Any]:
        """The newest ``limit`` items (all by default), oldest first."""
        return await arun(self._get(limit), self._targets)

    async def add_items(self, items: list[Any]) -> None:
        """Append ``items`` atomically."""
        await arun(self._add(items), self._targets)

    async def pop_item(self) -> Any | None:
        """Remove and return the newest item (``None`` when there is none).

        It rewrites the session (atomically, by version); on a tiered store
        with ``max_messages`` the history keeps its hot window only.
        """
        return await arun(self._pop(), self._targets)

    async def clear_session(self) -> None:
        """Delete every item of the session."""
        await arun(self._clear(), self._targets)
