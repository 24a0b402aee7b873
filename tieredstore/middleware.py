"""Conversation middleware: load a session, collect a turn, append it on success.

::

    with store.conversation("s-123", last=20) as conv:        # sync
        reply = llm(conv.messages + [user_message])
        conv.add(user_message, reply)

    async with store.conversation("s-123", lock=True) as conv:  # async
        ...

On entry the history is loaded (the newest ``last`` messages; ``[]`` for a new
session). ``conv.add()`` validates and collects messages; ``conv.messages`` is
the loaded history followed by what was added so far. When the block exits
normally, the added messages are appended in one atomic ``append`` (nothing
is written if none were added). When it raises, nothing is written — unless
``commit_on_error=True``, which appends what was collected and lets the
exception propagate. ``conv.discard()`` drops what was collected.

``lock=True`` holds the session lock (:mod:`tieredstore.locking`) from before
the load until after the append, so concurrent blocks on one session run one
after another and each sees the previous one's messages. If the lock expired
during the block (it ran longer than ``lock_timeout``), the commit raises
:class:`~tieredstore.errors.LockTimeout` and writes nothing.
``check_version=True`` appends with ``expected_version`` set to the version
loaded, so the commit raises :class:`~tieredstore.errors.VersionConflict`
(writing nothing) if anyone wrote to the session meanwhile — optimistic
concurrency without waiting.

:class:`ConversationPlan` holds the logic as plans (see
:mod:`tieredstore.plans`); :class:`ConversationBlock` (``with``) and
:class:`AsyncConversationBlock` (``async with``) only drive them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tieredstore.config import Limits
from tieredstore.core import TTLLike, prepare_batch
from tieredstore.errors import SessionNotFound
from tieredstore.model import Message, MessageLike
from tieredstore.plans import Op, Plan, arun, run

if TYPE_CHECKING:
    from tieredstore.locking import LockPlan

__all__ = ["AsyncConversationBlock", "Conversation", "ConversationBlock", "ConversationPlan"]


class Conversation:
    """What a ``conversation`` block works with.

    ``history`` is what was loaded, ``pending`` what the block added,
    ``messages`` both in order. ``version`` is the session's version at load
    (``0`` for a new session); ``committed_version`` the version after the
    commit (``None`` until then, or when nothing was written).
    """

    def __init__(
        self, session_id: str, history: Sequence[Message], version: int, limits: Limits
    ) -> None:
        self.session_id = session_id
        self.history: tuple[Message, ...] = tuple(history)
        self.version = version
        self.committed_version: int | None = None
        self._pending: list[Message] = []
        self._limits = limits

    @property
    def is_new(self) -> bool:
        """Whether the session did not exist when the block started."""
        return self.version == 0

    @property
    def pending(self) -> list[Message]:
        """The messages added during the block (a copy)."""
        return list(self._pending)

    @property
    def messages(self) -> list[Message]:
        """The loaded history followed by the messages added so far."""
        return [*self.history, *self._pending]

    def add(self, *messages: MessageLike) -> None:
        """Collect messages for the commit; invalid ones raise here, not at exit."""
        self._pending.extend(prepare_batch(messages, self._limits).messages)

    def discard(self) -> None:
        """Drop every collected message: the block will write nothing."""
        self._pending.clear()


class ConversationPlan:
    """The middleware's logic for one block, I/O-free.

    Its plans yield ``Op("store", ...)`` (``get``/``append`` of the store) and
    the lock's operations (see :class:`~tieredstore.locking.LockPlan`).
    """

    def __init__(
        self,
        sid: str,
        *,
        last: int | None,
        lock: LockPlan | None,
        commit_on_error: bool,
        check_version: bool,
        ttl: TTLLike | None,
        limits: Limits,
    ) -> None:
        self.sid = sid
        self.last = last
        self.lock = lock
        self.commit_on_error = commit_on_error
        self.check_version = check_version
        self.ttl = ttl
        self.limits = limits

    def enter(self) -> Plan[Conversation]:
        """Take the lock (if asked), then load the history."""
        if self.lock is not None:
            yield from self.lock.acquire()
        try:
            try:
                session = yield Op("store", "get", (self.sid,), {"last": self.last})
            except SessionNotFound:
                return Conversation(self.sid, (), 0, self.limits)
        except BaseException:
            if self.lock is not None:
                yield from self.lock.release(quiet=True)
            raise
        return Conversation(self.sid, session.messages, session.version, self.limits)

    def exit(self, conv: Conversation, failed: bool) -> Plan[None]:
        """Append what was collected (unless the block failed), then unlock."""
        try:
            if conv._pending and (not failed or self.commit_on_error):
                if self.lock is not None:
                    yield from self.lock.extend()  # still ours? else write nothing
                conv.committed_version = yield Op(
                    "store",
                    "append",
                    (self.sid, *conv._pending),
                    {
                        "ttl": self.ttl,
                        "expected_version": conv.version if self.check_version else None,
                    },
                )
        except BaseException:
            if self.lock is not None and self.lock.token is not None:
                yield from self.lock.release(quiet=True)
            raise
        if self.lock is not None and self.lock.token is not None:
            yield from self.lock.release(quiet=failed)


class ConversationBlock:
    """``with store.conversation(id) as conv:`` (see the module docstring)."""

    def __init__(self, plan: ConversationPlan, store: Any, lock_backend: Any) -> None:
        self._plan = plan
        self._targets = {"store": store, "backend": lock_backend, "clock": time}
        self._conv: Conversation | None = None

    def __enter__(self) -> Conversation:
        self._conv = run(self._plan.enter(), self._targets)
        return self._conv

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conv is not None, "the block was not entered"
        run(self._plan.exit(self._conv, exc_type is not None), self._targets)


class AsyncConversationBlock:
    """``async with store.conversation(id) as conv:`` (see the module docstring)."""

    def __init__(self, plan: ConversationPlan, store: Any, lock_backend: Any) -> None:
        self._plan = plan
        self._targets = {"store": store, "backend": lock_backend, "clock": asyncio}
        self._conv: Conversation | None = None

    async def __aenter__(self) -> Conversation:
        self._conv = await arun(self._plan.enter(), self._targets)
        return self._conv

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conv is not None, "the block was not entered"
        await arun(self._plan.exit(self._conv, exc_type is not None), self._targets)
