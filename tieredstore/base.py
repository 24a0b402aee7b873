"""The store contract: the ``StateStore`` protocol and the shared base classes.

:class:`StoreCore` owns everything a store does *before* I/O — validating ids,
messages, metadata, TTLs and limits through :mod:`tieredstore.core` — and is
shared by the synchronous :class:`BaseStore` and the asynchronous
:class:`tieredstore.aio.AsyncBaseStore`. Those two only call a small set of
primitives (``_save``, ``_append``, ...) that a backend implements, so the same
input gets the same error from every tier, sync or async.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

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
from tieredstore.errors import InvalidInput, InvalidMessage, SessionExists
from tieredstore.locking import LocalLocks, LockPlan, SessionLock
from tieredstore.middleware import ConversationBlock, ConversationPlan
from tieredstore.model import FrozenDict, Message, MessageLike, Page, Session

__all__ = ["AppendArgs", "BaseStore", "SaveArgs", "StateStore", "StoreCore"]


@runtime_checkable
class StateStore(Protocol):
    """The four-method contract every store honours."""

    def save(self, session_id: str, messages: Iterable[MessageLike], /) -> int: ...

    def load(self, session_id: str, /) -> list[Message]: ...

    def delete(self, session_id: str, /) -> bool: ...

    def list(self, *, limit: int = 100, cursor: str | None = None) -> Page: ...


class SaveArgs(NamedTuple):
    """A validated ``save`` call."""

    sid: str
    batch: Batch
    ttl_ms: int | None
    metadata: FrozenDict | None
    user_id: str | None
    expected_version: int | None


class AppendArgs(NamedTuple):
    """A validated ``append`` call."""

    sid: str
    batch: Batch
    ttl_ms: int | None
    expected_version: int | None


class StoreCore:
    """Options and input validation shared by the sync and the async stores.

    ``default_ttl`` applies to writes that pass no ``ttl``; ``None`` means
    sessions do not expire unless a write asks. ``sliding_ttl`` refreshes a
    session's expiry on every read by the TTL of its last write.
    ``max_messages`` bounds a history by :func:`tieredstore.policy.plan_trim`.
    Nothing here performs I/O.
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
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidInput(f"limits must be a Limits, got {type(limits).__name__}")
        if not isinstance(sliding_ttl, bool):
            raise InvalidInput(f"sliding_ttl must be a bool, got {sliding_ttl!r}")
        if clock is not None and not callable(clock):
            raise InvalidInput("clock must be a callable returning unix seconds")
        self.limits = limits or Limits()
        self.default_ttl_ms = resolve_ttl_ms(default_ttl, None)
        if max_messages is not None:
            check_limit(max_messages, "max_messages", maximum=2**31)
        self.max_messages = max_messages
        self.sliding_ttl = sliding_ttl
        self.clock: Clock = clock or system_clock
        self._closed = False

    def _sid(self, session_id: str) -> str:
        return check_session_id(session_id, self.limits)

    def _ttl_ms(self, ttl: TTLLike | None) -> int | None:
        return resolve_ttl_ms(ttl, None) or self.default_ttl_ms

    def _save_args(
        self,
        session_id: str,
        messages: Iterable[MessageLike],
        ttl: TTLLike | None,
        metadata: Mapping[str, Any] | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> SaveArgs:
        sid = self._sid(session_id)
        batch = prepare_batch(messages, self.limits)
        return SaveArgs(
            sid,
            batch,
            self._ttl_ms(ttl),
            prepare_metadata(metadata, self.limits),
            check_user_id(user_id, self.limits),
            check_expected_version(expected_version),
        )

    def _append_args(
        self,
        session_id: str,
        messages: tuple[MessageLike, ...],
        ttl: TTLLike | None,
        expected_version: int | None,
    ) -> AppendArgs:
        sid = self._sid(session_id)
        if not messages:
            raise InvalidInput("append needs at least one message")
        batch = prepare_batch(messages, self.limits)
        return AppendArgs(sid, batch, self._ttl_ms(ttl), check_expected_version(expected_version))

    def _merge_args(self, session_id: str, updates: Mapping[str, Any]) -> tuple[str, FrozenDict]:
        sid = self._sid(session_id)
        if not isinstance(updates, Mapping):
            raise InvalidMessage(
                f"metadata updates must be a JSON object, got {type(updates).__name__}"
            )
        frozen = prepare_metadata(updates, self.limits)
        assert frozen is not None
        return sid, frozen

    def _list_args(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> tuple[str | None, int, str | None, Order]:
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidInput("cursor must be a string or None")
        return check_user_id(user_id, self.limits), check_limit(limit), cursor, check_order(order)

    def _fork_args(
        self, source_id: str, new_id: str, ttl: TTLLike | None
    ) -> tuple[str, str, int | None]:
        src, dst = self._sid(source_id), self._sid(new_id)
        if src == dst:
            raise SessionExists(dst)
        return src, dst, resolve_ttl_ms(ttl, None)

    # -- locking and the conversation middleware --------------------------------

    def _lock_backend(self) -> Any:
        """What takes session locks: Redis where the store has it, else this process.

        The default is process-local (:class:`~tieredstore.locking.LocalLocks`),
        scoped by :meth:`_lock_scope`.
        """
        return LocalLocks.scope(self._lock_scope())

    def _lock_scope(self) -> str:
        """Stores sharing a scope share their process-local locks."""
        return f"{type(self).__name__}@{id(self):x}"

    def _lock_plan(
        self, session_id: str, timeout: float, blocking_timeout: float | None
    ) -> LockPlan:
        return LockPlan(self._sid(session_id), timeout, blocking_timeout)

    def _conversation_plan(
        self,
        session_id: str,
        *,
        last: int | None,
        lock: bool,
        lock_timeout: float,
        blocking_timeout: float | None,
        commit_on_error: bool,
        check_version: bool,
        ttl: TTLLike | None,
    ) -> ConversationPlan:
        sid = self._sid(session_id)
        resolve_ttl_ms(ttl, None)  # reject a bad ttl now, not when the block commits
        return ConversationPlan(
            sid,
            last=check_last(last),
            lock=self._lock_plan(sid, lock_timeout, blocking_timeout) if lock else None,
            commit_on_error=commit_on_error,
            check_version=check_version,
            ttl=ttl,
            limits=self.limits,
        )


class BaseStore(StoreCore, ABC):
    """The synchronous contract over a backend's primitives (see :class:`StoreCore`)."""

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
        a = self._save_args(session_id, messages, ttl, metadata, user_id, expected_version)
        return self._save(
            a.sid,
            a.batch,
            ttl_ms=a.ttl_ms,
            metadata=a.metadata,
            user_id=a.user_id,
            expected_version=a.expected_version,
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
        a = self._append_args(session_id, messages, ttl, expected_version)
        return self._append(a.sid, a.batch, ttl_ms=a.ttl_ms, expected_version=a.expected_version)

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
        return self._merge_metadata(*self._merge_args(session_id, updates))

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
        return self._list(*self._list_args(user_id, limit, cursor, order))

    def fork(self, source_id: str, new_id: str, /, *, ttl: TTLLike | None = None) -> int:
        """Copy history, metadata and user of ``source_id`` into the new ``new_id``.

        Raises :class:`SessionNotFound` for a missing source and
        :class:`SessionExists` when ``new_id`` exists. Returns the new version.
        """
        src, dst, ttl_ms = self._fork_args(source_id, new_id, ttl)
        return self._fork(src, dst, ttl_ms=ttl_ms)

    # -- concurrency control ------------------------------------------------------

    def lock(
        self,
        session_id: str,
        /,
        *,
        timeout: float = 30.0,
        blocking_timeout: float | None = 10.0,
    ) -> SessionLock:
        """A lock on one session for read-modify-write sequences (``with store.lock(id):``).

        With a Redis tier it is a distributed lock; otherwise it is local to
        this process (see :mod:`tieredstore.locking`). It expires ``timeout``
        seconds after it was taken (or last extended), so a holder that dies
        cannot block others for longer. Taking it waits up to
        ``blocking_timeout`` seconds (``None``: as long as it takes) and then
        raises :class:`LockTimeout`.
        """
        return SessionLock(
            self._lock_plan(session_id, timeout, blocking_timeout), self._lock_backend()
        )

    def conversation(
        self,
        session_id: str,
        /,
        *,
        last: int | None = None,
        lock: bool = False,
        lock_timeout: float = 30.0,
        blocking_timeout: float | None = 10.0,
        commit_on_error: bool = False,
        check_version: bool = False,
        ttl: TTLLike | None = None,
    ) -> ConversationBlock:
        """``with store.conversation(id) as conv:`` — load, collect, append on exit.

        See :mod:`tieredstore.middleware`: the history (``[]`` for a new
        session) is loaded on entry, ``conv.add()`` collects messages, and they
        are appended atomically when the block exits normally. A block that
        raises writes nothing unless ``commit_on_error``. ``lock=True`` holds
        :meth:`lock` for the block; ``check_version=True`` makes the commit fail
        with :class:`VersionConflict` if the session changed since the load.
        """
        plan = self._conversation_plan(
            session_id,
            last=last,
            lock=lock,
            lock_timeout=lock_timeout,
            blocking_timeout=blocking_timeout,
            commit_on_error=commit_on_error,
            check_version=check_version,
            ttl=ttl,
        )
        return ConversationBlock(plan, self, self._lock_backend())

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

    def _close(self) -> None:
        """Backend hook for :meth:`close`."""

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
