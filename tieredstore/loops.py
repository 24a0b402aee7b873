"""Event-loop affinity of the asyncio stores: one client per running loop.

A ``redis.asyncio`` connection and a SQLAlchemy async connection belong to
the event loop that opened them; used from another loop they fail ("attached
to a different loop", "Event loop is closed") or hang. Yet one store is
naturally shared by code that runs on several loops: ``asyncio.run`` called
more than once, ``Runner.run_sync`` in worker threads, a framework's loop
plus a thread pool. :class:`PerLoop` gives each loop its own client: the one
the store was built with serves the first loop that uses it, and every other
loop gets a *twin* (same configuration, own connections), made on first use.

Each loop's client is closed on that loop when the loop shuts down its
asynchronous generators, which ``asyncio.run``, ``asyncio.Runner`` and the
Agents SDK's ``Runner.run_sync`` do at the end of every run (see
:func:`on_loop_shutdown`); a client made again later is simply new. A loop
closed without that step (``loop.close()`` alone) leaves its client's
sockets to the garbage collector.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["LoopThread", "PerLoop", "ShutdownWatch", "on_loop_shutdown"]

log = logging.getLogger(__name__)

T = TypeVar("T")

ShutdownWatch = AsyncGenerator[None, None]
"""What :func:`on_loop_shutdown` returns; the caller keeps it alive."""


async def _watch(callback: Callable[[], Awaitable[None]]) -> ShutdownWatch:
    try:
        yield
    finally:
        try:
            await callback()
        except Exception:  # a failed cleanup must not break the loop's shutdown
            log.warning("closing per-loop resources failed", exc_info=True)


def on_loop_shutdown(callback: Callable[[], Awaitable[None]]) -> ShutdownWatch:
    """Arrange for ``callback()`` to be awaited on the running loop when it shuts down.

    An asynchronous generator, started here and suspended at its ``yield``,
    is registered with the running loop; ``loop.shutdown_asyncgens()`` closes
    it, and its ``finally`` clause awaits ``callback()`` while the loop still
    runs. The caller must keep the returned generator referenced (the loop
    holds it weakly) and may drop it once the callback is no longer wanted;
    a dropped generator runs the callback when collected, on its loop.
    """
    watch = _watch(callback)
    step = watch.asend(None)  # registers the generator with the running loop
    with contextlib.suppress(StopIteration):
        step.send(None)  # runs it to its ``yield``, with no suspension
    return watch


class PerLoop(Generic[T]):
    """One resource per running event loop (see the module docstring).

    ``first`` serves the first loop that calls :meth:`get`; ``twin()`` makes
    the resource of any other loop (it may raise to refuse); ``close(resource,
    first)`` releases one, on its own loop, when that loop shuts down or in
    :meth:`aclose` (``first`` tells whether it is the resource the store was
    given, which the owner may want to leave open). Thread-safe.
    """

    def __init__(
        self,
        first: T,
        *,
        twin: Callable[[], T],
        close: Callable[[T, bool], Coroutine[Any, Any, None]],
    ) -> None:
        self.first = first
        self._twin = twin
        self._close = close
        self._lock = threading.Lock()
        self._first_loop: asyncio.AbstractEventLoop | None = None
        self._first_spent = False  # its loop shut down: it serves no loop any more
        self._twins: dict[asyncio.AbstractEventLoop, T] = {}
        self._watches: dict[asyncio.AbstractEventLoop, ShutdownWatch] = {}
        self._closed = False

    def get(self) -> T:
        """The resource of the running loop, made on first use (``first`` outside a loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self.first
        # The running loop's own entries are only ever changed on that loop's
        # thread, so a hit needs no lock.
        if loop is self._first_loop:
            return self.first
        resource = self._twins.get(loop)
        if resource is not None:
            return resource
        with self._lock:
            if self._closed:
                return self.first
            if self._first_loop is None and not self._first_spent:
                self._first_loop = loop
                resource = self.first
            else:
                self._forget_closed_loops()
                resource = self._twin()
                self._twins[loop] = resource
            self._watches[loop] = on_loop_shutdown(lambda: self._release(loop))
            return resource

    def _forget_closed_loops(self) -> None:
        """Drop what loops closed without shutting down left behind (the GC closes it)."""
        for loop in [each for each in self._watches if each.is_closed()]:
            self._twins.pop(loop, None)
            self._watches.pop(loop, None)
            if loop is self._first_loop:
                self._first_loop, self._first_spent = None, True

    async def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop`` is shutting down: close its resource there."""
        with self._lock:
            self._watches.pop(loop, None)
            if loop is self._first_loop:
                self._first_loop, self._first_spent = None, True
                resource, first = self.first, True
            elif loop in self._twins:
                resource, first = self._twins.pop(loop), False
            else:
                return
        await self._close(resource, first)

    async def aclose(self) -> None:
        """Close every resource: this loop's here, other running loops' on their loop.

        Another loop's are handed to it (closed when it next runs), a closed
        loop's are dropped; nothing waits on another loop, so this never blocks
        on one that is busy or idle.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            self._closed = True
            entries: list[tuple[asyncio.AbstractEventLoop | None, T, bool]] = [
                (each, resource, False) for each, resource in self._twins.items()
            ]
            if not self._first_spent:
                entries.append((self._first_loop, self.first, True))
            self._twins.clear()
            self._watches.clear()
            self._first_loop, self._first_spent = None, True
        for owner, resource, first in entries:
            if owner is None or owner is loop:
                await self._close(resource, first)
            elif not owner.is_closed():
                with contextlib.suppress(RuntimeError):  # it closed meanwhile
                    asyncio.run_coroutine_threadsafe(self._close(resource, first), owner)


class LoopThread:
    """A private event loop running on a daemon thread, for work that outlives callers' loops.

    The asyncio stores' invalidation listener runs here, so that it never
    depends on a loop that an application may stop or close at any time.
    :meth:`stop` ends the loop as ``asyncio.run`` would: its tasks are
    cancelled and awaited, its asynchronous generators shut down, then it is
    closed.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; its result as a future any thread or loop may wait on."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Ask the loop to finish (idempotent; returns at once)."""
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the loop has finished; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
