"""The archive race: ``ArchiveStore`` and ``write_through`` beside raw psycopg.

Raw psycopg sends exactly what the store sends: a ``before_cursor_execute``
listener on the store's engine records each statement of one call (the SQL
text as the driver receives it, its parameters after SQLAlchemy's type
processing, and whether the connection was in autocommit), and a direct
``psycopg.connect`` connection replays those statements with those
parameters: in autocommit if the store ran them so, else in one
transaction. A replayed load decodes each payload as the store does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
import sqlalchemy as sa

from benchmarks.peers.calls import cycling
from benchmarks.peers.conversations import conversation
from benchmarks.peers.sizes import APPEND_STREAM
from benchmarks.peers.timing import Contestant
from tieredstore import RedisStore, TieredStore
from tieredstore.codec import decode_message
from tieredstore.tiers.archive import ArchiveStore

ARCHIVE_LOAD = "ArchiveStore.load"
RAW_PG_LOAD = "raw psycopg load"
ARCHIVE_APPEND = "ArchiveStore.append"
RAW_PG_APPEND = "raw psycopg append"
WRITE_THROUGH = "TieredStore write_through append"
REDIS_APPEND = "RedisStore append"
LOAD_SIZES = (50, 500)
WRITE_SIZE = 50


@dataclass(frozen=True)
class Statement:
    sql: str
    params: Any
    autocommit: bool


@contextlib.contextmanager
def captured(engine: sa.Engine) -> Iterator[list[Statement]]:
    """The statements ``engine`` sends while inside."""
    statements: list[Statement] = []

    def record(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        assert not many, "executemany is not replayed"
        statements.append(Statement(statement, parameters, bool(cursor.connection.autocommit)))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def replay(conn: psycopg.Connection[Any], statements: list[Statement]) -> list[Any]:
    """Send ``statements`` as the store did; the rows of the last one."""
    rows: list[Any] = []
    transaction = (
        contextlib.nullcontext()
        if all(s.autocommit for s in statements)
        else conn.transaction()
    )
    with transaction:
        for statement in statements:
            cursor = conn.execute(statement.sql, statement.params)
            rows = cursor.fetchall() if cursor.description is not None else []
    return rows


class ArchiveGroup:
    """The archive's sessions, a ``write_through`` store and their raw twins."""

    def __init__(
        self, engine: sa.Engine, client: redis.Redis, dsn: str, prefix: str
    ) -> None:
        self.engine = engine
        self.archive = ArchiveStore(engine, namespace="archive")
        self.write_through = TieredStore.from_clients(
            redis=client,
            engine=engine,
            prefix=prefix,
            namespace="write-through",
            memory_max_bytes=None,
            durability="write_through",
            max_messages=WRITE_SIZE,
        )
        self.redis_store = RedisStore(
            client, prefix=prefix, namespace="write-redis", max_messages=WRITE_SIZE
        )
        self.raw = psycopg.connect(dsn, autocommit=True)
        for n in LOAD_SIZES:
            self.archive.save(f"load-{n}", conversation(n))
        base = conversation(WRITE_SIZE)
        self.archive.save("append", base)
        self.write_through.save("append", base)
        self.redis_store.save("append", base)
        self.load_sql: dict[int, list[Statement]] = {}
        for n in LOAD_SIZES:
            with captured(engine) as statements:
                assert len(self.archive.load(f"load-{n}")) == n
            self.load_sql[n] = statements
            assert [decode_message(r[0]) for r in replay(self.raw, statements)] == (
                self.archive.load(f"load-{n}")
            )
        before = self.archive.count("append")
        with captured(engine) as statements:
            self.archive.append("append", APPEND_STREAM[0])
        self.append_sql = statements
        replay(self.raw, statements)
        assert self.archive.count("append") == before + 2

    def contestants(self) -> list[Contestant]:
        archive, raw = self.archive, self.raw
        out: list[Contestant] = []
        for n in LOAD_SIZES:
            sid, statements = f"load-{n}", self.load_sql[n]
            out += [
                Contestant(f"{ARCHIVE_LOAD} (N={n})", _bind(archive.load, sid), "tieredstore"),
                Contestant(
                    f"{RAW_PG_LOAD} (N={n})",
                    _bind(_raw_load, raw, statements),
                    "raw",
                ),
            ]
        archive_next, wt_next, redis_next = (_cycle(), _cycle(), _cycle())
        out += [
            Contestant(
                ARCHIVE_APPEND, lambda: archive.append("append", archive_next()), "tieredstore"
            ),
            Contestant(RAW_PG_APPEND, _bind(replay, raw, self.append_sql), "raw"),
            Contestant(
                WRITE_THROUGH,
                lambda: self.write_through.append("append", wt_next()),
                "tieredstore",
            ),
            Contestant(
                REDIS_APPEND, lambda: self.redis_store.append("append", redis_next()), "tieredstore"
            ),
        ]
        return out

    def round_trip_ops(self) -> dict[str, tuple[Callable[[], Any], tuple[Any, ...]]]:
        """Archive operations and the psycopg connections beyond the engine they use."""
        statements = self.load_sql[WRITE_SIZE]
        message = APPEND_STREAM[0]
        return {
            f"{ARCHIVE_LOAD} (N=50)": (_bind(self.archive.load, f"load-{WRITE_SIZE}"), ()),
            f"{RAW_PG_LOAD} (N=50)": (_bind(_raw_load, self.raw, statements), (self.raw,)),
            ARCHIVE_APPEND: (lambda: self.archive.append("append", message), ()),
            RAW_PG_APPEND: (_bind(replay, self.raw, self.append_sql), (self.raw,)),
            WRITE_THROUGH: (lambda: self.write_through.append("append", message), ()),
        }

    def close(self) -> None:
        self.raw.close()
        self.write_through.close()
        self.redis_store.close()
        self.archive.close()


def _raw_load(conn: psycopg.Connection[Any], statements: list[Statement]) -> list[Any]:
    return [decode_message(row[0]) for row in replay(conn, statements)]


def _bind(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: function(*args)


def _cycle() -> Callable[[], Any]:
    return cycling(APPEND_STREAM)
