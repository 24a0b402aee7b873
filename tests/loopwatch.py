"""Watch an asyncio loop's thread for blocking calls, and measure each step's CPU time.

"Nothing blocks the event loop" is checked without a clock: while the watch
is on, the primitives through which Python code can block a thread record
each call made on the loop's thread --

* ``time.sleep`` (with a positive delay);
* ``socket.socket`` I/O on a *blocking* socket (``gettimeout() != 0``: the
  asyncio transports use non-blocking ones), and name resolution;
* synchronous psycopg (``psycopg.waiting.wait`` / ``wait_conn``, through
  which every sync psycopg call waits for the server);
* ``sqlite3.connect`` (aiosqlite connects on its own thread);
* ``threading.Condition.wait`` (``Future.result()``, ``Event.wait()``,
  ``Queue.get()``: waiting on another thread), except ``Thread.start``
  waiting for the thread it starts (aiosqlite starts one per connection).

A slow machine makes none of these appear or disappear, so the check holds
under any load. Separately, each loop step (``Handle._run``) is timed with
the loop thread's CPU clock (``time.thread_time``), which waiting for a core
does not advance: a step that computes for long is seen whatever the load.
The interpreter's garbage collections are timed apart (``gc.callbacks``) and
not charged to the step they happen to interrupt.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg.waiting
import pytest

_SOCKET_IO = ("connect", "connect_ex", "accept", "recv", "recv_into", "recvfrom",
              "recvfrom_into", "send", "sendall", "sendto", "sendfile")
_RESOLVERS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr",
              "getnameinfo")


@dataclass
class LoopWatch:
    """What ran on the watched thread: blocking calls, steps and their CPU time."""

    thread: int | None = None
    blocking: list[str] = field(default_factory=list)
    steps: int = 0
    step_cpu_total: float = 0.0
    slowest_step: tuple[float, str] = (0.0, "")
    gc_cpu: float = 0.0  # the interpreter's collections on the thread, not charged to steps
    _gc_started: float = 0.0

    def on_this_thread(self) -> bool:
        return self.thread is not None and threading.get_ident() == self.thread

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if self.on_this_thread():
            if phase == "start":
                self._gc_started = time.thread_time()
            else:
                self.gc_cpu += time.thread_time() - self._gc_started

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Watch the calling thread (call it inside the running loop) until exit."""
        self.thread = threading.get_ident()
        try:
            yield
        finally:
            self.thread = None

    def _guard(self, name: str, original: Callable[..., Any],
               blocks: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
        watch = self

        @functools.wraps(original)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if watch.on_this_thread() and blocks(*args, **kwargs):
                callers = traceback.extract_stack(limit=4)[:-1]
                where = " < ".join(f"{c.filename}:{c.lineno}" for c in reversed(callers))
                watch.blocking.append(f"{name} from {where}")
            return original(*args, **kwargs)

        return guarded


def _blocking_socket(sock: socket.socket, *args: Any, **kwargs: Any) -> bool:
    return sock.gettimeout() != 0.0


def _positive(seconds: float = 0, *args: Any) -> bool:
    return seconds > 0


def _waits(condition: Any, timeout: float | None = None) -> bool:
    """A wait for another thread -- except ``Thread.start`` waiting for its thread to begin."""
    frame = sys._getframe(1)
    for _ in range(4):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            break
        if frame.f_code is threading.Thread.start.__code__:
            return False
    return timeout is None or timeout > 0


@contextmanager
def loop_watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopWatch]:
    """Install the guards and the step timer; yields the :class:`LoopWatch`."""
    watch = LoopWatch()
    with monkeypatch.context() as patch:
        patch.setattr(time, "sleep", watch._guard("time.sleep", time.sleep, _positive))
        for name in _SOCKET_IO:
            patch.setattr(socket.socket, name, watch._guard(
                f"socket.{name} (blocking socket)", getattr(socket.socket, name),
                _blocking_socket))
        for name in _RESOLVERS:
            patch.setattr(socket, name, watch._guard(f"socket.{name}", getattr(socket, name)))
        for name in ("wait", "wait_conn"):
            patch.setattr(psycopg.waiting, name, watch._guard(
                f"psycopg.waiting.{name} (sync psycopg)", getattr(psycopg.waiting, name)))
        patch.setattr(sqlite3, "connect", watch._guard("sqlite3.connect", sqlite3.connect))
        patch.setattr(threading.Condition, "wait", watch._guard(
            "threading.Condition.wait", threading.Condition.wait, _waits))

        run = asyncio.events.Handle._run

        def timed_run(handle: asyncio.Handle) -> None:
            if not watch.on_this_thread():
                return run(handle)  # type: ignore[no-any-return]
            start, collected = time.thread_time(), watch.gc_cpu
            try:
                return run(handle)  # type: ignore[no-any-return]
            finally:
                spent = time.thread_time() - start - (watch.gc_cpu - collected)
                watch.steps += 1
                watch.step_cpu_total += spent
                if spent > watch.slowest_step[0]:
                    watch.slowest_step = (spent, repr(handle)[:300])

        patch.setattr(asyncio.events.Handle, "_run", timed_run)
        gc.callbacks.append(watch._on_gc)
        try:
            yield watch
        finally:
            gc.callbacks.remove(watch._on_gc)
