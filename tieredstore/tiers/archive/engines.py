"""Engines for the archive tier (orjson for JSON, timeouts on PostgreSQL) and the SQLite hook.

The hook configures each SQLite connection once (WAL, ``busy_timeout``,
``synchronous=NORMAL``, foreign keys) and emits our own ``BEGIN``.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from tieredstore.schema import normalize_url
from tieredstore.timeouts import ArchiveTimeouts

_SQLITE_CONFIGURED = "tieredstore_sqlite_configured"
_SQLITE_BEGIN = "tieredstore_sqlite_begin"
_SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout = 30000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_engine(
    url: str | sa.URL, *, timeouts: ArchiveTimeouts | None = None, **engine_options: Any
) -> sa.Engine:
    """An engine for the archive; a plain ``postgresql://`` URL means psycopg 3.

    JSON columns use orjson. On PostgreSQL, ``timeouts`` (default
    :class:`~tieredstore.timeouts.ArchiveTimeouts`) bound connecting and
    statements; settings in the URL win. ``engine_options`` go to
    :func:`sqlalchemy.create_engine`.
    """
    parsed = normalize_url(url)
    return sa.create_engine(parsed, **_engine_options(parsed, timeouts, engine_options))


def create_async_engine(
    url: str | sa.URL, *, timeouts: ArchiveTimeouts | None = None, **engine_options: Any
) -> AsyncEngine:
    """An async engine for :class:`AsyncArchiveStore`: psycopg 3 or aiosqlite.

    ``postgresql://`` and ``postgresql+psycopg://`` use psycopg's async mode;
    ``sqlite:///path`` uses aiosqlite. Options as for :func:`create_engine`.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.get_driver_name() != "aiosqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return sa_create_async_engine(parsed, **_engine_options(parsed, timeouts, engine_options))


def _engine_options(
    parsed: sa.URL, timeouts: ArchiveTimeouts | None, engine_options: dict[str, Any]
) -> dict[str, Any]:
    """JSON columns use orjson; PostgreSQL connects and runs statements with timeouts."""
    engine_options.setdefault("json_serializer", _json_dumps)
    engine_options.setdefault("json_deserializer", orjson.loads)
    if parsed.get_backend_name() == "postgresql":
        (timeouts or ArchiveTimeouts()).engine_options(parsed.query, engine_options)
    return engine_options


def _sqlite_on_begin(conn: sa.Connection) -> None:
    """Configure a SQLite connection once, then emit our own ``BEGIN``.

    ``sqlite3`` would begin lazily (and never for a SELECT); we begin explicitly,
    ``IMMEDIATE`` for writes so the write lock is taken before the session row is
    read, which is what makes read-modify-write transactions safe.
    """
    fairy = conn.connection
    if not fairy.info.get(_SQLITE_CONFIGURED):
        # The DBAPI connection (for aiosqlite, SQLAlchemy's synchronous adapter).
        dbapi: Any = fairy.dbapi_connection
        assert dbapi is not None
        dbapi.isolation_level = None
        cursor = dbapi.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
                cursor.fetchall()
        finally:
            cursor.close()
        fairy.info[_SQLITE_CONFIGURED] = True
    mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _install_sqlite_hooks(engine: sa.Engine) -> None:
    if not event.contains(engine, "begin", _sqlite_on_begin):
        event.listen(engine, "begin", _sqlite_on_begin)
