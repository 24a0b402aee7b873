"""Adapters for agent frameworks, each behind an optional extra.

* :mod:`tieredstore.integrations.langchain` (``pip install 'tieredstore[langchain]'``):
  :class:`~tieredstore.integrations.langchain.TieredChatMessageHistory`, a
  LangChain ``BaseChatMessageHistory``.
* :mod:`tieredstore.integrations.openai_agents`
  (``pip install 'tieredstore[openai-agents]'``):
  :class:`~tieredstore.integrations.openai_agents.TieredSession`, an OpenAI
  Agents SDK ``Session``.
* :mod:`tieredstore.integrations.llama_index` (``pip install 'tieredstore[llama-index]'``):
  :class:`~tieredstore.integrations.llama_index.TieredChatStore`, a LlamaIndex
  ``BaseChatStore``.
* :mod:`tieredstore.integrations.google_adk` (``pip install 'tieredstore[google-adk]'``):
  :class:`~tieredstore.integrations.google_adk.TieredSessionService`, a Google
  ADK ``BaseSessionService``.
* :mod:`tieredstore.integrations.langgraph` (``pip install 'tieredstore[langgraph]'``):
  :class:`~tieredstore.integrations.langgraph.TieredCheckpointSaver`, a
  LangGraph ``BaseCheckpointSaver`` over Redis and an archive.

Each takes any store — sync (``TieredStore``, ``RedisStore``, ...) or async
(``AsyncTieredStore``, ...). Their I/O is written once as plans (see
:mod:`tieredstore.plans`): awaited on an async store, called directly on a
sync one, and run in a worker thread when async code uses a sync store.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from tieredstore.aio import AsyncBaseStore

__all__ = ["async_target", "sync_target"]


class _InThread:
    """A sync store seen from async code: each call runs in a worker thread."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._store, name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            return asyncio.to_thread(method, *args, **kwargs)

        return call


def async_target(store: Any) -> Any:
    """What async adapter methods call: the async store, or a sync one via threads."""
    return store if isinstance(store, AsyncBaseStore) else _InThread(store)


def sync_target(store: Any, adapter: str) -> Any:
    """What sync adapter methods call; an async store cannot serve them."""
    if isinstance(store, AsyncBaseStore):
        raise TypeError(
            f"{adapter} was built over an async store: use its async methods, "
            "or build it over a sync store"
        )
    return store
