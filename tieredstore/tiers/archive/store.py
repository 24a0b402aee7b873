"""``ArchiveStore``: the durable tier, on PostgreSQL (psycopg 3) or SQLite via SQLAlchemy 2.

One row per session in ``tieredstore_sessions`` and one row per message in
``tieredstore_messages`` (see :mod:`tieredstore.schema`); a message row holds
the message's exact encoded bytes, so it loads back unchanged. The tables come
only from the Alembic migrations: run :func:`tieredstore.migrate` first.

Every write locks the session row before it touches messages, so concurrent
appends to one session serialise and never lose or reorder messages. On
PostgreSQL an append to a live session is a single statement (``UPDATE ...
RETURNING`` feeding an ``INSERT`` in one CTE, outside any transaction), so the
row lock is held only while the server runs it; everything else is one
transaction starting with ``SELECT ... FOR UPDATE``. Reads of several
statements run in a ``REPEATABLE READ`` snapshot. On SQLite writes run in
``BEGIN IMMEDIATE`` transactions and reads in one deferred transaction (a
snapshot in WAL mode).

On SQLite the store adds a ``begin`` hook to the engine: each connection gets
WAL, ``busy_timeout``, ``synchronous=NORMAL`` and enforced foreign keys, and
SQLAlchemy (not the ``sqlite3`` module) emits ``BEGIN``.

Seqs number a session's messages for life (see :mod:`tieredstore.tiers.transfer`);
besides the store contract, the methods under "the tiered layer" return write
receipts and snapshots, and apply writes made in another tier by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from tieredstore.aio import AsyncBaseStore
from tieredstore.base import BaseStore, StoreCore
from tieredstore.breaker import CircuitBreaker, resolve_breaker
from tieredstore.codec import decode_cursor, decode_message, encode_cursor, encode_json
from tieredstore.core import (
    Batch,
    Order,
    check_before,
    check_limit,
    check_session_id,
    from_ms,
    merge_metadata,
    to_ms,
)
from tieredstore.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidInput,
    SchemaNotReady,
    SessionExists,
    SessionNotFound,
    VersionConflict,
)
from tieredstore.model import EMPTY_METADATA, FrozenDict, Message, Page, Session, freeze_json
from tieredstore.plans import Op, Plan, arun, run
from tieredstore.policy import (
    KIND_SYSTEM,
    leading_system,
    message_kind,
    plan_trim,
    plan_trim_bytes,
)
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import normalize_url
from tieredstore.schema import sessions as SESSIONS
from tieredstore.tiers.sql_errors import misconfigured, schema_missing
from tieredstore.tiers.transfer import (
    DEFAULT_TOMBSTONE_TTL,
    HistoryPart,
    SessionFenced,
    tombstone_ms,
)
from tieredstore.timeouts import IO_OPTION, WATCHDOG, ArchiveTimeouts, db_failure

if TYPE_CHECKING:
    from tieredstore.tiers.redis import Fenced, OutboxRecord
    from tieredstore.tiers.transfer import Snapshot, WriteReceipt

__all__ = [
    "ArchiveCopy",
    "ArchiveShared",
    "ArchiveStore",
    "AsyncArchiveStore",
    "PreparedCopies",
    "Reconciled",
    "create_async_engine",
    "create_engine",
]

T = TypeVar("T")

_S = SESSIONS.c
_M = MESSAGES.c
_SESSION_COLUMNS = (
    _S.user_id,
    _S["metadata"],
    _S.created_ms,
    _S.updated_ms,
    _S.expires_ms,
    _S.ttl_ms,
    _S.version,
    _S.message_count,
    _S.next_seq,
    _S.base_seq,
    _S.lead,
    _S.deleted_ms,
    _S.detached,
    _S.meta_version,
)
_RECEIPT_COLUMNS = (
    _S.version,
    _S.next_seq,
    _S.message_count,
    _S.created_ms,
    _S.updated_ms,
    _S.expires_ms,
    _S.ttl_ms,
)

# Statements are built once with named parameters (ns, sid, now, ...): building
# SQLAlchemy expressions per call costs more than the round trip it makes.
_NS: sa.BindParameter[str] = sa.bindparam("ns")
_SID: sa.BindParameter[str] = sa.bindparam("sid")
_NOW: sa.BindParameter[int] = sa.bindparam("now")
_KEY = sa.and_(_S.namespace == _NS, _S.session_id == _SID)
_MKEY = sa.and_(_M.namespace == _NS, _M.session_id == _SID)
_LIVE = sa.or_(_S.expires_ms.is_(None), _S.expires_ms > _NOW)
_LAST = sa.bindparam("last", type_=sa.Integer())

_SELECT_LIVE = sa.select(*_SESSION_COLUMNS).where(_KEY, _LIVE)
_LOCK_ROW = sa.select(*_SESSION_COLUMNS).where(_KEY).with_for_update()
_SHARE_LIVE = _SELECT_LIVE.with_for_update(read=True)
_EXISTS = sa.select(sa.literal(1)).where(_KEY, _LIVE)
_COUNT = sa.select(_S.message_count).where(_KEY, _LIVE)
_UPDATE_ROW = sa.update(SESSIONS).where(_KEY)  # SET columns come from the parameters
_SLIDE = (
    sa.update(SESSIONS)
    .where(_KEY, _LIVE)
    .values(expires_ms=sa.case((_S.ttl_ms.is_(None), _S.expires_ms), else_=_S.ttl_ms + _NOW))
    .returning(*_SESSION_COLUMNS)
)

_PAYLOADS = sa.select(_M.payload).where(_MKEY)
_PAYLOADS_ALL = _PAYLOADS.order_by(_M.seq)
_PAYLOADS_LAST = _PAYLOADS.order_by(_M.seq.desc()).limit(_LAST)
# load(): one statement, one snapshot: the messages, if the session is live.
_LIVE_PAYLOADS = _PAYLOADS.where(sa.exists().where(_KEY, _LIVE))
_LIVE_PAYLOADS_ALL = _LIVE_PAYLOADS.order_by(_M.seq)
_LIVE_PAYLOADS_LAST = _LIVE_PAYLOADS.order_by(_M.seq.desc()).limit(_LAST)
_SEQ_KINDS = sa.select(_M.seq, _M.kind).where(_MKEY).order_by(_M.seq)
_SNAPSHOT_ALL = sa.select(_M.seq, _M.kind, _M.payload).where(_MKEY).order_by(_M.seq)
_SNAPSHOT_LAST = (
    sa.select(_M.seq, _M.kind, _M.payload).where(_MKEY).order_by(_M.seq.desc()).limit(_LAST)
)
_HISTORY = (
    sa.select(_M.seq, _M.payload)
    .where(_MKEY, _M.seq >= sa.bindparam("base"))
    .order_by(_M.seq.desc())
    .limit(_LAST)
)
_HISTORY_BEFORE = _HISTORY.where(_M.seq < sa.bindparam("before"))
# How many messages open the history with system messages (see policy.leading_system).
_FIRST_OTHER = sa.select(sa.func.min(_M.seq)).where(_MKEY, _M.kind != KIND_SYSTEM).scalar_subquery()
_LEAD = sa.select(sa.func.count()).where(
    _MKEY, sa.or_(_FIRST_OTHER.is_(None), _M.seq < _FIRST_OTHER)
)
_DELETE_MESSAGES = sa.delete(MESSAGES).where(_MKEY)
_DELETE_MESSAGE_RANGE = sa.delete(MESSAGES).where(
    _MKEY, _M.seq.between(sa.bindparam("low"), sa.bindparam("high"))
)
_DELETE_MESSAGES_BEFORE = sa.delete(MESSAGES).where(_MKEY, _M.seq < sa.bindparam("base"))
_COPY_MESSAGES = MESSAGES.insert().from_select(
    [c.name for c in MESSAGES.columns],
    sa.select(
        _M.namespace,
        sa.bindparam("dst", type_=_M.session_id.type),
        _M.seq,
        _M.created_ms,
        _M.role,
        _M.kind,
        _M.payload,
        _M.content_text,
    ).where(_MKEY),
)
_INSERT_MESSAGES = MESSAGES.insert()
_INSERT_NEW_MESSAGES_SQLITE = sqlite.insert(MESSAGES).on_conflict_do_nothing()

# PostgreSQL: a whole batch as one statement over arrays (far faster than executemany).
_PG_UNNEST = (
    "unnest(CAST(:idx AS bigint[]), CAST(:roles AS varchar[]), CAST(:kinds AS varchar[]), "
    "CAST(:payloads AS bytea[]), CAST(:texts AS text[])) AS u(i, role, kind, payload, text)"
)
_PG_COLUMNS = "(namespace, session_id, seq, created_ms, role, kind, payload, content_text)"
_PG_INSERT = (
    f"INSERT INTO {MESSAGES.name} {_PG_COLUMNS} "
    f"SELECT :ns, :sid, u.i, :now, u.role, u.kind, u.payload, u.text FROM {_PG_UNNEST}"
)
_INSERT_MESSAGES_PG = sa.text(_PG_INSERT)
_INSERT_NEW_MESSAGES_PG = sa.text(_PG_INSERT + " ON CONFLICT DO NOTHING")


# Maintenance: expired rows (skipping rows a writer holds), sessions by id, sizes.
_SELECT_EXPIRED = (
    sa.select(_S.session_id)
    .where(
        _S.namespace == _NS,
        _S.expires_ms <= _NOW,
        sa.or_(_S.deleted_ms.is_(None), _S.deleted_ms <= sa.bindparam("tomb_before")),
    )
    .order_by(_S.expires_ms)
    .limit(_LAST)
    .with_for_update(skip_locked=True)
)
_DETACHED = (
    sa.select(_S.session_id)
    .where(_S.namespace == _NS, _S.detached)
    .order_by(_S.session_id)
    .limit(_LAST)
)
_MESSAGES_AT = sa.select(_M.seq, _M.payload, _M.created_ms).where(
    _MKEY, _M.seq.in_(sa.bindparam("seqs", expanding=True))
)
_SESSION_IDS_AFTER = (
    sa.select(_S.session_id)
    .where(_S.namespace == _NS, _S.session_id > sa.bindparam("after"))
    .order_by(_S.session_id)
    .limit(_LAST)
)
_SIZES = (
    sa.select(_M.session_id, sa.func.count(), sa.func.sum(sa.func.length(_M.payload)))
    .where(_M.namespace == _NS, _M.session_id.in_(sa.bindparam("ids", expanding=True)))
    .group_by(_M.session_id)
)
_SEQ_KIND_SIZES = (
    sa.select(_M.seq, _M.kind, sa.func.length(_M.payload).label("size"))
    .where(_MKEY)
    .order_by(_M.seq)
)
# absorb_many(): lock a batch's existing rows (in id order: no deadlocks between batches).
_LOCK_ROWS = (
    sa.select(_S.session_id, *_SESSION_COLUMNS)
    .where(_S.namespace == _NS, _S.session_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_S.session_id)
    .with_for_update()
)
_ABSORB_COLUMNS = (
    "session_id",
    "user_id",
    "metadata",
    "created_ms",
    "updated_ms",
    "expires_ms",
    "ttl_ms",
    "version",
    "message_count",
    "next_seq",
    "base_seq",
    "lead",
    "meta_version",
)
_ABSORB_TYPES = (
    "varchar",
    "varchar",
    "jsonb",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "integer",
    "bigint",
    "bigint",
    "integer",
    "bigint",
)
# PostgreSQL: create a batch of sessions in one statement; RETURNING says which were new.
_PG_CREATE_SESSIONS = sa.text(
    f"INSERT INTO {SESSIONS.name} (namespace, {', '.join(_ABSORB_COLUMNS)}) "
    f"SELECT :ns, u.* FROM unnest("
    + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in zip(_ABSORB_COLUMNS, _ABSORB_TYPES, strict=True))
    + ") AS u ON CONFLICT DO NOTHING RETURNING session_id"
)
_PG_COPY_MESSAGES = (
    f"COPY {MESSAGES.name} (namespace, session_id, seq, created_ms, role, kind, payload, "
    "content_text) FROM STDIN (FORMAT BINARY)"
)
_PG_COPY_TYPES = ("text", "text", "int8", "int8", "text", "text", "bytea", "text")


def _pg_append_statement(with_ttl: bool, with_version: bool) -> sa.TextClause:
    """PostgreSQL append as one statement: bump a live session and insert its messages.

    Run outside a transaction, the row lock is held only while the server runs
    it, so concurrent appends to one session queue on the server, not on
    client round trips. No row back means missing, expired or a version
    mismatch: the caller then takes the transactional path.
    """
    ttl = ", ttl_ms = :ttl, expires_ms = :expires" if with_ttl else ""
    version = " AND version = :expected" if with_version else ""
    return sa.text(
        f"WITH s AS (UPDATE {SESSIONS.name} SET version = version + 1, "
        "message_count = message_count + :n, next_seq = next_seq + :n, "
        "updated_ms = GREATEST(updated_ms, :now), "
        f"lead = CASE WHEN lead = message_count THEN lead + :batch_lead ELSE lead END{ttl} "
        "WHERE namespace = :ns AND session_id = :sid "
        f"AND (expires_ms IS NULL OR expires_ms > :now){version} "
        "RETURNING version, next_seq, message_count, created_ms, updated_ms, expires_ms, ttl_ms), "
        f"m AS (INSERT INTO {MESSAGES.name} {_PG_COLUMNS} "
        "SELECT :ns, :sid, s.next_seq - :n + u.i, :now, u.role, u.kind, u.payload, u.text "
        f"FROM s, {_PG_UNNEST}) "
        "SELECT * FROM s"
    )


_PG_APPEND = {
    (ttl, version): _pg_append_statement(ttl, version)
    for ttl in (False, True)
    for version in (False, True)
}


def _append_statement(with_ttl: bool, with_version: bool) -> Any:
    """``UPDATE ... RETURNING`` that locks, checks and bumps a live session."""
    values: dict[str, Any] = {
        "version": _S.version + 1,
        "message_count": _S.message_count + sa.bindparam("n"),
        "next_seq": _S.next_seq + sa.bindparam("n"),
        "updated_ms": sa.case((_S.updated_ms > _NOW, _S.updated_ms), else_=_NOW),
        "lead": sa.case(
            (_S.lead == _S.message_count, _S.lead + sa.bindparam("batch_lead")),
            else_=_S.lead,
        ),
    }
    if with_ttl:
        values["ttl_ms"] = sa.bindparam("ttl")
        values["expires_ms"] = sa.bindparam("expires")
    stmt = sa.update(SESSIONS).where(_KEY, _LIVE)
    if with_version:
        stmt = stmt.where(_S.version == sa.bindparam("expected"))
    return stmt.values(**values).returning(*_RECEIPT_COLUMNS)


_APPEND = {
    (ttl, version): _append_statement(ttl, version)
    for ttl in (False, True)
    for version in (False, True)
}


def _list_statement(order: Order, with_cursor: bool, with_user: bool) -> Any:
    stmt = sa.select(_S.updated_ms, _S.session_id).where(_S.namespace == _NS, _LIVE)
    if with_user:
        stmt = stmt.where(_S.user_id == sa.bindparam("user"))
    key = sa.tuple_(_S.updated_ms, _S.session_id)
    after = sa.tuple_(sa.bindparam("after_ms"), sa.bindparam("after_sid"))
    if order == "desc":
        if with_cursor:
            stmt = stmt.where(key < after)
        stmt = stmt.order_by(_S.updated_ms.desc(), _S.session_id.desc())
    else:
        if with_cursor:
            stmt = stmt.where(key > after)
        stmt = stmt.order_by(_S.updated_ms, _S.session_id)
    return stmt.limit(_LAST)


_LIST = {
    (order, cursor, user): _list_statement(order, cursor, user)
    for order in ("desc", "asc")
    for cursor in (False, True)
    for user in (False, True)
}

_MAX_ATTEMPTS = 8
# SQLSTATEs worth retrying the whole transaction for: serialization failure, deadlock.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})

_SQLITE_CONFIGURED = "tieredstore_sqlite_configured"
_SQLITE_BEGIN = "tieredstore_sqlite_begin"
_SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout = 30000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)


class _Retry(Exception):
    """Raised inside a transaction to run it again (a concurrent create won a race)."""


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


def _content_text(message: Mapping[str, Any]) -> str | None:
    """The plain text of a message's content (for search), NULs removed."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        if not parts:
            return None
        text = "\n".join(parts)
    else:
        return None
    return _no_nul(text)


def _no_nul(text: str) -> str:
    return text.replace("\x00", "") if "\x00" in text else text


def _arrays(batch: Batch, keep: Sequence[int], idx: Sequence[int]) -> dict[str, list[Any]]:
    """Column arrays of ``batch.messages[i] for i in keep`` (for PostgreSQL ``unnest``)."""
    messages = batch.messages
    return {
        "idx": list(idx),
        "roles": [_no_nul(messages[i]["role"]) for i in keep],
        "kinds": [batch.kinds[i] for i in keep],
        "payloads": [batch.payloads[i] for i in keep],
        "texts": [_content_text(messages[i]) for i in keep],
    }


def _trim(kinds: str, max_messages: int | None) -> tuple[int, int, str]:
    """``plan_trim`` plus the kinds that survive: ``(lead, drop, kept_kinds)``."""
    lead, drop = plan_trim(kinds, max_messages)
    if not drop:
        return lead, 0, kinds
    return lead, drop, kinds[:lead] + kinds[lead + drop :]


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _kept(n: int, lead: int, drop: int) -> list[int]:
    """Indices ``0..n-1`` without the dropped run ``lead .. lead + drop - 1``."""
    return [*range(min(lead, n)), *range(lead + drop, n)] if drop else list(range(n))


def _frozen(metadata: Any) -> FrozenDict:
    if isinstance(metadata, FrozenDict):
        return metadata
    if isinstance(metadata, str | bytes):  # a driver that hands JSON back as text
        metadata = orjson.loads(metadata)
    if not metadata:
        return EMPTY_METADATA
    frozen = freeze_json(metadata)
    assert isinstance(frozen, FrozenDict)
    return frozen


def _snapshot_batch(snapshot: Snapshot) -> Batch:
    """A snapshot's messages re-encoded as a :class:`Batch` (they were valid when written)."""
    payloads = tuple(encode_json(message) for message in snapshot.messages)
    return Batch(snapshot.messages, payloads, snapshot.kinds, sum(map(len, payloads)))


def _subset(batch: Batch, keep: Sequence[int]) -> Batch:
    payloads = tuple(batch.payloads[i] for i in keep)
    return Batch(
        tuple(batch.messages[i] for i in keep),
        payloads,
        "".join(batch.kinds[i] for i in keep),
        sum(map(len, payloads)),
    )


@dataclass(frozen=True, slots=True)
class ArchiveCopy:
    """One session as another tier hands it to :meth:`ArchiveStore.absorb_many`.

    The bookkeeping of that tier's copy plus messages by seq, oldest first:
    ``payloads`` are the encoded messages (stored byte for byte), ``messages``
    the same decoded (any mapping; for role and search text; ``None``: decoded
    from ``payloads`` when needed), ``stamps`` their write times in ms
    (``None``: ``updated_ms``). Messages below ``base_seq`` are ignored (a
    save replaced them).
    """

    sid: str
    created_ms: int
    updated_ms: int
    version: int
    expires_ms: int | None
    ttl_ms: int | None
    next_seq: int
    base_seq: int
    metadata: FrozenDict
    user_id: str | None
    seqs: Sequence[int]
    kinds: str
    payloads: Sequence[bytes]
    messages: Sequence[Mapping[str, Any]] | None = None
    stamps: Sequence[int] | None = None

    @classmethod
    def of(cls, snapshot: Snapshot, spilled: Iterable[tuple[int, Message]] = ()) -> ArchiveCopy:
        """A snapshot plus the older messages its tier spilled (``(seq, message)``)."""
        pairs = {seq: message for seq, message in spilled}
        pairs.update(zip(snapshot.seqs, snapshot.messages, strict=True))
        seqs = sorted(seq for seq in pairs if seq >= snapshot.base_seq)
        messages = [pairs[seq] for seq in seqs]
        return cls(
            sid=snapshot.sid,
            created_ms=snapshot.created_ms,
            updated_ms=snapshot.updated_ms,
            version=snapshot.version,
            expires_ms=snapshot.expires_ms,
            ttl_ms=snapshot.ttl_ms,
            next_seq=snapshot.next_seq,
            base_seq=snapshot.base_seq,
            metadata=snapshot.metadata,
            user_id=snapshot.user_id,
            seqs=seqs,
            kinds="".join(message_kind(m) for m in messages),
            payloads=[encode_json(m) for m in messages],
            messages=messages,
        )

    def decoded(self) -> Sequence[Mapping[str, Any]]:
        if self.messages is not None:
            return self.messages
        return [orjson.loads(payload) for payload in self.payloads]

    def batch(self) -> Batch:
        """The messages as a :class:`Batch` (they were validated when first written)."""
        messages: Any = tuple(self.decoded())
        return Batch(messages, tuple(self.payloads), self.kinds, sum(map(len, self.payloads)))


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What :meth:`ArchiveStore.reconcile` decided for the Redis copy.

    ``action``: ``none`` (nothing to do), ``unfence`` (the Redis copy is
    current: lift its fence), ``drop`` (it is a deleted generation: delete it
    with ``tombstone_ms``), ``promote`` (the archive holds the session's one
    history, at ``version``: copy it over the fenced Redis copy).
    """

    action: str
    tombstone_ms: int = 0
    version: int = 0


@dataclass(frozen=True, slots=True)
class PreparedCopies:
    """Copies for :meth:`ArchiveStore.absorb_many` with their rows already built.

    Building rows (decoding each message for its role and search text) is CPU
    work without I/O, so :meth:`ArchiveStore.prepare` can run in another
    thread while an earlier batch is being written.
    """

    namespace: str
    copies: Sequence[ArchiveCopy]
    sessions: Sequence[tuple[Any, ...]]
    """Per copy: the new session row's values, in ``_ABSORB_COLUMNS`` order."""
    messages: Sequence[Sequence[tuple[Any, ...]]]
    """Per copy: its message rows for ``COPY`` (PostgreSQL only; else empty)."""


class ArchiveShared(StoreCore):
    """Everything of the archive tier but its I/O, shared by the sync and async stores.

    Statements, the per-operation database work (``work(conn)`` functions on
    a synchronous :class:`sqlalchemy.Connection`) and the retry policy live
    here once, as plans (see :mod:`tieredstore.plans`) that yield
    ``Op("db", "_in_transaction", (work, role))``. :class:`ArchiveStore` runs
    each ``work`` in ``engine.begin()``; :class:`AsyncArchiveStore` runs the
    very same function through ``AsyncConnection.run_sync``. ``role`` picks
    the engine variant: ``single`` (one statement), ``reader`` (one snapshot),
    ``writer`` (a locking transaction).
    """

    tier = "archive"
    namespace: str
    tombstone_ms: int
    _pg: bool
    _bulk_copy: bool
    _url: sa.URL
    _create_row: Any

    def _setup(
        self, engine: sa.Engine, namespace: str, tombstone_ttl: float
    ) -> dict[str, dict[str, Any]]:
        """Check the dialect and prepare ``engine``; the execution options of each role."""
        self.namespace = check_session_id(namespace, self.limits, what="namespace")
        self.tombstone_ms = tombstone_ms(tombstone_ttl)
        self._url = engine.url
        dialect = engine.dialect.name
        self._pg = dialect == "postgresql"
        roles: dict[str, dict[str, Any]]
        if self._pg:
            insert: Any = postgresql.insert
            # One statement needs no BEGIN/COMMIT round trips; several
            # statements that must agree read one snapshot.
            roles = {
                "single": {"isolation_level": "AUTOCOMMIT"},
                "reader": {"isolation_level": "REPEATABLE READ"},
                "writer": {},
            }
        elif dialect == "sqlite":
            _install_sqlite_hooks(engine)
            insert = sqlite.insert
            roles = {"single": {}, "reader": {}, "writer": {_SQLITE_BEGIN: "IMMEDIATE"}}
        else:
            raise InvalidInput(f"ArchiveStore supports PostgreSQL and SQLite, not {dialect!r}")
        self._create_row = insert(SESSIONS).on_conflict_do_nothing().returning(_S.version)
        return roles

    def _setup_bounds(
        self, engine: sa.Engine, breaker: CircuitBreaker | bool, timeouts: ArchiveTimeouts | None
    ) -> None:
        """The circuit breaker, and the client-side bound of one transaction (PostgreSQL)."""
        self.breaker = resolve_breaker(breaker, "database")
        io = engine.get_execution_options().get(IO_OPTION, ...)
        if io is ...:  # a caller's own engine: these (or the default) timeouts' bound
            io = (timeouts or ArchiveTimeouts()).io_bound()
        self._io_timeout: float | None = io if self._pg else None

    def _bounded(self, conn: sa.Connection | None) -> contextlib.AbstractContextManager[Any]:
        """While inside, a server that stops answering gets its socket shut down."""
        io = self._io_timeout
        if io is None or conn is None:
            return contextlib.nullcontext()
        return WATCHDOG.watch(
            conn.connection.driver_connection.fileno(),  # type: ignore[union-attr]
            io,
            lambda: BackendUnavailable(
                "database",
                f"{self._url.render_as_string(hide_password=True)}: no reply within {io:g} s "
                "(io timeout); connection closed",
            ),
        )

    def _lock_scope(self) -> str:
        # Sync and async stores on one database share their process-local locks.
        url = self._url.set(drivername=self._url.get_backend_name())
        return repr(("archive", url.render_as_string(hide_password=True), self.namespace))

    # -- plumbing -------------------------------------------------------------

    def _now_ms(self) -> int:
        return to_ms(self.clock())

    def _params(self, sid: str, now: int | None = None, **more: Any) -> dict[str, Any]:
        params = {"ns": self.namespace, "sid": sid, **more}
        if now is not None:
            params["now"] = now
        return params

    def _transaction(
        self, work: Callable[[sa.Connection], T], role: str, *, read: bool = False
    ) -> Plan[T]:
        """Run ``work`` in one transaction of ``role``, retrying lost races and deadlocks.

        A ``read`` is also retried once on a fresh
        connection when its pooled one turns out dead (a database restart).
        Database errors leave as :class:`BackendUnavailable` (``from`` the
        driver's error); our own errors (``VersionConflict``...) pass through.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                result: T = yield Op("db", "_in_transaction", (work, role))
                return result
            except _Retry:
                if attempt >= _MAX_ATTEMPTS:
                    raise BackendUnavailable(
                        "database", "gave up after repeated concurrent-write conflicts"
                    ) from None
            except sa.exc.DBAPIError as exc:
                if read and exc.connection_invalidated and attempt == 1:
                    continue
                if attempt < _MAX_ATTEMPTS and self._retryable(exc):
                    yield Op("clock", "sleep", (0.001 * attempt,))
                    continue
                raise self._translate(exc) from exc
            except sa.exc.SQLAlchemyError as exc:
                raise self._translate(exc) from exc

    def _retryable(self, exc: sa.exc.DBAPIError) -> bool:
        if exc.connection_invalidated:
            return False
        if _sqlstate(exc) in _RETRY_SQLSTATES:
            return True
        return not self._pg and "database is locked" in str(exc.orig)

    def _translate(self, exc: sa.exc.SQLAlchemyError) -> BackendUnavailable | ConfigurationError:
        where = self._url.render_as_string(hide_password=True)
        orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        text = str(orig).strip()
        detail = text.splitlines()[0] if text else type(orig).__name__
        if schema_missing(exc, detail):
            return SchemaNotReady(
                "database",
                f"the tieredstore tables in {where} are missing or out of date; "
                f"run tieredstore.migrate(url) first ({detail})",
            )
        if misconfigured(exc):
            return ConfigurationError("database", f"{where}: {detail}")
        return BackendUnavailable("database", f"{where}: {detail}")

    @staticmethod
    def _is_live(row: Any, now_ms: int) -> bool:
        return row is not None and (row.expires_ms is None or row.expires_ms > now_ms)

    @staticmethod
    def _born(row: Any, now_ms: int) -> int:
        """The created time of a new generation: never before the id's tombstone."""
        if row is not None and row.deleted_ms is not None and row.deleted_ms > now_ms:
            return int(row.deleted_ms)
        return now_ms

    def _lock_row(self, conn: sa.Connection, sid: str) -> Any:
        return conn.execute(_LOCK_ROW, self._params(sid)).first()

    def _insert_messages(
        self,
        conn: sa.Connection,
        sid: str,
        batch: Batch,
        keep: Sequence[int],
        seqs: Sequence[int],
        created_ms: int,
        *,
        skip_existing: bool = False,
    ) -> int:
        """Insert ``batch.messages[keep[j]]`` as seq ``seqs[j]``; return how many were new.

        ``skip_existing`` leaves rows whose seq is already stored alone (a seq
        names one message for life, so they hold the same message).
        """
        if not keep:
            return 0
        if self._pg:
            stmt = _INSERT_NEW_MESSAGES_PG if skip_existing else _INSERT_MESSAGES_PG
            params = self._params(sid, created_ms, **_arrays(batch, keep, seqs))
            return int(conn.execute(stmt, params).rowcount)
        ns, messages, payloads, kinds = self.namespace, batch.messages, batch.payloads, batch.kinds
        rows = []
        for i, seq in zip(keep, seqs, strict=True):
            message = messages[i]
            rows.append(
                {
                    "namespace": ns,
                    "session_id": sid,
                    "seq": seq,
                    "created_ms": created_ms,
                    "role": _no_nul(message["role"]),
                    "kind": kinds[i],
                    "payload": payloads[i],
                    "content_text": _content_text(message),
                }
            )
        insert = _INSERT_NEW_MESSAGES_SQLITE if skip_existing else _INSERT_MESSAGES
        return int(conn.execute(insert, rows).rowcount)

    def _renew(self, conn: sa.Connection, sid: str, row: Any, values: dict[str, Any]) -> None:
        """Make ``sid`` a brand-new session: replace its stale row, or insert one.

        An insert that loses a race with a concurrent creator retries the
        transaction, which then finds the row.
        """
        if row is None:
            created = conn.execute(
                self._create_row, {"namespace": self.namespace, "session_id": sid, **values}
            ).first()
            if created is None:
                raise _Retry
            return
        conn.execute(_DELETE_MESSAGES, self._params(sid))
        conn.execute(_UPDATE_ROW, self._params(sid, **values))

    @staticmethod
    def _new_values(
        *,
        created_ms: int,
        updated_ms: int,
        ttl_ms: int | None,
        expires_ms: int | None,
        version: int = 1,
        count: int,
        next_seq: int,
        base_seq: int = 0,
        lead: int,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        detached: bool = False,
    ) -> dict[str, Any]:
        return {
            "detached": detached,
            "meta_version": version,
            "user_id": user_id,
            "metadata": metadata if metadata is not None else EMPTY_METADATA,
            "created_ms": created_ms,
            "updated_ms": updated_ms,
            "expires_ms": expires_ms,
            "ttl_ms": ttl_ms,
            "version": version,
            "message_count": count,
            "next_seq": next_seq,
            "base_seq": base_seq,
            "lead": lead,
        }

    # -- writes ---------------------------------------------------------------

    def _plan_save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> Plan[int]:
        receipt = yield from self._plan_write_save(
            sid,
            batch,
            ttl_ms=ttl_ms,
            metadata=metadata,
            user_id=user_id,
            expected_version=expected_version,
        )
        return receipt.version

    def _plan_append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> Plan[int]:
        receipt = yield from self._plan_write_append(
            sid, batch, ttl_ms=ttl_ms, expected_version=expected_version
        )
        return receipt.version

    def _plan_write_save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> Plan[WriteReceipt]:
        """The plan of :meth:`ArchiveStore.write_save`."""
        from tieredstore.tiers.transfer import WriteReceipt

        n = len(batch)
        lead, drop, kept = _trim(batch.kinds, self.max_messages)
        keep = _kept(n, lead, drop)
        new_lead = leading_system(kept)

        def work(conn: sa.Connection) -> WriteReceipt:
            now = self._now_ms()
            row = self._lock_row(conn, sid)
            live = self._is_live(row, now)
            if expected_version is not None:
                actual = row.version if live else 0
                if actual != expected_version:
                    raise VersionConflict(sid, expected_version, actual)
            if not live:
                born = self._born(row, now)
                values = self._new_values(
                    created_ms=born,
                    updated_ms=now,
                    ttl_ms=ttl_ms,
                    expires_ms=now + ttl_ms if ttl_ms is not None else None,
                    count=len(keep),
                    next_seq=n,
                    lead=new_lead,
                    metadata=metadata,
                    user_id=user_id,
                    detached=detached,
                )
                self._renew(conn, sid, row, values)
                self._insert_messages(conn, sid, batch, keep, keep, now)
                return WriteReceipt(1, 0, n, born, now, values["expires_ms"], ttl_ms)
            # Seqs only grow: the new history starts after the last seq used.
            first = row.next_seq
            values = {
                "version": row.version + 1,
                "updated_ms": max(now, row.updated_ms),
                "message_count": len(keep),
                "next_seq": first + n,
                "base_seq": first,
                "lead": new_lead,
                "ttl_ms": row.ttl_ms if ttl_ms is None else ttl_ms,
                "expires_ms": row.expires_ms if ttl_ms is None else now + ttl_ms,
            }
            if detached:
                values["detached"] = True
            if metadata is not None:
                values["metadata"] = metadata
                values["meta_version"] = values["version"]
            if user_id is not None:
                values["user_id"] = user_id
            conn.execute(_DELETE_MESSAGES, self._params(sid))
            conn.execute(_UPDATE_ROW, self._params(sid, **values))
            self._insert_messages(conn, sid, batch, keep, [first + i for i in keep], now)
            return WriteReceipt(
                values["version"],
                first,
                first + n,
                row.created_ms,
                values["updated_ms"],
                values["expires_ms"],
                values["ttl_ms"],
            )

        return (yield from self._transaction(work, "writer"))

    def _plan_write_append(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> Plan[WriteReceipt]:
        """The plan of :meth:`ArchiveStore.write_append`."""
        from tieredstore.tiers.transfer import WriteReceipt

        n = len(batch)
        batch_lead = leading_system(batch.kinds)

        def receipt(row: Any) -> WriteReceipt:
            return WriteReceipt(
                int(row.version),
                row.next_seq - n,
                row.next_seq,
                row.created_ms,
                row.updated_ms,
                row.expires_ms,
                row.ttl_ms,
            )

        def bump_params(now: int) -> dict[str, Any]:
            params = self._params(sid, now, n=n, batch_lead=batch_lead)
            if ttl_ms is not None:
                params["ttl"], params["expires"] = ttl_ms, now + ttl_ms
            if expected_version is not None:
                params["expected"] = expected_version
            return params

        if self._pg and self.max_messages is None and not detached:
            stmt = _PG_APPEND[ttl_ms is not None, expected_version is not None]
            offsets = range(n)

            def one_statement(conn: sa.Connection) -> Any:
                params = bump_params(self._now_ms())
                params.update(_arrays(batch, offsets, offsets))
                return conn.execute(stmt, params).first()

            bumped = yield from self._transaction(one_statement, "single")
            if bumped is not None:
                return receipt(bumped)

        bump = _APPEND[ttl_ms is not None, expected_version is not None]

        def work(conn: sa.Connection) -> WriteReceipt:
            now = self._now_ms()
            # Fast path: one statement locks, checks and bumps a live session.
            bumped = conn.execute(bump, bump_params(now)).first()
            if bumped is not None:
                first = bumped.next_seq - n
                keep: Sequence[int] = range(n)
                if self.max_messages is not None and bumped.message_count > self.max_messages:
                    keep = self._trim_stored(conn, sid, batch)
                self._insert_messages(conn, sid, batch, keep, [first + i for i in keep], now)
                if detached:
                    conn.execute(_UPDATE_ROW, self._params(sid, detached=True))
                return receipt(bumped)
            # Slow path: the session is missing or expired, or the version differs.
            row = self._lock_row(conn, sid)
            if self._is_live(row, now):
                if expected_version is not None and row.version != expected_version:
                    raise VersionConflict(sid, expected_version, row.version)
                raise _Retry  # created concurrently since the UPDATE: start over
            if expected_version not in (None, 0):
                raise VersionConflict(sid, expected_version, 0)
            lead, drop, kept = _trim(batch.kinds, self.max_messages)
            keep = _kept(n, lead, drop)
            expires = now + ttl_ms if ttl_ms is not None else None
            born = self._born(row, now)
            values = self._new_values(
                created_ms=born,
                updated_ms=now,
                ttl_ms=ttl_ms,
                expires_ms=expires,
                count=len(keep),
                next_seq=n,
                lead=leading_system(kept),
                detached=detached,
            )
            self._renew(conn, sid, row, values)
            self._insert_messages(conn, sid, batch, keep, keep, now)
            return WriteReceipt(1, 0, n, born, now, expires, ttl_ms)

        return (yield from self._transaction(work, "writer"))

    def _trim_stored(self, conn: sa.Connection, sid: str, batch: Batch) -> list[int]:
        """Apply ``max_messages`` to the stored history plus ``batch`` (row locked).

        Deletes the dropped stored rows, fixes the count and lead, and returns
        the indices of the batch messages that survive.
        """
        existing = conn.execute(_SEQ_KINDS, self._params(sid)).all()
        stored = len(existing)
        kinds = "".join(row.kind for row in existing) + batch.kinds
        lead, drop, kept = _trim(kinds, self.max_messages)
        end = lead + drop
        if drop and lead < stored:
            low, high = existing[lead].seq, existing[min(end, stored) - 1].seq
            conn.execute(_DELETE_MESSAGE_RANGE, self._params(sid, low=low, high=high))
        conn.execute(
            _UPDATE_ROW,
            self._params(sid, message_count=len(kept), lead=leading_system(kept)),
        )
        return [i for i in range(len(batch)) if not lead <= stored + i < end]

    def _plan_merge_metadata(
        self, sid: str, updates: FrozenDict, detached: bool = False
    ) -> Plan[FrozenDict]:
        def work(conn: sa.Connection) -> FrozenDict:
            now = self._now_ms()
            row = self._lock_row(conn, sid)
            if not self._is_live(row, now):
                raise SessionNotFound(sid)
            merged = merge_metadata(_frozen(row.metadata), updates)
            values = {
                "metadata": merged,
                "version": row.version + 1,
                "meta_version": row.version + 1,
                "updated_ms": max(now, row.updated_ms),
            }
            if detached:
                values["detached"] = True
            conn.execute(_UPDATE_ROW, self._params(sid, **values))
            return merged

        return (yield from self._transaction(work, "writer"))

    def _plan_delete(self, sid: str, floor_ms: int = 0, detached: bool = False) -> Plan[bool]:
        """Delete, leaving the row as a tombstone (see :meth:`ArchiveStore.delete_at`)."""

        def work(conn: sa.Connection) -> bool:
            now = self._now_ms()
            row = self._lock_row(conn, sid)
            tombstone = max(now, floor_ms)
            if row is not None:
                # later than every generation this id had, and than earlier tombstones
                last_born = row.created_ms + 1 if row.version > 0 else 0
                tombstone = max(tombstone, row.deleted_ms or 0, last_born)
            values: dict[str, Any] = {
                "user_id": None,
                "metadata": EMPTY_METADATA,
                "updated_ms": tombstone,
                "expires_ms": 0,
                "ttl_ms": None,
                "version": 0,
                "message_count": 0,
                "lead": 0,
                "deleted_ms": tombstone,
                "detached": detached or (row is not None and bool(row.detached)),
            }
            if row is None:
                created = conn.execute(
                    self._create_row,
                    {
                        "namespace": self.namespace,
                        "session_id": sid,
                        "created_ms": tombstone,
                        "next_seq": 0,
                        "base_seq": 0,
                        **values,
                    },
                ).first()
                if created is None:
                    raise _Retry
                return False
            conn.execute(_DELETE_MESSAGES, self._params(sid))
            conn.execute(_UPDATE_ROW, self._params(sid, **values))
            return self._is_live(row, now) and row.version > 0

        return (yield from self._transaction(work, "writer"))

    def _plan_fork(self, src: str, dst: str, *, ttl_ms: int | None) -> Plan[int]:
        def work(conn: sa.Connection) -> int:
            now = self._now_ms()
            source = conn.execute(_SHARE_LIVE, self._params(src, now)).first()
            if source is None:
                raise SessionNotFound(src)
            target = self._lock_row(conn, dst)
            if self._is_live(target, now):
                raise SessionExists(dst)
            ttl = ttl_ms or self.default_ttl_ms or source.ttl_ms
            values = self._new_values(
                created_ms=now,
                updated_ms=now,
                ttl_ms=ttl,
                expires_ms=now + ttl if ttl is not None else None,
                count=source.message_count,
                next_seq=source.next_seq,
                base_seq=source.base_seq,
                lead=source.lead,
                metadata=_frozen(source.metadata),
                user_id=source.user_id,
            )
            self._renew(conn, dst, target, values)
            conn.execute(_COPY_MESSAGES, self._params(src, dst=dst))
            return 1

        return (yield from self._transaction(work, "writer"))

    # -- reads ----------------------------------------------------------------

    def _plan_read(self, sid: str, last: int | None) -> Plan[tuple[Any, list[Message]]]:
        """The live session row and its messages, from one snapshot (sliding the TTL)."""

        def work(conn: sa.Connection) -> tuple[Any, list[Message]]:
            params = self._params(sid, self._now_ms())
            # The sliding UPDATE also locks the row, so the messages match it.
            row = conn.execute(_SLIDE if self.sliding_ttl else _SELECT_LIVE, params).first()
            if row is None:
                raise SessionNotFound(sid)
            if last == 0:
                return row, []
            if last is None:
                payloads = conn.execute(_PAYLOADS_ALL, params).scalars().all()
            else:
                params["last"] = last
                payloads = conn.execute(_PAYLOADS_LAST, params).scalars().all()[::-1]
            return row, [decode_message(p) for p in payloads]

        return (
            yield from self._transaction(
                work, "writer" if self.sliding_ttl else "reader", read=True
            )
        )

    def _plan_load(self, sid: str, last: int | None) -> Plan[list[Message]]:
        if self.sliding_ttl or last == 0:
            return (yield from self._plan_read(sid, last))[1]

        def work(conn: sa.Connection) -> list[Message]:
            params = self._params(sid, self._now_ms())
            if last is None:
                payloads = conn.execute(_LIVE_PAYLOADS_ALL, params).scalars().all()
            else:
                params["last"] = last
                payloads = conn.execute(_LIVE_PAYLOADS_LAST, params).scalars().all()[::-1]
            if not payloads and conn.execute(_EXISTS, params).first() is None:
                raise SessionNotFound(sid)
            return [decode_message(p) for p in payloads]

        return (yield from self._transaction(work, "single", read=True))

    def _plan_get(self, sid: str, last: int | None) -> Plan[Session]:
        row, messages = yield from self._plan_read(sid, last)
        return Session(
            id=sid,
            messages=messages,
            metadata=_frozen(row.metadata),
            user_id=row.user_id,
            created_at=from_ms(row.created_ms),  # type: ignore[arg-type]
            updated_at=from_ms(row.updated_ms),  # type: ignore[arg-type]
            version=row.version,
            expires_at=from_ms(row.expires_ms),
            message_count=row.message_count,
            tier="archive",
        )

    def _plan_count(self, sid: str) -> Plan[int]:
        def work(conn: sa.Connection) -> int:
            count = conn.execute(_COUNT, self._params(sid, self._now_ms())).scalar()
            if count is None:
                raise SessionNotFound(sid)
            return int(count)

        return (yield from self._transaction(work, "single", read=True))

    def _plan_exists(self, sid: str) -> Plan[bool]:
        def work(conn: sa.Connection) -> bool:
            return conn.execute(_EXISTS, self._params(sid, self._now_ms())).first() is not None

        return (yield from self._transaction(work, "single", read=True))

    def _plan_list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Plan[Page]:
        position = decode_cursor(cursor) if cursor is not None else None
        keys = yield from self._plan_list_keys(user_id, limit + 1, position, order)
        if len(keys) <= limit:
            return Page([sid for _, sid in keys], None)
        return Page([sid for _, sid in keys[:limit]], encode_cursor(*keys[limit - 1]))

    # -- the tiered layer -----------------------------------------------------

    def _plan_list_keys(
        self,
        user_id: str | None,
        limit: int,
        position: tuple[int, str] | None,
        order: Order,
    ) -> Plan[list[tuple[int, str]]]:
        """The plan of :meth:`ArchiveStore.list_keys`."""
        params: dict[str, Any] = {"ns": self.namespace, "last": limit}
        if position is not None:
            params["after_ms"], params["after_sid"] = position
        if user_id is not None:
            params["user"] = user_id
        stmt = _LIST[order, position is not None, user_id is not None]

        def work(conn: sa.Connection) -> list[tuple[int, str]]:
            params["now"] = self._now_ms()
            return [(row.updated_ms, row.session_id) for row in conn.execute(stmt, params)]

        return (yield from self._transaction(work, "single", read=True))

    def _plan_snapshot(
        self, session_id: str, last: int | None = None, /, *, refresh: bool = False
    ) -> Plan[Snapshot | None]:
        """The plan of :meth:`ArchiveStore.snapshot`."""
        from tieredstore.tiers.transfer import Snapshot

        sid = self._sid(session_id)

        def work(conn: sa.Connection) -> Snapshot | None:
            params = self._params(sid, self._now_ms())
            row = conn.execute(_SLIDE if refresh else _SELECT_LIVE, params).first()
            if row is None:
                return None
            if last is None:
                rows = conn.execute(_SNAPSHOT_ALL, params).all()
            elif last == 0:
                rows = []
            else:
                params["last"] = last
                rows = conn.execute(_SNAPSHOT_LAST, params).all()[::-1]
            return Snapshot(
                sid=sid,
                messages=tuple(decode_message(r.payload) for r in rows),
                seqs=tuple(r.seq for r in rows),
                kinds="".join(r.kind for r in rows),
                metadata=_frozen(row.metadata),
                user_id=row.user_id,
                created_ms=row.created_ms,
                updated_ms=row.updated_ms,
                version=row.version,
                expires_ms=row.expires_ms,
                ttl_ms=row.ttl_ms,
                message_count=row.message_count,
                next_seq=row.next_seq,
                nbytes=sum(len(r.payload) for r in rows),
                base_seq=row.base_seq,
            )

        return (yield from self._transaction(work, "writer" if refresh else "reader", read=True))

    def _plan_history_page(
        self, session_id: str, before: int | None, limit: int
    ) -> Plan[HistoryPart | None]:
        """The plan of :meth:`ArchiveStore.history_page`."""
        sid, before = self._sid(session_id), check_before(before)
        check_limit(limit, maximum=100_000)

        def work(conn: sa.Connection) -> HistoryPart | None:
            params = self._params(sid, self._now_ms(), last=limit)
            row = conn.execute(_SELECT_LIVE, params).first()
            if row is None:
                return None
            params["base"] = row.base_seq
            if before is None:
                rows = conn.execute(_HISTORY, params).all()
            else:
                params["before"] = before
                rows = conn.execute(_HISTORY_BEFORE, params).all()
            pairs = [(r.seq, decode_message(r.payload)) for r in reversed(rows)]
            return HistoryPart(row.created_ms, row.base_seq, pairs)

        return (yield from self._transaction(work, "reader", read=True))

    def _plan_mirror(
        self,
        session_id: str,
        batch: Batch,
        receipt: WriteReceipt,
        *,
        replace: bool,
        metadata: FrozenDict | None = None,
        user_id: str | None = None,
    ) -> Plan[bool]:
        """The plan of :meth:`ArchiveStore.mirror`."""
        sid = self._sid(session_id)
        seqs = [receipt.first_seq + i for i in range(len(batch))]
        return (
            yield from self._plan_apply(
                sid,
                batch,
                seqs,
                created_ms=receipt.created_ms,
                updated_ms=receipt.updated_ms,
                version=receipt.version,
                expires_ms=receipt.expires_ms,
                ttl_ms=receipt.ttl_ms,
                next_seq=receipt.next_seq,
                base_seq=receipt.first_seq if replace else None,
                metadata=metadata,
                user_id=user_id,
            )
        )

    def _plan_mirror_metadata(
        self, session_id: str, metadata: FrozenDict, receipt: WriteReceipt
    ) -> Plan[bool]:
        """The plan of :meth:`ArchiveStore.mirror_metadata`."""
        sid = self._sid(session_id)

        def work(conn: sa.Connection) -> bool:
            row = self._lock_row(conn, sid)
            if row is not None and row.detached:
                raise SessionFenced(sid)
            if row is None or row.created_ms != receipt.created_ms:
                return False
            values: dict[str, Any] = {}
            if receipt.version > row.meta_version:
                values.update(metadata=metadata, meta_version=receipt.version)
            if receipt.version > row.version:
                values.update(
                    version=receipt.version,
                    updated_ms=receipt.updated_ms,
                    expires_ms=receipt.expires_ms,
                    ttl_ms=receipt.ttl_ms,
                )
            if values:
                conn.execute(_UPDATE_ROW, self._params(sid, **values))
            return True

        return (yield from self._transaction(work, "writer"))

    def _plan_restore(self, snapshot: Snapshot) -> Plan[bool]:
        """The plan of :meth:`ArchiveStore.restore`."""
        sid = self._sid(snapshot.sid)
        return (
            yield from self._plan_apply(
                sid,
                _snapshot_batch(snapshot),
                snapshot.seqs,
                created_ms=snapshot.created_ms,
                updated_ms=snapshot.updated_ms,
                version=snapshot.version,
                expires_ms=snapshot.expires_ms,
                ttl_ms=snapshot.ttl_ms,
                next_seq=snapshot.next_seq,
                base_seq=snapshot.base_seq,
                metadata=snapshot.metadata,
                user_id=snapshot.user_id,
            )
        )

    def prepare(self, copies: Sequence[ArchiveCopy]) -> PreparedCopies:
        """Check ``copies`` and build their rows for :meth:`absorb_many` (no I/O)."""
        ids = [copy.sid for copy in copies]
        if len(set(ids)) != len(ids):
            raise InvalidInput("absorb_many got the same session twice")
        for sid in ids:
            self._sid(sid)
        if not self._bulk_copy:
            return PreparedCopies(self.namespace, copies, [], [])
        ns = self.namespace
        loads = orjson.loads
        sessions: list[tuple[Any, ...]] = []
        messages: list[list[tuple[Any, ...]]] = []
        for copy in copies:
            sid, base, kinds, payloads = copy.sid, copy.base_seq, copy.kinds, copy.payloads
            stamps = copy.stamps or [copy.updated_ms] * len(copy.seqs)
            decoded = copy.messages
            rows: list[tuple[Any, ...]] = []
            kept: list[str] = []
            for i, seq in enumerate(copy.seqs):
                if seq < base:
                    continue
                message = decoded[i] if decoded is not None else loads(payloads[i])
                kept.append(kinds[i])
                rows.append(
                    (
                        ns,
                        sid,
                        seq,
                        stamps[i],
                        _no_nul(message["role"]),
                        kinds[i],
                        payloads[i],
                        _content_text(message),
                    )
                )
            messages.append(rows)
            sessions.append(
                (
                    sid,
                    copy.user_id,
                    _json_dumps(copy.metadata),
                    copy.created_ms,
                    copy.updated_ms,
                    copy.expires_ms,
                    copy.ttl_ms,
                    copy.version,
                    len(rows),
                    copy.next_seq,
                    base,
                    leading_system(kept),
                    copy.version,
                )
            )
        return PreparedCopies(ns, copies, sessions, messages)

    def _plan_absorb_many(self, copies: Sequence[ArchiveCopy] | PreparedCopies) -> Plan[list[bool]]:
        """The plan of :meth:`ArchiveStore.absorb_many`."""
        prepared = copies if isinstance(copies, PreparedCopies) else self.prepare(copies)
        if prepared.namespace != self.namespace:
            raise InvalidInput("these copies were prepared for another namespace")
        ids = [copy.sid for copy in prepared.copies]
        if not ids:
            return []

        def work(conn: sa.Connection) -> list[bool]:
            rows = {
                row.session_id: row
                for row in conn.execute(_LOCK_ROWS, {"ns": self.namespace, "ids": sorted(ids)})
            }
            done: dict[str, bool] = {}
            fresh: list[int] = []
            for index, copy in enumerate(prepared.copies):
                row = rows.get(copy.sid)
                if row is None and self._bulk_copy:
                    fresh.append(index)
                    continue
                keep = [i for i, seq in enumerate(copy.seqs) if seq >= copy.base_seq]
                batch = copy.batch()
                if len(keep) < len(batch):
                    batch = _subset(batch, keep)
                done[copy.sid] = self._apply_locked(
                    conn,
                    copy.sid,
                    row,
                    batch,
                    [copy.seqs[i] for i in keep],
                    created_ms=copy.created_ms,
                    updated_ms=copy.updated_ms,
                    version=copy.version,
                    expires_ms=copy.expires_ms,
                    ttl_ms=copy.ttl_ms,
                    next_seq=copy.next_seq,
                    base_seq=copy.base_seq,
                    metadata=copy.metadata,
                    user_id=copy.user_id,
                    skip_detached=True,
                )
            if fresh:
                self._create_many(conn, prepared, fresh)
            return [done.get(sid, True) for sid in ids]

        return (yield from self._transaction(work, "writer"))

    def _create_many(
        self, conn: sa.Connection, prepared: PreparedCopies, fresh: Sequence[int]
    ) -> None:
        """PostgreSQL: create the sessions ``fresh`` (indices) with their messages, in bulk.

        A session created concurrently since the rows were locked makes the
        insert skip it; the transaction is then retried, and finds the row.
        """
        values = [prepared.sessions[i] for i in fresh]
        columns = {name: [row[k] for row in values] for k, name in enumerate(_ABSORB_COLUMNS)}
        created = conn.execute(_PG_CREATE_SESSIONS, {"ns": self.namespace, **columns}).all()
        if len(created) < len(fresh):
            raise _Retry
        dbapi: Any = conn.connection.driver_connection
        with dbapi.cursor() as cursor, cursor.copy(_PG_COPY_MESSAGES) as copy_in:
            copy_in.set_types(_PG_COPY_TYPES)
            write = copy_in.write_row
            for i in fresh:
                for row in prepared.messages[i]:
                    write(row)

    def _plan_apply(
        self,
        sid: str,
        batch: Batch,
        seqs: Sequence[int],
        **bookkeeping: Any,
    ) -> Plan[bool]:
        """Merge messages at known seqs plus versioned bookkeeping into the stored session.

        ``bookkeeping`` is that of :meth:`_apply_locked`, which runs in one transaction here.
        """

        def work(conn: sa.Connection) -> bool:
            return self._apply_locked(
                conn, sid, self._lock_row(conn, sid), batch, seqs, **bookkeeping
            )

        return (yield from self._transaction(work, "writer"))

    def _apply_locked(
        self,
        conn: sa.Connection,
        sid: str,
        row: Any,
        batch: Batch,
        seqs: Sequence[int],
        *,
        created_ms: int,
        updated_ms: int,
        version: int,
        expires_ms: int | None,
        ttl_ms: int | None,
        next_seq: int,
        base_seq: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        skip_detached: bool = False,
    ) -> bool:
        """:meth:`_apply` inside the caller's transaction; ``row`` is the locked session row.

        ``base_seq`` (``None``: unchanged) is where the writer's history starts.
        A copy of a generation created before the id's tombstone is refused
        (``False``), and so is any copy onto a detached session: that raises
        :class:`SessionFenced` unless ``skip_detached``.
        """
        now = self._now_ms()
        if row is not None and row.deleted_ms is not None and created_ms < row.deleted_ms:
            return False  # a deleted generation: the delete wins
        if row is not None and row.detached:
            if skip_detached:
                return False
            raise SessionFenced(sid)
        if row is not None and row.created_ms > created_ms and self._is_live(row, now):
            return False  # a newer incarnation of the session is stored
        if row is None or row.created_ms != created_ms:
            # A new incarnation: it replaces whatever is stored.
            first = seqs[0] if seqs else next_seq
            # An out-of-order append does not know where the history starts: assume
            # its beginning, so earlier messages arriving later are still kept.
            start = base_seq if base_seq is not None else 0
            fresh = self._new_values(
                created_ms=created_ms,
                updated_ms=updated_ms,
                ttl_ms=ttl_ms,
                expires_ms=expires_ms,
                version=version,
                count=len(batch),
                next_seq=next_seq,
                base_seq=start,
                lead=leading_system(batch.kinds),
                metadata=metadata,
                user_id=user_id,
            )
            self._renew(conn, sid, row, fresh)
            self._insert_messages(conn, sid, batch, range(len(batch)), seqs, updated_ms)
            # An append whose earlier messages this tier never saw leaves a gap.
            return first == 0 or base_seq is not None
        base = row.base_seq if base_seq is None else max(row.base_seq, base_seq)
        deleted = 0
        if base > row.base_seq:
            deleted = conn.execute(_DELETE_MESSAGES_BEFORE, self._params(sid, base=base)).rowcount
        keep = [i for i, seq in enumerate(seqs) if seq >= base]
        inserted = self._insert_messages(
            conn,
            sid,
            batch,
            keep,
            [seqs[i] for i in keep],
            updated_ms,
            skip_existing=True,
        )
        values: dict[str, Any] = {
            "message_count": row.message_count - deleted + inserted,
            "next_seq": max(row.next_seq, next_seq),
            "base_seq": base,
        }
        if version > row.version:
            values.update(
                version=version,
                updated_ms=max(updated_ms, row.updated_ms),
                expires_ms=expires_ms,
                ttl_ms=ttl_ms,
            )
        if version > row.meta_version and (metadata is not None or user_id is not None):
            values["meta_version"] = version
            if metadata is not None:
                values["metadata"] = metadata
            if user_id is not None:
                values["user_id"] = user_id
        if deleted or inserted:
            values["lead"] = conn.execute(_LEAD, self._params(sid)).scalar_one()
        conn.execute(_UPDATE_ROW, self._params(sid, **values))
        return True

    # -- reconciliation (write_through after a Redis outage) ----------------------

    def _plan_detached(self, limit: int) -> Plan[list[str]]:
        """The plan of :meth:`ArchiveStore.detached_sessions`."""
        check_limit(limit, maximum=100_000)

        def work(conn: sa.Connection) -> list[str]:
            return list(conn.execute(_DETACHED, {"ns": self.namespace, "last": limit}).scalars())

        return (yield from self._transaction(work, "single", read=True))

    def _plan_reconcile(self, sid: str, fenced: Fenced | None) -> Plan[Reconciled]:
        """The plan of :meth:`ArchiveStore.reconcile`."""

        def work(conn: sa.Connection) -> Reconciled:
            now = self._now_ms()
            row = self._lock_row(conn, sid)
            if row is None:
                return Reconciled("unfence" if fenced else "none")
            tombstone = row.deleted_ms or 0
            if fenced is not None and fenced.created_ms < tombstone:
                action = "drop"
            elif not row.detached:
                newer = (
                    row.version > 0 and fenced is not None and row.created_ms > fenced.created_ms
                )
                action = "promote" if newer else ("unfence" if fenced else "none")
                return Reconciled(action, tombstone, row.version)
            elif fenced is None:
                action = "none"
            elif row.version == 0:
                action = "unfence"  # Redis holds a generation created after the delete
            else:
                return self._absorb_fenced(conn, sid, row, fenced, now)
            conn.execute(_UPDATE_ROW, self._params(sid, detached=False))
            return Reconciled(action, tombstone, row.version)

        return (yield from self._transaction(work, "writer"))

    def _absorb_fenced(
        self, conn: sa.Connection, sid: str, row: Any, fenced: Fenced, now: int
    ) -> Reconciled:
        """Make the detached archive copy the session's one history again.

        The fenced Redis copy's outbox holds its writes the archive may lack:
        each one the archive does not hold at its seqs is appended after the
        archive's history (a save's messages too: both sides were
        acknowledged). The result is a new generation, so a late mirror of
        the fenced copy is recognised as stale; its version is above both.
        """
        next_seq, count = row.next_seq, row.message_count
        metadata = dict(_frozen(row.metadata))
        user_id, updated = row.user_id, row.updated_ms
        inserted = False
        for record in fenced.records:
            receipt = record.receipt
            updated = max(updated, receipt.updated_ms)
            if record.metadata is not None:
                metadata.update(record.metadata)
            if record.user_id is not None:
                user_id = record.user_id
            batch = record.batch
            if not len(batch) or self._holds(conn, sid, row, record):
                continue
            seqs = [next_seq + i for i in range(len(batch))]
            self._insert_messages(conn, sid, batch, range(len(batch)), seqs, receipt.updated_ms)
            next_seq += len(batch)
            count += len(batch)
            inserted = True
        version = max(row.version, fenced.version) + 1
        values: dict[str, Any] = {
            "created_ms": max(now, row.created_ms + 1, fenced.created_ms + 1),
            "version": version,
            "updated_ms": updated,
            "next_seq": next_seq,
            "message_count": count,
            "metadata": FrozenDict(metadata),
            "meta_version": version,
            "user_id": user_id,
            "detached": False,
        }
        if inserted:
            values["lead"] = conn.execute(_LEAD, self._params(sid)).scalar_one()
        conn.execute(_UPDATE_ROW, self._params(sid, **values))
        return Reconciled("promote", row.deleted_ms or 0, version)

    def _holds(self, conn: sa.Connection, sid: str, row: Any, record: OutboxRecord) -> bool:
        """Whether the archive already holds this outbox record's messages (a
        mirror that landed before the outage, whose acknowledgement was lost)."""
        receipt = record.receipt
        if receipt.created_ms != row.created_ms:
            return False
        seqs = [receipt.first_seq + i for i in range(len(record.batch))]
        stored = {
            r.seq: (bytes(r.payload), r.created_ms)
            for r in conn.execute(_MESSAGES_AT, self._params(sid, seqs=seqs))
        }
        return all(
            stored.get(seq) == (payload, receipt.updated_ms)
            for seq, payload in zip(seqs, record.batch.payloads, strict=True)
        )

    # -- maintenance ----------------------------------------------------------

    def _plan_purge_expired(
        self,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
    ) -> Plan[int]:
        """The plan of :meth:`ArchiveStore.purge_expired`."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            batches += 1
            seen, purged = yield from self._plan_purge_expired_batch(batch_size, live=live)
            total += purged
            if seen < batch_size:
                break
        return total

    def _plan_purge_expired_batch(
        self,
        batch_size: int,
        *,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
        now_ms: int | None = None,
    ) -> Plan[tuple[int, int]]:
        """One transaction of :meth:`purge_expired`: ``(expired rows seen, deleted)``.

        ``live(ids)`` names the sessions another tier still holds alive, with
        their expiry there (``None``: none): those rows are not deleted but
        take that expiry, since the archive's copy of a session that lives on
        in Redis is only as old as its last archival.
        """
        check_limit(batch_size, "batch_size", maximum=100_000)
        ids_param: sa.BindParameter[list[str]] = sa.bindparam("ids", expanding=True)
        delete_messages = sa.delete(MESSAGES).where(
            _M.namespace == _NS, _M.session_id.in_(ids_param)
        )
        delete_sessions = sa.delete(SESSIONS).where(
            _S.namespace == _NS, _S.session_id.in_(ids_param), _S.expires_ms <= _NOW
        )

        def work(conn: sa.Connection) -> tuple[int, int]:
            now = self._now_ms() if now_ms is None else now_ms
            params: dict[str, Any] = {
                "ns": self.namespace,
                "now": now,
                "last": batch_size,
                "tomb_before": now - self.tombstone_ms,
            }
            ids = list(conn.execute(_SELECT_EXPIRED, params).scalars())
            if not ids:
                return 0, 0
            kept = live(ids) if live is not None else {}
            for sid, expires in kept.items():
                conn.execute(_UPDATE_ROW, self._params(sid, expires_ms=expires))
            params["ids"] = [sid for sid in ids if sid not in kept]
            if not params["ids"]:
                return len(ids), 0
            conn.execute(delete_messages, params)
            return len(ids), int(conn.execute(delete_sessions, params).rowcount)

        return (yield from self._transaction(work, "writer"))

    def _plan_trim_batch(
        self,
        *,
        max_messages: int | None,
        max_bytes: int | None,
        batch_size: int,
        after: str | None = None,
        dry_run: bool = False,
    ) -> Plan[tuple[list[str], int, int]]:
        """The plan of :meth:`ArchiveStore.trim_batch`."""
        check_limit(batch_size, "batch_size", maximum=100_000)

        def work(conn: sa.Connection) -> tuple[list[str], int, int]:
            params: dict[str, Any] = {
                "ns": self.namespace,
                "after": after or "",
                "last": batch_size,
            }
            ids = list(conn.execute(_SESSION_IDS_AFTER, params).scalars())
            if not ids:
                return [], 0, 0
            params["ids"] = ids
            trimmed = dropped = 0
            for sid, count, nbytes in conn.execute(_SIZES, params):
                over_count = max_messages is not None and count > max_messages
                over_bytes = max_bytes is not None and nbytes > max_bytes
                if not (over_count or over_bytes):
                    continue
                if self._lock_row(conn, sid) is None:
                    continue
                rows = conn.execute(_SEQ_KIND_SIZES, self._params(sid)).all()
                kinds = "".join(row.kind for row in rows)
                lead, drop = plan_trim_bytes(
                    kinds, [row.size for row in rows], max_messages, max_bytes
                )
                if not drop:
                    continue
                trimmed += 1
                dropped += drop
                if dry_run:
                    continue
                low, high = rows[lead].seq, rows[lead + drop - 1].seq
                conn.execute(_DELETE_MESSAGE_RANGE, self._params(sid, low=low, high=high))
                kept = kinds[:lead] + kinds[lead + drop :]
                conn.execute(
                    _UPDATE_ROW,
                    self._params(sid, message_count=len(kept), lead=leading_system(kept)),
                )
            return ids, trimmed, dropped

        return (yield from self._transaction(work, "writer"))

    def _plan_stats(self) -> Plan[dict[str, int]]:
        """The plan of :meth:`ArchiveStore.stats`."""

        def work(conn: sa.Connection) -> dict[str, int]:
            params = {"ns": self.namespace, "now": self._now_ms()}
            real = _S.version > 0
            sessions = conn.execute(
                sa.select(
                    sa.func.count().filter(real),
                    sa.func.count().filter(real, _S.expires_ms <= _NOW),
                    sa.func.count().filter(sa.not_(real)),
                ).where(_S.namespace == _NS),
                params,
            ).one()
            messages = conn.execute(
                sa.select(sa.func.count()).where(_M.namespace == _NS), params
            ).scalar_one()
            return {
                "sessions": int(sessions[0]),
                "expired_sessions": int(sessions[1]),
                "tombstones": int(sessions[2]),
                "messages": int(messages),
            }

        return (yield from self._transaction(work, "reader", read=True))


# -- the shells ----------------------------------------------------------------


class ArchiveStore(ArchiveShared, BaseStore):
    """The durable store: sessions and messages in PostgreSQL or SQLite tables.

    Pass an :class:`sqlalchemy.Engine` (shared with the application; the store
    never disposes it) or a ``url`` (the store owns that engine and disposes it
    on :meth:`close`). ``namespace`` scopes every session; ``options`` are those
    of :class:`~tieredstore.BaseStore` (``default_ttl``, ``max_messages``,
    ``sliding_ttl``, ``limits``, ``clock``). Expired sessions read as missing and
    are removed by :meth:`purge_expired`.

    ``timeouts`` (:class:`~tieredstore.timeouts.ArchiveTimeouts`) bound the
    PostgreSQL connections of an engine built from ``url``, and every
    transaction on the client side; ``breaker`` (a
    :class:`~tieredstore.CircuitBreaker`, ``True`` for the defaults, ``False``
    for none) fails calls fast while the database is down.
    """

    def __init__(
        self,
        engine: sa.Engine | None = None,
        *,
        url: str | sa.URL | None = None,
        namespace: str = "default",
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        timeouts: ArchiveTimeouts | None = None,
        breaker: CircuitBreaker | bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if (engine is None) == (url is None):
            raise InvalidInput("ArchiveStore needs either an engine or a url")
        self._owns_engine = engine is None
        if engine is None:
            assert url is not None
            engine = create_engine(url, timeouts=timeouts)
        self.engine = engine
        roles = self._setup(engine, namespace, tombstone_ttl)
        self._setup_bounds(engine, breaker, timeouts)
        self._bulk_copy = self._pg
        self._engines = {
            role: engine.execution_options(**opts) if opts else engine
            for role, opts in roles.items()
        }
        self._targets = {"db": self, "clock": time}

    @classmethod
    def from_url(
        cls,
        url: str | sa.URL,
        *,
        engine_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ArchiveStore:
        """A store on its own engine for ``url`` (``postgresql://...`` or ``sqlite:///...``).

        ``engine_options`` (pool size, ...) and ``timeouts`` go to
        :func:`create_engine`; the store disposes the engine on :meth:`close`.
        """
        engine = create_engine(url, timeouts=kwargs.get("timeouts"), **(engine_options or {}))
        store = cls(engine, **kwargs)
        store._owns_engine = True
        return store

    # -- the I/O shell ------------------------------------------------------------

    def _in_transaction(self, work: Callable[[sa.Connection], T], role: str) -> T:
        with (
            self.breaker.guard(db_failure),
            self._engines[role].connect() as conn,
            self._bounded(conn),
            conn.begin(),
        ):
            return work(conn)

    def _drive(self, plan: Plan[T]) -> T:
        return run(plan, self._targets)

    def _close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # -- primitives ---------------------------------------------------------------

    def _save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> int:
        return self._drive(
            self._plan_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
            )
        )

    def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int:
        return self._drive(
            self._plan_append(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    def _load(self, sid: str, last: int | None) -> list[Message]:
        return self._drive(self._plan_load(sid, last))

    def _get(self, sid: str, last: int | None) -> Session:
        return self._drive(self._plan_get(sid, last))

    def _count(self, sid: str) -> int:
        return self._drive(self._plan_count(sid))

    def _exists(self, sid: str) -> bool:
        return self._drive(self._plan_exists(sid))

    def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return self._drive(self._plan_merge_metadata(sid, updates))

    def _delete(self, sid: str) -> bool:
        return self._drive(self._plan_delete(sid))

    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page:
        return self._drive(self._plan_list(user_id, limit, cursor, order))

    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return self._drive(self._plan_fork(src, dst, ttl_ms=ttl_ms))

    # -- the tiered layer -----------------------------------------------------------

    def write_save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> WriteReceipt:
        """:meth:`save` on validated input, returning the full :class:`WriteReceipt`.

        ``detached`` marks a write taken while Redis is unreachable: the Redis
        copy is then stale until reconciled (see :meth:`reconcile`).
        """
        return self._drive(
            self._plan_write_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
                detached=detached,
            )
        )

    def write_append(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> WriteReceipt:
        """:meth:`append` on validated input, returning the full :class:`WriteReceipt`."""
        return self._drive(
            self._plan_write_append(
                sid, batch, ttl_ms=ttl_ms, expected_version=expected_version, detached=detached
            )
        )

    def write_merge_metadata(
        self, sid: str, updates: FrozenDict, *, detached: bool = False
    ) -> FrozenDict:
        """:meth:`merge_metadata` on validated input (``detached`` as for :meth:`write_save`)."""
        return self._drive(self._plan_merge_metadata(self._sid(sid), updates, detached))

    def delete_at(self, sid: str, *, floor_ms: int = 0, detached: bool = False) -> bool:
        """Delete the session, keeping its row as a tombstone no earlier than ``floor_ms``.

        Copies of any generation created before the tombstone are refused
        (:meth:`absorb_many`, :meth:`mirror`, :meth:`restore`), and a session
        written later is a new generation created at or after it. Tombstones
        are removed by :meth:`purge_expired` once ``tombstone_ttl`` has passed.
        """
        return self._drive(self._plan_delete(self._sid(sid), floor_ms, detached))

    def detached_sessions(self, limit: int = 1000) -> list[str]:
        """Sessions that took writes while Redis was unreachable, not yet reconciled."""
        return self._drive(self._plan_detached(limit))

    def reconcile(self, sid: str, fenced: Fenced | None) -> Reconciled:
        """Settle a detached session against its fenced Redis copy (``None``: none).

        See :class:`Reconciled` for what the caller does next with the Redis copy.
        """
        return self._drive(self._plan_reconcile(self._sid(sid), fenced))

    def list_keys(
        self,
        user_id: str | None,
        limit: int,
        position: tuple[int, str] | None,
        order: Order,
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` ``(updated_ms, session_id)`` of live sessions after ``position``.

        The keyset behind :meth:`list` (``position`` is a decoded cursor), for
        merging this tier's index with another's.
        """
        return self._drive(self._plan_list_keys(user_id, limit, position, order))

    def snapshot(
        self, session_id: str, last: int | None = None, /, *, refresh: bool = False
    ) -> Snapshot | None:
        """The live session with seqs and bookkeeping, or ``None``: what another tier copies.

        ``last`` keeps only the newest messages; ``refresh`` slides the TTL
        (as a read with ``sliding_ttl`` does).
        """
        return self._drive(self._plan_snapshot(session_id, last, refresh=refresh))

    def history_page(
        self, session_id: str, before: int | None, limit: int
    ) -> HistoryPart | None:
        """The newest ``limit`` messages of the current history (from its base
        seq) with seq below ``before``, as ``(seq, message)`` oldest first, with
        the generation; ``None`` if the session is missing or expired."""
        return self._drive(self._plan_history_page(session_id, before, limit))

    def mirror(
        self,
        session_id: str,
        batch: Batch,
        receipt: WriteReceipt,
        *,
        replace: bool,
        metadata: FrozenDict | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Apply a write that another tier made (``receipt`` says where it landed).

        ``replace`` marks a ``save`` (the history restarts at ``receipt.first_seq``).
        Idempotent and order-independent: messages land at their seqs, and the
        session's version, expiry and metadata change only for a newer write.
        Returns ``False`` when the write was stale (a newer incarnation of the
        session is stored) or left a gap (an append to a session this tier does
        not hold), so the caller can copy the whole session instead.
        """
        return self._drive(
            self._plan_mirror(
                session_id, batch, receipt, replace=replace, metadata=metadata, user_id=user_id
            )
        )

    def mirror_metadata(self, session_id: str, metadata: FrozenDict, receipt: WriteReceipt) -> bool:
        """Apply a metadata write made in another tier; ``False`` if this tier lacks
        that incarnation of the session (the write is then for the caller to copy)."""
        return self._drive(self._plan_mirror_metadata(session_id, metadata, receipt))

    def restore(self, snapshot: Snapshot) -> bool:
        """Copy a session from another tier into the archive (archival, write-back).

        Same rules as :meth:`mirror`: stored messages of the same incarnation
        at or after ``snapshot.base_seq`` are kept (older history the other
        tier trimmed), the snapshot's messages land at their seqs, and the
        bookkeeping changes only for a newer version. ``False`` if stale.
        """
        return self._drive(self._plan_restore(snapshot))

    def absorb_many(self, copies: Sequence[ArchiveCopy] | PreparedCopies) -> list[bool]:
        """Upsert sessions copied from another tier, all in one transaction (archival).

        Per session, as :meth:`restore`: messages land at their seqs and
        stored seqs are left alone (so absorbing the same copy twice changes
        nothing), rows below ``base_seq`` go (a save replaced them), and the
        bookkeeping changes only for a version at least as new. Sessions the
        archive does not hold yet are created in bulk (on PostgreSQL one
        ``INSERT`` for the rows and one binary ``COPY`` for the messages).
        ``copies`` may come from :meth:`prepare`. Returns, per copy, ``False``
        if the archive holds a newer incarnation.
        """
        return self._drive(self._plan_absorb_many(copies))

    # -- maintenance ----------------------------------------------------------------

    def purge_expired(
        self,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
    ) -> int:
        """Delete this namespace's expired sessions, ``batch_size`` per transaction.

        Returns how many were deleted. Reads already treat them as missing;
        this reclaims their rows. See :meth:`purge_expired_batch` for ``live``.
        """
        return self._drive(
            self._plan_purge_expired(batch_size=batch_size, max_batches=max_batches, live=live)
        )

    def purge_expired_batch(
        self,
        batch_size: int,
        *,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
        now_ms: int | None = None,
    ) -> tuple[int, int]:
        """One transaction of :meth:`purge_expired`: ``(expired rows seen, deleted)``.

        ``live(ids)`` names the sessions another tier still holds alive, with
        their expiry there (``None``: none): those rows are not deleted but
        take that expiry, since the archive's copy of a session that lives on
        in Redis is only as old as its last archival. It runs inside the
        transaction and must not block for long.
        """
        return self._drive(self._plan_purge_expired_batch(batch_size, live=live, now_ms=now_ms))

    def trim_batch(
        self,
        *,
        max_messages: int | None,
        max_bytes: int | None,
        batch_size: int,
        after: str | None = None,
        dry_run: bool = False,
    ) -> tuple[list[str], int, int]:
        """Enforce the trim policy on up to ``batch_size`` sessions after ``after`` (by id).

        One transaction: ``(ids scanned, sessions trimmed, messages deleted)``;
        pass the last id scanned as ``after`` to continue, ``[]`` means the end.
        The policy is :func:`tieredstore.policy.plan_trim_bytes` over the stored
        history; the version is left alone (a retention step, not a write).
        """
        return self._drive(
            self._plan_trim_batch(
                max_messages=max_messages,
                max_bytes=max_bytes,
                batch_size=batch_size,
                after=after,
                dry_run=dry_run,
            )
        )

    def stats(self) -> dict[str, Any]:
        """Row counts for this namespace: sessions (live and expired), delete
        tombstones and messages; also the circuit breaker's state (``breaker``)."""
        return {**self._drive(self._plan_stats()), "breaker": self.breaker.stats()}


class AsyncArchiveStore(ArchiveShared, AsyncBaseStore):
    """The asyncio twin of :class:`ArchiveStore` over SQLAlchemy's async engine.

    Pass an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (``postgresql+psycopg``
    or ``sqlite+aiosqlite``) or a ``url`` (a plain ``postgresql://`` or
    ``sqlite:///`` URL picks those drivers; see :func:`create_async_engine`).
    Each operation runs the same database work as :class:`ArchiveStore`,
    through ``AsyncConnection.run_sync``, so statements, locking and retries are
    identical. One difference: :meth:`absorb_many` creates new sessions with
    ``INSERT`` rather than PostgreSQL's binary ``COPY``.
    """

    def __init__(
        self,
        engine: AsyncEngine | None = None,
        *,
        url: str | sa.URL | None = None,
        namespace: str = "default",
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        timeouts: ArchiveTimeouts | None = None,
        breaker: CircuitBreaker | bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if (engine is None) == (url is None):
            raise InvalidInput("AsyncArchiveStore needs either an engine or a url")
        self._owns_engine = engine is None
        if engine is None:
            assert url is not None
            engine = create_async_engine(url, timeouts=timeouts)
        self.engine = engine
        roles = self._setup(engine.sync_engine, namespace, tombstone_ttl)
        self._setup_bounds(engine.sync_engine, breaker, timeouts)
        self._bulk_copy = False
        self._engines = {
            role: engine.execution_options(**opts) if opts else engine
            for role, opts in roles.items()
        }
        self._targets = {"db": self, "clock": asyncio}

    @classmethod
    def from_url(
        cls,
        url: str | sa.URL,
        *,
        engine_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncArchiveStore:
        """A store on its own async engine for ``url``; see :meth:`ArchiveStore.from_url`."""
        engine = create_async_engine(url, timeouts=kwargs.get("timeouts"), **(engine_options or {}))
        store = cls(engine, **kwargs)
        store._owns_engine = True
        return store

    # -- the I/O shell ------------------------------------------------------------

    async def _in_transaction(self, work: Callable[[sa.Connection], T], role: str) -> T:
        with self.breaker.guard(db_failure):
            async with self._engines[role].connect() as conn:
                with self._bounded(conn.sync_connection):
                    async with conn.begin():
                        return await conn.run_sync(work)

    async def _drive(self, plan: Plan[T]) -> T:
        return await arun(plan, self._targets)

    async def _aclose(self) -> None:
        if self._owns_engine:
            await self.engine.dispose()

    # -- primitives ---------------------------------------------------------------

    async def _save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> int:
        return await self._drive(
            self._plan_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
            )
        )

    async def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int:
        return await self._drive(
            self._plan_append(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    async def _load(self, sid: str, last: int | None) -> list[Message]:
        return await self._drive(self._plan_load(sid, last))

    async def _get(self, sid: str, last: int | None) -> Session:
        return await self._drive(self._plan_get(sid, last))

    async def _count(self, sid: str) -> int:
        return await self._drive(self._plan_count(sid))

    async def _exists(self, sid: str) -> bool:
        return await self._drive(self._plan_exists(sid))

    async def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return await self._drive(self._plan_merge_metadata(sid, updates))

    async def _delete(self, sid: str) -> bool:
        return await self._drive(self._plan_delete(sid))

    async def _list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Page:
        return await self._drive(self._plan_list(user_id, limit, cursor, order))

    async def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return await self._drive(self._plan_fork(src, dst, ttl_ms=ttl_ms))

    # -- the tiered layer -----------------------------------------------------------

    async def write_save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> WriteReceipt:
        """See :meth:`ArchiveStore.write_save`."""
        return await self._drive(
            self._plan_write_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
                detached=detached,
            )
        )

    async def write_append(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> WriteReceipt:
        """See :meth:`ArchiveStore.write_append`."""
        return await self._drive(
            self._plan_write_append(
                sid, batch, ttl_ms=ttl_ms, expected_version=expected_version, detached=detached
            )
        )

    async def write_merge_metadata(
        self, sid: str, updates: FrozenDict, *, detached: bool = False
    ) -> FrozenDict:
        """See :meth:`ArchiveStore.write_merge_metadata`."""
        return await self._drive(self._plan_merge_metadata(self._sid(sid), updates, detached))

    async def delete_at(self, sid: str, *, floor_ms: int = 0, detached: bool = False) -> bool:
        """See :meth:`ArchiveStore.delete_at`."""
        return await self._drive(self._plan_delete(self._sid(sid), floor_ms, detached))

    async def detached_sessions(self, limit: int = 1000) -> list[str]:
        """See :meth:`ArchiveStore.detached_sessions`."""
        return await self._drive(self._plan_detached(limit))

    async def reconcile(self, sid: str, fenced: Fenced | None) -> Reconciled:
        """See :meth:`ArchiveStore.reconcile`."""
        return await self._drive(self._plan_reconcile(self._sid(sid), fenced))

    async def list_keys(
        self,
        user_id: str | None,
        limit: int,
        position: tuple[int, str] | None,
        order: Order,
    ) -> list[tuple[int, str]]:
        """See :meth:`ArchiveStore.list_keys`."""
        return await self._drive(self._plan_list_keys(user_id, limit, position, order))

    async def snapshot(
        self, session_id: str, last: int | None = None, /, *, refresh: bool = False
    ) -> Snapshot | None:
        """See :meth:`ArchiveStore.snapshot`."""
        return await self._drive(self._plan_snapshot(session_id, last, refresh=refresh))

    async def history_page(
        self, session_id: str, before: int | None, limit: int
    ) -> HistoryPart | None:
        """See :meth:`ArchiveStore.history_page`."""
        return await self._drive(self._plan_history_page(session_id, before, limit))

    async def mirror(
        self,
        session_id: str,
        batch: Batch,
        receipt: WriteReceipt,
        *,
        replace: bool,
        metadata: FrozenDict | None = None,
        user_id: str | None = None,
    ) -> bool:
        """See :meth:`ArchiveStore.mirror`."""
        return await self._drive(
            self._plan_mirror(
                session_id, batch, receipt, replace=replace, metadata=metadata, user_id=user_id
            )
        )

    async def mirror_metadata(
        self, session_id: str, metadata: FrozenDict, receipt: WriteReceipt
    ) -> bool:
        """See :meth:`ArchiveStore.mirror_metadata`."""
        return await self._drive(self._plan_mirror_metadata(session_id, metadata, receipt))

    async def restore(self, snapshot: Snapshot) -> bool:
        """See :meth:`ArchiveStore.restore`."""
        return await self._drive(self._plan_restore(snapshot))

    async def absorb_many(self, copies: Sequence[ArchiveCopy] | PreparedCopies) -> list[bool]:
        """See :meth:`ArchiveStore.absorb_many` (new sessions by ``INSERT``, not ``COPY``)."""
        return await self._drive(self._plan_absorb_many(copies))

    async def purge_expired(
        self,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
    ) -> int:
        """See :meth:`ArchiveStore.purge_expired`."""
        return await self._drive(
            self._plan_purge_expired(batch_size=batch_size, max_batches=max_batches, live=live)
        )

    async def purge_expired_batch(
        self,
        batch_size: int,
        *,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
        now_ms: int | None = None,
    ) -> tuple[int, int]:
        """See :meth:`ArchiveStore.purge_expired_batch` (``live`` must not block)."""
        return await self._drive(
            self._plan_purge_expired_batch(batch_size, live=live, now_ms=now_ms)
        )

    async def trim_batch(
        self,
        *,
        max_messages: int | None,
        max_bytes: int | None,
        batch_size: int,
        after: str | None = None,
        dry_run: bool = False,
    ) -> tuple[list[str], int, int]:
        """See :meth:`ArchiveStore.trim_batch`."""
        return await self._drive(
            self._plan_trim_batch(
                max_messages=max_messages,
                max_bytes=max_bytes,
                batch_size=batch_size,
                after=after,
                dry_run=dry_run,
            )
        )

    async def stats(self) -> dict[str, Any]:
        """See :meth:`ArchiveStore.stats`."""
        return {**(await self._drive(self._plan_stats())), "breaker": self.breaker.stats()}
