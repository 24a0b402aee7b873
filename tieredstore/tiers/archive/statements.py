"""The archive tier's SQL statements over :mod:`tieredstore.schema`, built once at import.

Plans run them with named parameters (``ns``, ``sid``, ``now``, ...).
PostgreSQL has its own batched variants: ``unnest`` over arrays, an
append in one statement, a binary ``COPY`` for new sessions' messages.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from tieredstore.core import Order
from tieredstore.policy import KIND_SYSTEM
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import sessions as SESSIONS

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
# A session's messages, in its partition only: the month comes from its row
# (an InitPlan), so PostgreSQL prunes the other partitions at run time.
_MKEY = sa.and_(
    _M.namespace == _NS,
    _M.session_id == _SID,
    _M.month == sa.select(_S.month).where(_KEY).scalar_subquery(),
)
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
_SEQ_PAYLOADS = sa.select(_M.seq, _M.payload).where(_MKEY)
_SEQ_PAYLOADS_ALL = _SEQ_PAYLOADS.order_by(_M.seq)
_SEQ_PAYLOADS_LAST = _SEQ_PAYLOADS.order_by(_M.seq.desc()).limit(_LAST)
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
# The month of the session messages are written for (all its rows share it).
_SESSION_MONTH = sa.select(_S.month).where(_KEY)
_COPY_MESSAGES = MESSAGES.insert().from_select(
    ["namespace", "session_id", "seq", "month", "created_ms", "role", "kind", "payload",
     "content_text"],
    sa.select(
        _M.namespace,
        sa.bindparam("dst", type_=_M.session_id.type),
        _M.seq,
        sa.select(_S.month)
        .where(_S.namespace == _NS, _S.session_id == sa.bindparam("dst"))
        .scalar_subquery(),
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
_PG_COLUMNS = (
    "(namespace, session_id, seq, month, created_ms, role, kind, payload, content_text)"
)
_PG_INSERT = (
    f"INSERT INTO {MESSAGES.name} {_PG_COLUMNS} "
    "SELECT s.namespace, s.session_id, u.i, s.month, :now, u.role, u.kind, u.payload, u.text "
    f"FROM {SESSIONS.name} s, {_PG_UNNEST} WHERE s.namespace = :ns AND s.session_id = :sid"
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
_MESSAGES_STAMPED = sa.select(_M.payload, _M.created_ms).where(
    _MKEY, _M.created_ms.in_(sa.bindparam("stamps", expanding=True))
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
    "month",
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
    "integer",
)
# PostgreSQL: create a batch of sessions in one statement; RETURNING says which were new.
_PG_CREATE_SESSIONS = sa.text(
    f"INSERT INTO {SESSIONS.name} (namespace, {', '.join(_ABSORB_COLUMNS)}) "
    f"SELECT :ns, u.* FROM unnest("
    + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in zip(_ABSORB_COLUMNS, _ABSORB_TYPES, strict=True))
    + ") AS u ON CONFLICT DO NOTHING RETURNING session_id"
)
_PG_COPY_MESSAGES = f"COPY {MESSAGES.name} {_PG_COLUMNS} FROM STDIN (FORMAT BINARY)"
_PG_COPY_TYPES = ("text", "text", "int8", "int4", "int8", "text", "text", "bytea", "text")


_RECEIPT = ", ".join(c.name for c in _RECEIPT_COLUMNS)


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
        f"RETURNING {_RECEIPT}, month), "
        f"m AS (INSERT INTO {MESSAGES.name} {_PG_COLUMNS} "
        "SELECT :ns, :sid, s.next_seq - :n + u.i, s.month, :now, u.role, u.kind, u.payload, "
        f"u.text FROM s, {_PG_UNNEST}) "
        f"SELECT {_RECEIPT} FROM s"
    )


def _pg_mirror_statement(with_ttl: bool) -> sa.TextClause:
    """PostgreSQL mirror of an append another tier made, as one statement.

    It applies only to the stored generation, neither detached nor deleted,
    when the write is newer than the row and lands after every stored seq
    (the common case: the next write of a session this tier already holds).
    No row back means another case: the caller then takes the transactional
    path, which handles them all.
    """
    expiry = ":expires, ttl_ms = :ttl" if with_ttl else "NULL, ttl_ms = NULL"
    return sa.text(
        f"WITH s AS (UPDATE {SESSIONS.name} SET version = :version, "
        "message_count = message_count + :n, next_seq = GREATEST(next_seq, :next_seq), "
        f"updated_ms = GREATEST(updated_ms, :updated), expires_ms = {expiry}, "
        "lead = CASE WHEN lead = message_count THEN lead + :batch_lead ELSE lead END "
        "WHERE namespace = :ns AND session_id = :sid AND created_ms = :created "
        "AND NOT detached AND (deleted_ms IS NULL OR deleted_ms <= :created) "
        "AND version < :version AND next_seq <= :first "
        "RETURNING month), "
        f"m AS (INSERT INTO {MESSAGES.name} {_PG_COLUMNS} "
        "SELECT :ns, :sid, :first + u.i, s.month, :updated, u.role, u.kind, u.payload, "
        f"u.text FROM s, {_PG_UNNEST}) "
        "SELECT month FROM s"
    )


_PG_MIRROR = {ttl: _pg_mirror_statement(ttl) for ttl in (False, True)}

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
