"""LlamaIndex chat store on tieredstore (``pip install 'tieredstore[llama-index]'``).

::

    from llama_index.core.memory import ChatMemoryBuffer
    from tieredstore import TieredStore
    from tieredstore.integrations.llama_index import TieredChatStore

    chat_store = TieredChatStore(TieredStore.from_url(redis_url=..., database_url=...))
    # or TieredChatStore.from_url(redis_url=..., database_url=..., ttl=3600)
    memory = ChatMemoryBuffer.from_defaults(chat_store=chat_store, chat_store_key="user-42",
                                            token_limit=3000)

:class:`TieredChatStore` is a ``BaseChatStore``: each key is a session id
(checked like any session id: ``InvalidSessionId``, a ``ValueError``), each
``ChatMessage`` one tieredstore message. A message is stored as
``{"role": ..., "content": [its blocks], "additional_kwargs": {...}}`` — the
``blocks`` of ``ChatMessage.model_dump(mode="json")`` under ``content``, so
that the archive's full-text search and other clients read its text — and
comes back equal to what was stored: the role, every content block (text,
images, audio, documents, thinking, tool calls, cache points, ...) and
``additional_kwargs`` (as JSON: bytes become base64 strings and pydantic
objects dicts, as in LlamaIndex's own stores). Messages other clients wrote in
the OpenAI chat format load too: string content and text / ``image_url`` parts
become blocks (other parts are left out), other fields (``tool_calls``,
``tool_call_id``, ``name``, ...) go to ``additional_kwargs``, where
LlamaIndex's OpenAI integration keeps them.

``add_message`` is one atomic append. The operations that change a history
in place (``delete_message``, ``delete_last_message``, ``add_message(idx=...)``)
rewrite it with a compare-and-swap on the session's version, retried on a
conflict, so a concurrent append is never lost; on a tiered store with
``max_messages`` such a rewrite keeps the hot window only (what
``get_messages`` returns). ``set_messages`` is one atomic ``save``; removing
the last message leaves an empty session, which ``get_keys`` still lists (as
``SimpleChatStore`` keeps an empty list).

``ChatMemoryBuffer``, ``ChatSummaryMemoryBuffer`` and the chat engines built
on them take this store. LlamaIndex's newer ``Memory`` cannot: it needs an
``AsyncDBChatStore`` (a SQL table with a status per message), a different
interface from ``BaseChatStore``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.bridge.pydantic import PrivateAttr, ValidationError
from llama_index.core.storage.chat_store.base import BaseChatStore

from tieredstore.config import Limits
from tieredstore.core import TTLLike, check_session_id
from tieredstore.errors import InvalidInput, InvalidMessage, SessionNotFound, VersionConflict
from tieredstore.integrations import async_target, sync_target
from tieredstore.integrations.shared import ClosesOnExit, optional_ttl, shared_tiered_store
from tieredstore.model import Message, thaw_json
from tieredstore.plans import Op, Plan, arun, run
from tieredstore.tiering import Durability

__all__ = ["TieredChatStore", "from_record", "to_record"]

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_OWN_KEYS = ("role", "content", "additional_kwargs")
Edit = Callable[[list[Message]], tuple[list[Message] | None, Any]]
"""A rewrite: the new history (``None``: leave it as it is) and the result to return."""


def to_record(message: ChatMessage) -> dict[str, Any]:
    """A LlamaIndex message as a tieredstore message (see the module docs)."""
    data = message.model_dump(mode="json")
    return {
        "role": data["role"],
        "content": data["blocks"],
        "additional_kwargs": data["additional_kwargs"],
    }


def from_record(record: Mapping[str, Any]) -> ChatMessage:
    """The ``ChatMessage`` a record holds (see :func:`to_record`).

    Raises :class:`InvalidMessage` for a record LlamaIndex cannot represent
    (a role that is no ``MessageRole``, content that is no text or list).
    """
    data = thaw_json(record)
    role = data.get("role")
    try:
        role = MessageRole(role)
    except ValueError:
        raise InvalidMessage(f"role {role!r} is not a LlamaIndex MessageRole") from None
    extra = {key: value for key, value in data.items() if key not in _OWN_KEYS}
    kwargs = data.get("additional_kwargs")
    additional = {**kwargs, **extra} if isinstance(kwargs, dict) else extra
    try:
        return ChatMessage.model_validate(
            {"role": role, "additional_kwargs": additional, "blocks": _blocks(data.get("content"))}
        )
    except ValidationError as exc:
        raise InvalidMessage(f"not a LlamaIndex ChatMessage: {exc}") from exc


def _blocks(content: Any) -> list[Any]:
    """Content blocks from a record's ``content``: ours as they are, OpenAI's converted."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"block_type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidMessage(f"content must be text or a list, got {type(content).__name__}")
    if all(isinstance(part, dict) and "block_type" in part for part in content):
        return content
    blocks: list[Any] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            blocks.append({"block_type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                detail = image.get("detail") if isinstance(image, dict) else None
                blocks.append({"block_type": "image", "url": url, "detail": detail})
    return blocks


def _index(idx: object, what: str = "idx") -> int:
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise InvalidInput(f"{what} must be an integer, got {idx!r}")
    return idx


class TieredChatStore(ClosesOnExit, BaseChatStore):
    """A LlamaIndex ``BaseChatStore`` over a tieredstore store; keys are session ids.

    ``store`` is a sync store (every method works; the async ones run its
    calls in a worker thread) or an async one (only the async methods:
    ``aget_messages``, ``async_add_message``, ... await it; the sync ones
    raise ``TypeError``). LlamaIndex's ``ChatMemoryBuffer`` calls the sync
    methods even from its async ``aget``, so give it a sync store. ``ttl``
    (seconds or a ``timedelta``; ``0``/``None``: none of its own) is set by
    every write, as ``RedisChatStore``'s ``ttl``.
    """

    _store: Any = PrivateAttr()
    _ttl: TTLLike | None = PrivateAttr(default=None)
    _limits: Limits = PrivateAttr(default_factory=Limits)
    _release: Callable[[], None] | None = PrivateAttr(default=None)

    def __init__(self, store: Any, *, ttl: TTLLike | None = None) -> None:
        super().__init__()
        self._store = store
        self._ttl = optional_ttl(ttl)
        limits = getattr(store, "limits", None)
        self._limits = limits if isinstance(limits, Limits) else Limits()

    @classmethod
    def class_name(cls) -> str:
        return "TieredChatStore"

    @classmethod
    def from_url(
        cls,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        ttl: TTLLike | None = None,
        durability: Durability | None = None,
        **store_options: Any,
    ) -> Self:
        """A chat store on a :class:`~tieredstore.TieredStore` built from URLs.

        The arguments are those of ``TieredStore.from_url`` (neither URL: the
        embedded default, memory + SQLite), except that ``durability``
        defaults to ``"write_through"`` when both URLs are given. Chat stores
        (and LangChain histories) built with the same settings share one
        store; :meth:`close` gives it back and the last one closes it.
        """
        optional_ttl(ttl)
        store, release = shared_tiered_store({
            **store_options, "redis_url": redis_url, "database_url": database_url,
            "durability": durability,
        })
        try:
            chat_store = cls(store, ttl=ttl)
        except BaseException:
            release()
            raise
        chat_store._release = release
        return chat_store

    @property
    def store(self) -> Any:
        """The tieredstore store the messages live in."""
        return self._store

    @property
    def ttl(self) -> TTLLike | None:
        return self._ttl

    def close(self) -> None:
        """Give back the store :meth:`from_url` opened; a store you passed stays open."""
        if self._release is not None:
            self._release()

    # -- the logic, once -----------------------------------------------------------

    def _key(self, key: object) -> str:
        return check_session_id(key, self._limits)

    def _set(self, key: str, messages: Sequence[ChatMessage]) -> Plan[None]:
        records = [to_record(message) for message in messages]
        yield Op("store", "save", (self._key(key), records), {"ttl": self._ttl})

    def _get(self, key: str) -> Plan[list[ChatMessage]]:
        try:
            records = yield Op("store", "load", (self._key(key),))
        except SessionNotFound:
            return []
        return [from_record(record) for record in records]

    def _add(self, key: str, message: ChatMessage, idx: int | None) -> Plan[None]:
        sid, record = self._key(key), to_record(message)
        if idx is None:
            yield Op("store", "append", (sid, record), {"ttl": self._ttl})
            return
        at = _index(idx)

        def insert(messages: list[Message]) -> tuple[list[Message] | None, None]:
            messages.insert(at, Message.of(record))  # list.insert's rules, as LlamaIndex's
            return messages, None

        yield from self._rewrite(sid, insert)

    def _delete_all(self, key: str) -> Plan[list[ChatMessage] | None]:
        sid = self._key(key)
        try:
            session = yield Op("store", "get", (sid,))
        except SessionNotFound:
            return None
        deleted = yield Op("store", "delete", (sid,))
        return [from_record(record) for record in session.messages] if deleted else None

    def _delete_at(self, key: str, idx: int) -> Plan[ChatMessage | None]:
        at = _index(idx)

        def remove(messages: list[Message]) -> tuple[list[Message] | None, ChatMessage | None]:
            if not 0 <= at < len(messages):  # negative indexes too, as RedisChatStore
                return None, None
            return messages[:at] + messages[at + 1 :], from_record(messages[at])

        result: ChatMessage | None = yield from self._rewrite(self._key(key), remove)
        return result

    def _delete_last(self, key: str) -> Plan[ChatMessage | None]:
        def pop(messages: list[Message]) -> tuple[list[Message] | None, ChatMessage | None]:
            if not messages:
                return None, None
            return messages[:-1], from_record(messages[-1])

        result: ChatMessage | None = yield from self._rewrite(self._key(key), pop)
        return result

    def _rewrite(self, sid: str, edit: Edit) -> Plan[Any]:
        """Apply ``edit`` to the history by compare-and-swap on its version, retried."""
        while True:
            try:
                session = yield Op("store", "get", (sid,))
                messages, version = list(session.messages), session.version
            except SessionNotFound:
                messages, version = [], 0  # expected_version=0: "must not exist"
            new, result = edit(messages)
            if new is None:
                return result
            try:
                yield Op(
                    "store", "save", (sid, new), {"ttl": self._ttl, "expected_version": version}
                )
            except VersionConflict:
                continue  # written meanwhile: edit the new state
            return result

    def _keys(self) -> Plan[list[str]]:
        # Oldest activity first: a session written during the walk moves behind the
        # cursor and shows up again (deduplicated) instead of being skipped.
        keys: dict[str, None] = {}
        cursor: str | None = None
        while True:
            page = yield Op("store", "list", (), {"limit": 1000, "cursor": cursor, "order": "asc"})
            keys.update(dict.fromkeys(page.ids))
            cursor = page.next_cursor
            if cursor is None:
                return list(keys)

    def _sync(self) -> dict[str, Any]:
        return {"store": sync_target(self._store, type(self).__name__)}

    def _async(self) -> dict[str, Any]:
        return {"store": async_target(self._store)}

    # -- BaseChatStore ---------------------------------------------------------------

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Replace the history of ``key`` (atomically)."""
        run(self._set(key, messages), self._sync())

    def get_messages(self, key: str) -> list[ChatMessage]:
        """The messages of ``key``, oldest first (``[]`` if there are none)."""
        return run(self._get(key), self._sync())

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` atomically (``idx``: insert it there, as ``list.insert``)."""
        run(self._add(key, message, idx), self._sync())

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Delete the session; return the messages it held (``None`` if it did not exist)."""
        return run(self._delete_all(key), self._sync())

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove and return the message at ``idx`` (``0 <= idx < len``; else ``None``)."""
        return run(self._delete_at(key, idx), self._sync())

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the newest message (``None`` when there is none)."""
        return run(self._delete_last(key), self._sync())

    def get_keys(self) -> list[str]:
        """Every live session id of the store's namespace (a walk over all of them)."""
        return run(self._keys(), self._sync())

    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        await arun(self._set(key, messages), self._async())

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        return await arun(self._get(key), self._async())

    async def async_add_message(
        self, key: str, message: ChatMessage, idx: int | None = None
    ) -> None:
        await arun(self._add(key, message, idx), self._async())

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        return await arun(self._delete_all(key), self._async())

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        return await arun(self._delete_at(key, idx), self._async())

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        return await arun(self._delete_last(key), self._async())

    async def aget_keys(self) -> list[str]:
        return await arun(self._keys(), self._async())
