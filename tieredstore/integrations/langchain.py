"""LangChain chat history on tieredstore (``pip install 'tieredstore[langchain]'``).

::

    from langchain_core.runnables.history import RunnableWithMessageHistory
    from tieredstore import TieredStore
    from tieredstore.integrations.langchain import TieredChatMessageHistory

    store = TieredStore.from_url(redis_url=..., database_url=...)
    chain = RunnableWithMessageHistory(
        prompt | model, lambda sid: TieredChatMessageHistory(store, sid),
        input_messages_key="question", history_messages_key="history",
    )

    # or, like langchain-redis's RedisChatMessageHistory, one object per session:
    history = TieredChatMessageHistory.from_url("s-1", redis_url=..., database_url=..., ttl=3600)
    history.add_messages([...]); len(history); history.search_messages("refund"); history.close()

Each LangChain message is stored as one tieredstore message: its own fields
(``model_dump(mode="json")``: ``type``, ``content``, ``tool_calls``,
``additional_kwargs``, ``response_metadata``, ``id``, ``tool_call_id``, ...)
plus a chat ``role`` (``user``, ``assistant``, ``system``, ``tool``, ...) so
that the trim policy, listing and other clients understand the session. It
comes back as the same message type with the same fields. Messages other
clients wrote in the OpenAI chat format (``{"role": ..., "content": ...}``,
tool calls included) load as their LangChain equivalents.

``add_messages`` appends all messages of a call atomically; ``last`` limits
what is loaded to the newest messages.

Compared with langchain-redis's ``RedisChatMessageHistory``: ``id``,
``len()``, ``clear()``, a session id checked at construction (a
``ValueError``) and ``ttl`` behave alike — ``ttl`` is in seconds, set by
every write and not refreshed by reads, and ``0`` or ``None`` sets no expiry.
Where they differ: the whole history expires ``ttl`` after the last write
(langchain-redis expires each message ``ttl`` after its own write);
``search_messages`` runs the archive's search (see
:meth:`TieredChatMessageHistory.search_messages`); there is no ``delete()``
dropping every session's index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
    messages_from_dict,
)

from tieredstore.config import Limits
from tieredstore.core import TTLLike, check_last, check_limit, check_session_id
from tieredstore.errors import SessionNotFound
from tieredstore.integrations import async_target, sync_target
from tieredstore.integrations.search import SessionSearch
from tieredstore.integrations.shared import ClosesOnExit, optional_ttl, shared_tiered_store
from tieredstore.model import thaw_json
from tieredstore.plans import Op, Plan, arun, run
from tieredstore.tiering import Durability

__all__ = ["TieredChatMessageHistory", "from_record", "to_record"]

_ROLES: tuple[tuple[type[BaseMessage], str], ...] = (
    (HumanMessage, "user"),
    (AIMessage, "assistant"),
    (SystemMessage, "system"),
    (ToolMessage, "tool"),
    (FunctionMessage, "function"),
)
_LC_TYPES = frozenset(
    {"human", "ai", "system", "tool", "function", "chat", "developer", "remove"}
    | {"HumanMessageChunk", "AIMessageChunk", "SystemMessageChunk", "ToolMessageChunk"}
    | {"FunctionMessageChunk", "ChatMessageChunk"}
)


def to_record(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message as a tieredstore message: a chat ``role`` and its fields."""
    data = message.model_dump(mode="json")
    if isinstance(message, ChatMessage):
        role = message.role
    else:
        role = next((r for cls, r in _ROLES if isinstance(message, cls)), message.type)
    data.pop("role", None)
    return {"role": role, **data}


def from_record(record: Mapping[str, Any]) -> BaseMessage:
    """The LangChain message a record holds (see :func:`to_record`).

    Records written by other clients in the OpenAI chat format are converted
    by LangChain's own ``convert_to_messages``.
    """
    data = thaw_json(record)
    kind = data.get("type")
    if kind in _LC_TYPES and "content" in data:
        if kind not in ("chat", "ChatMessageChunk"):
            data.pop("role", None)
        return messages_from_dict([{"type": kind, "data": data}])[0]
    return convert_to_messages([data])[0]


class TieredChatMessageHistory(ClosesOnExit, BaseChatMessageHistory):
    """The history of one session in a tieredstore store, for LangChain.

    ``store`` is a sync or an async store: the sync methods (``messages``,
    ``add_messages``, ``clear``, ``len()``, ``search_messages``) need a sync
    one; the async ones (``aget_messages``, ``aadd_messages``, ``aclear``,
    ``alen``, ``asearch_messages``) await an async store and run a sync
    store's calls in a worker thread. ``last`` loads only the newest messages;
    ``ttl`` (seconds or a ``timedelta``; ``0`` or ``None``: none of its own,
    the store's ``default_ttl`` applies) is set by every write. The session
    id, ``last`` and ``ttl`` are checked here, so a bad one fails at
    construction (``InvalidSessionId`` / ``InvalidInput``, both ``ValueError``).
    """

    def __init__(
        self,
        store: Any,
        session_id: str,
        *,
        last: int | None = None,
        ttl: TTLLike | None = None,
    ) -> None:
        super().__init__()
        limits = getattr(store, "limits", None)
        self.session_id = check_session_id(
            session_id, limits if isinstance(limits, Limits) else Limits()
        )
        self.store = store
        self.last = check_last(last)
        self.ttl = optional_ttl(ttl)
        self._release: Callable[[], None] | None = None
        self._search: SessionSearch | None = None

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        ttl: TTLLike | None = None,
        last: int | None = None,
        durability: Durability | None = None,
        **store_options: Any,
    ) -> Self:
        """The session's history on a :class:`~tieredstore.TieredStore` built from URLs.

        ``redis_url``/``database_url`` are those of ``TieredStore.from_url``
        (neither: the embedded default, memory + SQLite); ``store_options``
        (``namespace``, ``max_messages``, ``migrate``, ...) go to it too.
        ``durability`` defaults to ``"write_through"`` when both URLs are
        given, so that :meth:`search_messages` sees every message as soon as
        it is added (``"archive"``: only once the worker has archived it).

        Every history built with the same settings shares one store (so a
        factory may call this per request); :meth:`close` gives it back and
        the last one closes it. The arguments are checked before any
        connection is made.
        """
        limits = store_options.get("limits")
        check_session_id(session_id, limits if isinstance(limits, Limits) else Limits())
        check_last(last)
        optional_ttl(ttl)
        store, release = shared_tiered_store({
            **store_options, "redis_url": redis_url, "database_url": database_url,
            "durability": durability,
        })
        try:
            history = cls(store, session_id, last=last, ttl=ttl)
        except BaseException:
            release()
            raise
        history._release = release
        return history

    @property
    def id(self) -> str:
        """The session id (as langchain-redis's ``RedisChatMessageHistory.id``)."""
        return self.session_id

    def close(self) -> None:
        """Give back the store :meth:`from_url` opened (closed with its last user).

        A history built over a store you passed does nothing: that store is yours.
        """
        if self._release is not None:
            self._release()

    # -- the logic, once -----------------------------------------------------------

    def _get(self) -> Plan[list[BaseMessage]]:
        try:
            records = yield Op("store", "load", (self.session_id,), {"last": self.last})
        except SessionNotFound:
            return []
        return [from_record(record) for record in records]

    def _add(self, messages: Sequence[BaseMessage]) -> Plan[None]:
        if messages:
            records = [to_record(message) for message in messages]
            yield Op("store", "append", (self.session_id, *records), {"ttl": self.ttl})

    def _clear(self) -> Plan[None]:
        yield Op("store", "delete", (self.session_id,))

    def _len(self) -> Plan[int]:
        try:
            count: int = yield Op("store", "count", (self.session_id,))
        except SessionNotFound:
            return 0
        return count if self.last is None else min(count, self.last)

    def _search_plan(
        self, searcher: SessionSearch, query: object, limit: int
    ) -> Plan[list[dict[str, Any]]]:
        if isinstance(limit, int) and not isinstance(limit, bool) and limit == 0:
            return []  # as langchain-redis: no results, not an error
        if not isinstance(query, str) or not query.strip():
            check_limit(limit)
            return []
        found = yield from searcher.hits(self.session_id, query, limit)
        results: list[dict[str, Any]] = []
        for hit, record in found:
            data = from_record(record).model_dump(mode="json")
            data.update(seq=hit.seq, timestamp=hit.created_ms / 1000, snippet=hit.snippet)
            results.append(data)
        return results

    def _searcher(self) -> SessionSearch:
        if self._search is None:
            self._search = SessionSearch(self.store)
        return self._search

    def _sync(self) -> dict[str, Any]:
        return {"store": sync_target(self.store, type(self).__name__)}

    def _async(self) -> dict[str, Any]:
        return {"store": async_target(self.store)}

    # -- LangChain's interface -----------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The stored messages, oldest first (``[]`` for a new session)."""
        return run(self._get(), self._sync())

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` atomically."""
        run(self._add(messages), self._sync())

    def clear(self) -> None:
        """Delete the session."""
        run(self._clear(), self._sync())

    async def aget_messages(self) -> list[BaseMessage]:
        return await arun(self._get(), self._async())

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await arun(self._add(messages), self._async())

    async def aclear(self) -> None:
        await arun(self._clear(), self._async())

    # -- what langchain-redis users expect ---------------------------------------

    def __len__(self) -> int:
        """How many messages :attr:`messages` returns, counted without loading them."""
        return run(self._len(), self._sync())

    def __bool__(self) -> bool:
        # Truthiness is not emptiness here: it must cost no I/O (and work on async stores).
        return True

    async def alen(self) -> int:
        """``len(history)`` for async code."""
        return await arun(self._len(), self._async())

    def search_messages(self, query: str, limit: int = 10) -> list[dict[str, Any]]:
        """This session's messages matching ``query``, newest first, at most ``limit``.

        Each result is a dict like langchain-redis's: the message's fields
        (``content``, ``type``, ``additional_kwargs``, ``id``, ...), plus
        ``seq`` (its number in the session), ``timestamp`` (unix seconds) and
        ``snippet`` (the matching text, matches in ``<mark>``). An empty or
        non-string ``query``, or ``limit=0``, returns ``[]``.

        Differences from langchain-redis: the archive's search runs the query
        (PostgreSQL full text: all words must match, stemmed; ``"a phrase"``,
        ``a OR b``, ``-word``, ``pre*``; SQLite: case-insensitive substrings),
        results come newest first rather than by relevance, and only what the
        archive holds is searched — with ``durability="archive"``, messages
        the worker has not archived yet are not found (``from_url`` defaults
        to ``"write_through"``). A store without an archive raises
        :class:`~tieredstore.errors.ConfigurationError`.
        """
        targets = self._sync()
        searcher = self._searcher()
        targets["query"] = searcher.query
        return run(self._search_plan(searcher, query, limit), targets)

    async def asearch_messages(self, query: str, limit: int = 10) -> list[dict[str, Any]]:
        """:meth:`search_messages` for async code."""
        searcher = self._searcher()
        targets = {**self._async(), "query": searcher.async_query()}
        return await arun(self._search_plan(searcher, query, limit), targets)
