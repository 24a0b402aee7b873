"""Round trips per operation, on the client and on the servers.

Redis (a private server, so nothing else talks to it):

* *client round trips*: calls of redis-py's ``send_packed_command`` (sync
  and asyncio connections) made by the measuring thread; one call sends
  one command or one whole pipeline and is followed by reading its replies;
* *server commands*: the slow log with a threshold of 0 µs records every
  command a client sent (``MULTI`` and the commands queued in it count,
  ``EXEC`` does not); commands run inside a script are logged under the
  script client (address ``?:0``) and are counted apart;
* *commandstats*: the delta of ``INFO commandstats`` (every command, those
  inside scripts included), for cross-checking.

PostgreSQL: libpq's protocol trace (``pgconn.trace()``) of every connection
the operation uses (SQLAlchemy engines: the connections checked out while
counting; psycopg connections: traced directly); each ``ReadyForQuery``
message from the server ends one round trip (a simple ``Query``, or an
extended-protocol batch ending in ``Sync``). ``BEGIN`` and ``COMMIT`` are
round trips of their own and are counted.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
import redis.asyncio.connection
import redis.connection
import sqlalchemy as sa
from psycopg.pq import Trace

_SERVER_ONLY = {b"SLOWLOG", b"INFO", b"CONFIG", b"CLIENT"}
_SCRIPT_CLIENT = b"?:0"


class ClientSends:
    """Counts ``send_packed_command`` calls of the measuring thread while active."""

    def __init__(self) -> None:
        self.count = 0
        self._thread = threading.get_ident()
        self._active = False
        sync_send: Any = redis.connection.AbstractConnection.send_packed_command
        async_send: Any = redis.asyncio.connection.AbstractConnection.send_packed_command
        self._originals = (sync_send, async_send)
        counter = self

        def counted_sync(conn: Any, *args: Any, **kwargs: Any) -> Any:
            counter._note()
            return sync_send(conn, *args, **kwargs)

        async def counted_async(conn: Any, *args: Any, **kwargs: Any) -> Any:
            counter._note()
            return await async_send(conn, *args, **kwargs)

        redis.connection.AbstractConnection.send_packed_command = counted_sync  # type: ignore[method-assign,assignment]
        redis.asyncio.connection.AbstractConnection.send_packed_command = counted_async  # type: ignore[method-assign,assignment]

    def _note(self) -> None:
        if self._active and threading.get_ident() == self._thread:
            self.count += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def close(self) -> None:
        sync_send, async_send = self._originals
        redis.connection.AbstractConnection.send_packed_command = sync_send  # type: ignore[method-assign]
        redis.asyncio.connection.AbstractConnection.send_packed_command = async_send  # type: ignore[method-assign]


def _commandstats(admin: redis.Redis) -> dict[str, int]:
    stats = admin.info("commandstats")
    return {
        name: int(values["calls"])
        for name, values in stats.items()
        if name.split("_", 1)[1].split("|")[0].upper().encode() not in _SERVER_ONLY
    }


class RedisRoundTrips:
    """Round trips of operations on a private Redis (see the module docstring)."""

    def __init__(self, admin: redis.Redis) -> None:
        self.admin = admin
        self.sends = ClientSends()

    def measure(self, op: Callable[[], Any], times: int) -> dict[str, float]:
        """Per call of ``op``: client round trips, server commands (top level and
        inside scripts) and the commandstats delta."""
        admin = self.admin
        admin.config_set("slowlog-max-len", 100_000)
        admin.config_set("slowlog-log-slower-than", 0)
        admin.slowlog_reset()
        before_stats = _commandstats(admin)
        before_sends = self.sends.count
        with self.sends.counting():
            for _ in range(times):
                op()
        after_stats = _commandstats(admin)
        admin.config_set("slowlog-log-slower-than", -1)
        entries = admin.slowlog_get(100_000)
        top = inner = 0
        for entry in entries:
            command = entry["command"].split(b" ", 1)[0].upper()
            if command in _SERVER_ONLY:
                continue
            if entry.get("client_address") == _SCRIPT_CLIENT:
                inner += 1
            else:
                top += 1
        stats_delta = sum(after_stats.get(k, 0) - before_stats.get(k, 0) for k in after_stats)
        return {
            "client_round_trips": (self.sends.count - before_sends) / times,
            "server_commands": top / times,
            "commands_in_scripts": inner / times,
            "commandstats_delta": stats_delta / times,
        }

    def close(self) -> None:
        self.sends.close()


class PgRoundTrips:
    """PostgreSQL round trips of operations, from libpq's protocol trace."""

    def __init__(self) -> None:
        self._files: dict[int, int] = {}
        self._traced: list[Any] = []
        self._active = False
        self._engines: list[sa.engine.Engine] = []

    def watch_engine(self, engine: sa.engine.Engine) -> None:
        """Trace the connections ``engine`` checks out while counting."""
        sa.event.listen(engine, "checkout", self._on_checkout)
        self._engines.append(engine)

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if self._active:
            driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
            self.trace(driver)

    def trace(self, psycopg_connection: Any) -> None:
        """Trace a psycopg (sync or async) connection until the count ends (libpq
        keeps the stream it opens on a duplicate of the file's descriptor)."""
        pgconn = psycopg_connection.pgconn
        if id(pgconn) in self._files:
            return
        trace_file = os.memfd_create("pg-trace")
        self._files[id(pgconn)] = trace_file
        self._traced.append(pgconn)
        pgconn.trace(os.dup(trace_file))
        pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)

    def measure(
        self, op: Callable[[], Any], times: int, connections: tuple[Any, ...] = ()
    ) -> float:
        """Round trips per call of ``op`` (over the engines watched and ``connections``)."""
        self._active = True
        try:
            for conn in connections:
                self.trace(conn)
            for _ in range(times):
                op()
        finally:
            self._active = False
            total = self._collect()
        return total / times

    def _collect(self) -> int:
        for pgconn in self._traced:
            pgconn.untrace()
        count = 0
        for trace_file in self._files.values():
            with os.fdopen(trace_file, "rb") as handle:
                handle.seek(0)
                count += sum(1 for line in handle if b"\tReadyForQuery" in line)
        self._files.clear()
        self._traced.clear()
        return count

    def close(self) -> None:
        for engine in self._engines:
            sa.event.remove(engine, "checkout", self._on_checkout)
        self._engines.clear()
