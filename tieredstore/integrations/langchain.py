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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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

from tieredstore.core import TTLLike
from tieredstore.errors import SessionNotFound
from tieredstore.integrations import async_target, sync_target
from tieredstore.model import thaw_json
from tieredstore.plans import Op, Plan, arun, run

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


class TieredChatMessageHistory(BaseChatMessageHistory):
    """The history of one session in a tieredstore store, for LangChain.

    ``store`` is a sync or an async store: the sync methods (``messages``,
    ``add_messages``, ``clear``) need a sync one; the async ones
    (``aget_messages``, ``aadd_messages``, ``aclear``) await an async store
    and run a sync store's calls in a worker thread. ``last`` loads only the
    newest messages; ``ttl`` applies to every write.
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
        self.store = store
        self.session_id = session_id
        self.last = last
        self.ttl = ttl

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

    # -- LangChain's interface -----------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The stored messages, oldest first (``[]`` for a new session)."""
        return run(self._get(), {"store": sync_target(self.store, type(self).__name__)})

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` atomically."""
        run(self._add(messages), {"store": sync_target(self.store, type(self).__name__)})

    def clear(self) -> None:
        """Delete the session."""
        run(self._clear(), {"store": sync_target(self.store, type(self).__name__)})

    async def aget_messages(self) -> list[BaseMessage]:
        return await arun(self._get(), {"store": async_target(self.store)})

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await arun(self._add(messages), {"store": async_target(self.store)})

    async def aclear(self) -> None:
        await arun(self._clear(), {"store": async_target(self.store)})
