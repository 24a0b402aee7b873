"""Session locks: ``with store.lock(id):`` / ``async with store.lock(id):``.

A lock is a token stored under the session's lock name for ``timeout``
seconds. Taking it is one atomic "set if absent, with expiry"; releasing and
extending are compare-and-delete / compare-and-expire on the token, so a
holder can never free or prolong a lock that expired and was taken by someone
else. A holder that dies (process killed, network gone) blocks others for at
most ``timeout`` seconds. Waiting retries with jittered exponential backoff
(5 ms doubling to 200 ms) until ``blocking_timeout`` has passed, then raises
:class:`~tieredstore.errors.LockTimeout`.

Where the lock lives:

* a store with a Redis tier (``RedisStore``, ``TieredStore`` with Redis, and
  their async twins) keeps it in Redis under
  ``{prefix}:{namespace}:{<session id>}:lock`` — the session's hash tag, so
  it shares the session's cluster slot — and it holds across processes and
  hosts;
* every other store (memory, the archive alone, the embedded default) uses
  :class:`LocalLocks`: the same semantics within **this process only**. Two
  processes sharing a SQLite or PostgreSQL archive without Redis are not
  serialised by it; use ``expected_version`` there.

**Lock or ``expected_version``?** A lock *serialises* read-modify-write
sequences: the second writer waits, then sees the first one's result — right
when work is expensive or must not be repeated (an LLM call per turn, tool
side effects). ``expected_version`` is *optimistic*: nobody waits, the loser
gets :class:`~tieredstore.errors.VersionConflict` and retries — right when
conflicts are rare and a retry is cheap, and it works on every store, across
processes, with no lock at all. A plain ``append`` needs neither: it is atomic.

The logic (:class:`LockPlan`) is a plan (see :mod:`tieredstore.plans`);
:class:`SessionLock` and :class:`AsyncSessionLock` only drive it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from types import TracebackType
from typing import Any, ClassVar, Self

from tieredstore.errors import InvalidInput, LockTimeout
from tieredstore.plans import Op, Plan, arun, run

__all__ = ["AsyncSessionLock", "LocalLocks", "LockPlan", "SessionLock"]

log = logging.getLogger(__name__)

_FIRST_DELAY = 0.005
_MAX_DELAY = 0.2


def _seconds(
    value: object, name: str, *, allow_none: bool = False, allow_zero: bool = False
) -> Any:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 if allow_zero else value > 0)
        or value > 365 * 86_400
    ):
        raise InvalidInput(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class LockPlan:
    """One lock's state and logic, I/O-free.

    Its plans yield ``Op("backend", ...)`` (the four lock primitives below)
    and ``Op("clock", "sleep", ...)``; a store supplies the backend.

    Backend primitives, all atomic: ``lock_acquire(sid, token, ttl_ms)`` sets
    the token if the lock is free; ``lock_release(sid, token)`` deletes it if
    it is still ``token``; ``lock_extend(sid, token, ttl_ms)`` resets its expiry
    if it is still ``token``; ``lock_held(sid)`` tells whether anyone holds it.
    Each returns a bool.
    """

    def __init__(self, sid: str, timeout: float, blocking_timeout: float | None) -> None:
        self.sid = sid
        self.timeout = _seconds(timeout, "timeout")
        self.blocking_timeout: float | None = _seconds(
            blocking_timeout, "blocking_timeout", allow_none=True, allow_zero=True
        )
        self.token: str | None = None

    @property
    def ttl_ms(self) -> int:
        return max(int(self.timeout * 1000), 1)

    def acquire(self, blocking: bool = True) -> Plan[bool]:
        """Take the lock; ``False`` if not ``blocking`` and it is held, else
        :class:`LockTimeout` once ``blocking_timeout`` has passed."""
        if self.token is not None:
            raise RuntimeError(f"the lock on {self.sid!r} is already held by this object")
        token = uuid.uuid4().hex
        start = time.monotonic()
        delay = _FIRST_DELAY
        while True:
            if (yield Op("backend", "lock_acquire", (self.sid, token, self.ttl_ms))):
                self.token = token
                return True
            if not blocking:
                return False
            waited = time.monotonic() - start
            if self.blocking_timeout is not None and waited >= self.blocking_timeout:
                raise LockTimeout(
                    f"could not lock session {self.sid!r} within {self.blocking_timeout:g} s"
                )
            pause = delay * random.uniform(0.5, 1.0)
            if self.blocking_timeout is not None:
                pause = min(pause, self.blocking_timeout - waited)
            yield Op("clock", "sleep", (max(pause, 0.0),))
            delay = min(delay * 2, _MAX_DELAY)

    def release(self, *, quiet: bool = False) -> Plan[bool]:
        """Give the lock back; ``True`` if it was still ours.

        A lock that expired before its release (held longer than ``timeout``)
        raises :class:`LockTimeout`, since the block it guarded may have
        overlapped another holder; with ``quiet`` (another exception is
        already on its way) this is only logged.
        """
        token, self.token = self.token, None
        if token is None:
            raise RuntimeError(f"the lock on {self.sid!r} is not held by this object")
        if (yield Op("backend", "lock_release", (self.sid, token))):
            return True
        message = (
            f"the lock on session {self.sid!r} expired before it was released "
            f"(held longer than timeout={self.timeout:g} s)"
        )
        if quiet:
            log.warning(message)
            return False
        raise LockTimeout(message)

    def extend(self, timeout: float | None = None) -> Plan[None]:
        """Reset the expiry to ``timeout`` (default: the lock's) from now.

        Raises :class:`LockTimeout` if the lock has already expired (it is
        then no longer held by this object).
        """
        if self.token is None:
            raise RuntimeError(f"the lock on {self.sid!r} is not held by this object")
        seconds = self.timeout if timeout is None else _seconds(timeout, "timeout")
        ttl_ms = max(int(seconds * 1000), 1)
        if not (yield Op("backend", "lock_extend", (self.sid, self.token, ttl_ms))):
            self.token = None
            raise LockTimeout(f"the lock on session {self.sid!r} expired and is no longer held")

    def held(self) -> Plan[bool]:
        """Whether anyone (this object or another) holds the lock now."""
        return (yield Op("backend", "lock_held", (self.sid,)))  # type: ignore[no-any-return]


class SessionLock:
    """A session lock for synchronous code; see :mod:`tieredstore.locking`."""

    def __init__(self, plan: LockPlan, backend: Any) -> None:
        self._plan = plan
        self._targets = {"backend": backend, "clock": time}

    @property
    def session_id(self) -> str:
        return self._plan.sid

    @property
    def owned(self) -> bool:
        """Whether this object took the lock (it may have expired since)."""
        return self._plan.token is not None

    def acquire(self, *, blocking: bool = True) -> bool:
        return run(self._plan.acquire(blocking), self._targets)

    def release(self) -> bool:
        return run(self._plan.release(), self._targets)

    def extend(self, timeout: float | None = None) -> None:
        run(self._plan.extend(timeout), self._targets)

    def locked(self) -> bool:
        return run(self._plan.held(), self._targets)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run(self._plan.release(quiet=exc_type is not None), self._targets)


class AsyncSessionLock:
    """A session lock for asyncio code (``async with store.lock(id):``)."""

    def __init__(self, plan: LockPlan, backend: Any) -> None:
        self._plan = plan
        self._targets = {"backend": backend, "clock": asyncio}

    @property
    def session_id(self) -> str:
        return self._plan.sid

    @property
    def owned(self) -> bool:
        """Whether this object took the lock (it may have expired since)."""
        return self._plan.token is not None

    async def acquire(self, *, blocking: bool = True) -> bool:
        return await arun(self._plan.acquire(blocking), self._targets)

    async def release(self) -> bool:
        return await arun(self._plan.release(), self._targets)

    async def extend(self, timeout: float | None = None) -> None:
        await arun(self._plan.extend(timeout), self._targets)

    async def locked(self) -> bool:
        return await arun(self._plan.held(), self._targets)

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await arun(self._plan.release(quiet=exc_type is not None), self._targets)


class LocalLocks:
    """Process-local session locks with the same semantics as the Redis ones.

    One registry per process, shared by threads and event loops alike (its
    operations never block). :meth:`scope` gives the backend of one store:
    stores with the same scope share their locks.
    """

    _locks: ClassVar[dict[tuple[str, str], tuple[str, float]]] = {}
    _mutex: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, scope: str) -> None:
        self._scope = scope

    @classmethod
    def scope(cls, scope: str) -> LocalLocks:
        return cls(scope)

    def _live(self, key: tuple[str, str], now: float) -> str | None:
        entry = self._locks.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._locks[key]
            return None
        return entry[0]

    def lock_acquire(self, sid: str, token: str, ttl_ms: int) -> bool:
        key, now = (self._scope, sid), time.monotonic()
        with self._mutex:
            if self._live(key, now) is not None:
                return False
            self._locks[key] = (token, now + ttl_ms / 1000)
            return True

    def lock_release(self, sid: str, token: str) -> bool:
        key = (self._scope, sid)
        with self._mutex:
            if self._live(key, time.monotonic()) != token:
                return False
            del self._locks[key]
            return True

    def lock_extend(self, sid: str, token: str, ttl_ms: int) -> bool:
        key, now = (self._scope, sid), time.monotonic()
        with self._mutex:
            if self._live(key, now) != token:
                return False
            self._locks[key] = (token, now + ttl_ms / 1000)
            return True

    def lock_held(self, sid: str) -> bool:
        with self._mutex:
            return self._live((self._scope, sid), time.monotonic()) is not None
