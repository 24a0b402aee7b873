"""Timeouts that bound every call to a server, and the client-side watchdog.

PostgreSQL gets three server-side settings and one client-side bound
(:class:`ArchiveTimeouts`): ``connect_timeout`` (libpq), ``statement_timeout``
and ``idle_in_transaction_session_timeout`` (sent as ``options=-c ...`` at
connect), and ``io``: the longest one transaction attempt may wait on the
server. Server-side timeouts cannot fire on a server that accepted the TCP
connection but never answers (hung, stopped, partitioned behind a proxy), and
TCP keepalives cannot either while the peer's kernel still ACKs; so when
``io`` passes, the :class:`Watchdog` shuts the connection's socket down,
which wakes the blocked driver (sync or asyncio) with a connection error.

Settings in the database URL win over these defaults:
``?connect_timeout=3&options=-c%20statement_timeout%3D5s``.

Redis: :data:`REDIS_TIMEOUTS` (``socket_timeout``, ``socket_connect_timeout``)
are the defaults the Redis stores give a client they build; keywords and
URL parameters override them.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["REDIS_TIMEOUTS", "WATCHDOG", "ArchiveTimeouts", "Watchdog"]

REDIS_TIMEOUTS: Mapping[str, float] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}
"""Defaults for a Redis client the store builds: seconds per reply, per connect."""

IO_OPTION = "tieredstore_io_timeout"
"""The engine execution option that carries the client-side bound to the store."""

_IO_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class ArchiveTimeouts:
    """Timeouts of the archive's PostgreSQL connections, in seconds.

    ``connect``: libpq ``connect_timeout`` (whole seconds, at least 2).
    ``statement``: server ``statement_timeout``. ``idle_in_transaction``:
    server ``idle_in_transaction_session_timeout`` (a client that vanished
    mid-transaction stops holding its row locks). ``io``: client-side bound
    on one transaction attempt once connected (``connect`` bounds connecting);
    ``None`` derives ``statement + 5`` from the effective ``statement_timeout``
    (the URL's included). ``0`` or ``None`` disables a
    server setting; ``io=0`` disables the watchdog. SQLite ignores them all
    (it keeps its ``busy_timeout``).
    """

    connect: float | None = 5.0
    statement: float | None = 30.0
    idle_in_transaction: float | None = 60.0
    io: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "statement", "idle_in_transaction", "io"):
            value = getattr(self, name)
            ok = value is None or (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= 0
            )
            if not ok:
                from tieredstore.errors import InvalidInput

                raise InvalidInput(f"timeout {name!r} must be seconds >= 0 or None, got {value!r}")

    def engine_options(
        self, query: Mapping[str, Any], engine_options: dict[str, Any]
    ) -> dict[str, Any]:
        """Add these timeouts to PostgreSQL ``engine_options``, under the URL's own ``query``.

        A setting already in the URL, in ``connect_args`` or in ``PGOPTIONS``
        is kept; the effective client bound goes in the execution options.
        """
        connect_args = dict(engine_options.get("connect_args") or {})
        if self.connect and _param(connect_args, query, "connect_timeout") is None:
            connect_args["connect_timeout"] = max(2, math.ceil(self.connect))
        options = _param(connect_args, query, "options") or os.environ.get("PGOPTIONS", "")
        added = []
        for guc, seconds in (
            ("statement_timeout", self.statement),
            ("idle_in_transaction_session_timeout", self.idle_in_transaction),
        ):
            if seconds and _guc(options, guc) is None:
                added.append(f"-c {guc}={round(seconds * 1000)}")
        if added:
            connect_args["options"] = " ".join([options, *added]).strip()
        engine_options["connect_args"] = connect_args
        execution = dict(engine_options.get("execution_options") or {})
        statement = _duration(_guc(str(connect_args.get("options", options)), "statement_timeout"))
        execution.setdefault(IO_OPTION, self._io(statement))
        engine_options["execution_options"] = execution
        return engine_options

    def io_bound(self) -> float | None:
        """The client bound when nothing overrides these timeouts (a caller's own engine)."""
        return self._io(self.statement)

    def _io(self, statement: float | None) -> float | None:
        if self.io is not None:
            return self.io or None
        # No (or an unreadable) server bound: do not guess a client one.
        return statement + _IO_GRACE if statement else None


def _param(connect_args: Mapping[str, Any], query: Mapping[str, Any], key: str) -> str | None:
    value = connect_args.get(key, query.get(key))
    if isinstance(value, tuple | list):
        value = value[-1] if value else None
    return None if value is None else str(value)


def _guc(options: str, name: str) -> str | None:
    """The value ``options`` (libpq ``-c name=value`` / ``--name=value``) sets for ``name``."""
    found = re.findall(rf"(?:^|\s)(?:-c\s*|--){re.escape(name)}=(\S+)", options)
    return found[-1].strip("'\"") if found else None


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(value: str | None) -> float | None:
    """Seconds of a PostgreSQL time setting (bare numbers are milliseconds)."""
    if value is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?", value.strip())
    if match is None:
        return None
    return float(match.group(1)) * _UNITS[match.group(2) or "ms"]


# -- the watchdog ----------------------------------------------------------------


class _Watch:
    """One armed deadline over one connection's socket (a context manager).

    If it fired, an exception leaving the block is replaced by ``on_fire()``
    (raised ``from`` the driver's error), which says what happened.
    """

    __slots__ = ("_dog", "_fd", "_on_fire", "deadline", "fired", "seconds")

    def __init__(
        self, dog: Watchdog, fd: int, seconds: float, on_fire: Callable[[], Exception] | None
    ) -> None:
        self._dog = dog
        self._on_fire = on_fire
        # Our own descriptor of the socket: the driver may close its own while
        # we are armed, and the number could then be reused by another socket.
        self._fd: int | None = os.dup(fd)
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.fired = False

    def __enter__(self) -> _Watch:
        self._dog._arm(self)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._dog._disarm(self)
        if self.fired and isinstance(exc, Exception) and self._on_fire is not None:
            raise self._on_fire() from exc

    def _fire(self) -> None:
        """Shut the socket down (under the watchdog's lock): the blocked call wakes."""
        if self._fd is None:
            return
        self.fired = True
        sock = socket.socket(fileno=os.dup(self._fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Watchdog:
    """Shuts down the socket of a transaction that outlives its deadline.

    One daemon thread per process (started on first use, restarted after a
    fork) sleeps until the earliest armed deadline; arming and disarming cost
    a lock and a dict update. It serves sync and asyncio connections alike:
    a socket shut down from this thread wakes the event loop's reader too.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, _Watch] = {}
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def watch(
        self, fd: int, seconds: float, on_fire: Callable[[], Exception] | None = None
    ) -> _Watch:
        """A context manager: while inside, socket ``fd`` is shut down after ``seconds``."""
        return _Watch(self, fd, seconds, on_fire)

    def _arm(self, watch: _Watch) -> None:
        with self._cond:
            self._armed[id(watch)] = watch
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tieredstore-watchdog", daemon=True
                )
                self._thread.start()
            elif watch.deadline < self._wake_at:
                self._cond.notify()

    def _disarm(self, watch: _Watch) -> None:
        with self._cond:
            self._armed.pop(id(watch), None)
            watch._close()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                earliest = math.inf
                for key, watch in list(self._armed.items()):
                    if watch.deadline <= now:
                        del self._armed[key]
                        watch._fire()
                    else:
                        earliest = min(earliest, watch.deadline)
                self._wake_at = earliest
                self._cond.wait(None if earliest == math.inf else earliest - now)

    def _after_fork(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._armed = {}
        self._wake_at = math.inf
        self._thread = None


WATCHDOG = Watchdog()
"""The process's watchdog."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG._after_fork)


def db_failure(exc: BaseException) -> bool:
    """Whether a database error means the server is unreachable or not answering.

    Those count for the archive's circuit breaker: on PostgreSQL connection
    errors (SQLSTATE class 08, or none at all), lost connections, pool
    timeouts, resource exhaustion (53), cancelled statements and shutdowns
    (57), system errors (58) and our watchdog's verdict; on SQLite a file
    that cannot be opened or read. Errors the server answered with
    (constraints, syntax, serialization, a missing schema, SQLite's
    "database is locked") do not.
    """
    import sqlalchemy.exc as sa_exc

    from tieredstore.errors import BackendUnavailable, SchemaNotReady

    if isinstance(exc, BackendUnavailable):
        return not isinstance(exc, SchemaNotReady)
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return False
    orig: Any = exc.orig
    if hasattr(orig, "sqlstate"):  # psycopg
        state = orig.sqlstate
        return state is None or str(state)[:2] in {"08", "53", "57", "58"}
    name = str(getattr(orig, "sqlite_errorname", ""))
    text = str(orig)
    return (
        name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_NOTADB"))
        or "unable to open database" in text
        or "disk I/O error" in text
    )
