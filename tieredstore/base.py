"""The store contract: the ``StateStore`` protocol and the shared sync base class.

``BaseStore`` owns everything a store does *before* I/O — validating ids,
messages, metadata, TTLs and limits through :mod:`tieredstore.core` — and
calls a small set of primitives (``_save``, ``_append``, ...) that a backend
implements. Every bundled store derives from it, so the same input gets the
same error from every tier.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from tieredstore.config import Limits
from tieredstore.core import (
    Batch,
    Clock,
    Order,
    TTLLike,
    check_expected_version,
    check_last,
    check_limit,
    check_order,
    check_session_id,
    check_user_id,
    prepare_batch,
    prepare_metadata,
    resolve_ttl_ms,
    system_clock,
)
from tieredstore.errors import InvalidInput, SessionExists
from tieredstore.model import FrozenDict, Message, MessageLike, Page, Session

__all__ = ["BaseStore", "StateStore"]


@runtime_checkable
class StateStore(Protocol):
    """The four-method contract every store honours."""

    def save(self, session_id: str, messages: Iterable[MessageLike], /) -> int: ...

    def load(self, session_id: str, /) -> list[Message]: ...

    def delete(self, session_id: str, /) -> bool: ...

    def list(self, *, limit: int = 100, cursor: str | None = None) -> Page: ...


class BaseStore(ABC):
    """Validation and lifecycle shared by the bundled synchronous stores.

    ``default_ttl`` applies to writes that pass no ``ttl``; ``None`` means
    sessions do not expire unless a write asks. ``sliding_ttl`` refreshes a
    session's expiry on every read by the TTL of its last write.
    ``max_messages`` bounds a history by :func:`tieredstore.policy.plan_trim`.
    """

    tier: str = "memory"

    def __init__(
        self,
        *,
        default_ttl: TTLLike | None = None,
        max_messages: int | None = None,
        sliding_ttl: bool = False,
        limits: Limits | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.default_ttl_ms = resolve_ttl_ms(default_ttl, None)
        if max_messages is not None:
            check_limit(max_messages, "max_messages", maximum=2**31)
        self.max_messages = max_messages
        self.sliding_ttl = sliding_ttl
        self.clock: Clock = clock or system_clock
        self._closed = False

    # -- the contract -------------------------------------------------------

    def save(
        self,
        session_id: str,
        messages: Iterable[MessageLike],
        /,
        *,
        ttl: TTLLike | None = None,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Replace the session's history (creating it); return the new version.

        ``metadata`` and ``user_id`` replace the stored ones when given and are
        kept when ``None``. With ``expected_version`` (``0`` = must not exist)
        a mismatch raises :class:`VersionConflict` and nothing is written.
        """
        sid = self._sid(session_id)
        batch = prepare_batch(messages, self.limits)
        return self._save(
            sid,
            batch,
            ttl_ms=resolve_ttl_ms(ttl, None) or self.default_ttl_ms,
            metadata=prepare_metadata(metadata, self.limits),
            user_id=check_user_id(user_id, self.limits),
            expected_version=check_expected_version(expected_version),
        )

    def append(
        self,
        session_id: str,
        /,
        *messages: MessageLike,
        ttl: TTLLike | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Atomically append messages (creating the session); return the new version."""
        sid = self._sid(session_id)
        if not messages:
            raise InvalidInput("append needs at least one message")
        batch = prepare_batch(messages, self.limits)
        return self._append(
            sid,
            batch,
            ttl_ms=resolve_ttl_ms(ttl, None) or self.default_ttl_ms,
            expected_version=check_expected_version(expected_version),
        )

    def load(self, session_id: str, /, *, last: int | None = None) -> list[Message]:
        """The session's messages, oldest first (the newest ``last`` when given).

        Raises :class:`SessionNotFound` when the session is missing or expired;
        a session saved with no messages loads as ``[]``.
        """
        return self._load(self._sid(session_id), check_last(last))

    def get(self, session_id: str, /, *, last: int | None = None) -> Session:
        """The whole :class:`Session` (messages, metadata, version, expiry, tier)."""
        return self._get(self._sid(session_id), check_last(last))

    def count(self, session_id: str, /) -> int:
        """How many messages the session holds; :class:`SessionNotFound` if missing."""
        return self._count(self._sid(session_id))

    def exists(self, session_id: str, /) -> bool:
        return self._exists(self._sid(session_id))

    def merge_metadata(self, session_id: str, updates: Mapping[str, Any], /) -> FrozenDict:
        """Merge ``updates`` into the metadata (``None`` removes a key); return the result.

        Each key is updated atomically, so concurrent merges of different keys
        never lose one another. The session's version increases.
        """
        sid = self._sid(session_id)
        frozen = prepare_metadata(updates, self.limits)
        assert frozen is not None
        return self._merge_metadata(sid, frozen)

    def delete(self, session_id: str, /) -> bool:
        """Remove everything of the session; ``True`` if it existed.

        Deleting a missing session is not an error (it returns ``False``), so
        deletes are idempotent and safe to retry.
        """
        return self._delete(self._sid(session_id))

    def list(
        self,
        *,
        user_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "desc",
    ) -> Page:
        """A page of live session ids by last activity (newest first by default).

        Pass the returned ``next_cursor`` to continue. A session written after
        the first page appears on no later page; every other live session
        appears exactly once.
        """
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidInput("cursor must be a string or None")
        return self._list(
            check_user_id(user_id, self.limits), check_limit(limit), cursor, check_order(order)
        )

    def fork(self, source_id: str, new_id: str, /, *, ttl: TTLLike | None = None) -> int:
        """Copy history, metadata and user of ``source_id`` into the new ``new_id``.

        Raises :class:`SessionNotFound` for a missing source and
        :class:`SessionExists` when ``new_id`` exists. Returns the new version.
        """
        src, dst = self._sid(source_id), self._sid(new_id)
        if src == dst:
            raise SessionExists(dst)
        return self._fork(src, dst, ttl_ms=resolve_ttl_ms(ttl, None))

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Release connections; idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _close(self) -> None:  # noqa: B027 - optional hook, most stores need it
        """Backend hook for :meth:`close`."""

    def _sid(self, session_id: str) -> str:
        return check_session_id(session_id, self.limits)

    # -- primitives a backend implements -----------------------------------

    @abstractmethod
    def _save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> int: ...

    @abstractmethod
    def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int: ...

    @abstractmethod
    def _load(self, sid: str, last: int | None) -> builtins.list[Message]: ...

    @abstractmethod
    def _get(self, sid: str, last: int | None) -> Session: ...

    @abstractmethod
    def _count(self, sid: str) -> int: ...

    @abstractmethod
    def _exists(self, sid: str) -> bool: ...

    @abstractmethod
    def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict: ...

    @abstractmethod
    def _delete(self, sid: str) -> bool: ...

    @abstractmethod
    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page: ...

    @abstractmethod
    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int: ...
