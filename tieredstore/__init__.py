"""tieredstore: conversation state for LLM apps, in memory, Redis and PostgreSQL.

The memory store and the data model import nothing heavy; the Redis, archive
and tiered stores are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tieredstore.base import BaseStore, StateStore
from tieredstore.breaker import CircuitBreaker
from tieredstore.config import Limits
from tieredstore.errors import (
    BackendUnavailable,
    CircuitOpen,
    ConfigurationError,
    InvalidInput,
    InvalidMessage,
    InvalidRecord,
    InvalidSessionId,
    LockTimeout,
    PayloadTooLarge,
    SchemaNotReady,
    SessionExists,
    SessionNotFound,
    TieredStoreError,
    VersionConflict,
)
from tieredstore.model import FrozenDict, FrozenList, Message, Page, Session
from tieredstore.tiers.memory import MemoryStore

if TYPE_CHECKING:
    from tieredstore.aio import AsyncBaseStore, AsyncMemoryStore, AsyncTieredStore
    from tieredstore.locking import AsyncSessionLock, SessionLock
    from tieredstore.middleware import Conversation
    from tieredstore.migration import migrate
    from tieredstore.store import TieredStore
    from tieredstore.tiers.archive import ArchiveStore, AsyncArchiveStore
    from tieredstore.tiers.redis import AsyncRedisStore, RedisStore

__version__ = "0.1.0"

__all__ = [
    "ArchiveStore",
    "AsyncArchiveStore",
    "AsyncBaseStore",
    "AsyncMemoryStore",
    "AsyncRedisStore",
    "AsyncSessionLock",
    "AsyncTieredStore",
    "BackendUnavailable",
    "BaseStore",
    "CircuitBreaker",
    "CircuitOpen",
    "ConfigurationError",
    "Conversation",
    "FrozenDict",
    "FrozenList",
    "InvalidInput",
    "InvalidMessage",
    "InvalidRecord",
    "InvalidSessionId",
    "Limits",
    "LockTimeout",
    "MemoryStore",
    "Message",
    "Page",
    "PayloadTooLarge",
    "RedisStore",
    "SchemaNotReady",
    "Session",
    "SessionExists",
    "SessionLock",
    "SessionNotFound",
    "StateStore",
    "TieredStore",
    "TieredStoreError",
    "VersionConflict",
    "__version__",
    "migrate",
]

_LAZY = {
    "ArchiveStore": "tieredstore.tiers.archive",
    "AsyncArchiveStore": "tieredstore.tiers.archive",
    "AsyncBaseStore": "tieredstore.aio",
    "AsyncMemoryStore": "tieredstore.aio",
    "AsyncRedisStore": "tieredstore.tiers.redis",
    "AsyncSessionLock": "tieredstore.locking",
    "AsyncTieredStore": "tieredstore.aio",
    "Conversation": "tieredstore.middleware",
    "RedisStore": "tieredstore.tiers.redis",
    "SessionLock": "tieredstore.locking",
    "TieredStore": "tieredstore.store",
    "migrate": "tieredstore.migration",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tieredstore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
