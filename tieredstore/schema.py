"""The archive's tables, declared once for :class:`ArchiveStore` and for Alembic.

Tables exist only through the migrations in ``migrations/`` (run
:func:`tieredstore.migrate`); ``alembic check`` compares this metadata against
a migrated database, so the two never drift.

Times are ``BIGINT`` unix milliseconds (``*_ms``): ordering and list cursors
are then exact and identical on PostgreSQL and SQLite. For ad-hoc queries use
``to_timestamp(updated_ms / 1000.0)`` (PostgreSQL) or
``datetime(updated_ms / 1000, 'unixepoch')`` (SQLite).

A message row keeps the exact encoded bytes of the message in ``payload``
(``JSONB`` would reorder keys and reject U+0000); ``kind`` is its trim-policy
kind (see :mod:`tieredstore.policy`), ``content_text`` the plain text of its
content for search where the database cannot read it from the payload.
``seq`` numbers a session's messages for life: it only grows, so a ``save``
writes after the last seq ever used. ``month`` places a session's messages
in one monthly partition on PostgreSQL (see
:mod:`tieredstore.tiers.archive.partitions`); there is no foreign key from
messages to sessions, the store deletes both together.

The ``tieredstore_checkpoint*`` tables (migration 0005) archive LangGraph
checkpoints (:mod:`tieredstore.integrations.langgraph`): one row per thread
(its generation, activity, expiry and delete tombstone), one per checkpoint
(the serializer's ``type`` and bytes, metadata as JSON) and one per pending
write, keyed as LangGraph keys them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from tieredstore.errors import InvalidInput

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_THREADS",
    "CHECKPOINT_WRITES",
    "DEFAULT_FTS_LANGUAGE",
    "FTS_INDEX",
    "MESSAGES",
    "MESSAGE_TEXT_FUNCTION",
    "SESSIONS",
    "TABLE_PREFIX",
    "VERSION_TABLE",
    "checkpoint_threads",
    "checkpoint_writes",
    "checkpoints",
    "messages",
    "metadata",
    "normalize_url",
    "sessions",
]

TABLE_PREFIX = "tieredstore_"
SESSIONS = TABLE_PREFIX + "sessions"
MESSAGES = TABLE_PREFIX + "messages"
CHECKPOINT_THREADS = TABLE_PREFIX + "checkpoint_threads"
CHECKPOINTS = TABLE_PREFIX + "checkpoints"
CHECKPOINT_WRITES = TABLE_PREFIX + "checkpoint_writes"
#: Alembic's revision table for tieredstore (apart from an app's ``alembic_version``).
VERSION_TABLE = TABLE_PREFIX + "alembic_version"
#: The GIN index behind full-text search on PostgreSQL (migration 0002).
FTS_INDEX = "ix_tieredstore_messages_fts"
#: The SQL function (migration 0004) that gives a message row's search text:
#: ``content`` from the payload, or ``content_text`` where the row stores it.
MESSAGE_TEXT_FUNCTION = TABLE_PREFIX + "message_text"
#: The text-search configuration (regconfig) the FTS index is built with unless
#: ``TIEREDSTORE_FTS_LANGUAGE`` names another when migration 0002 runs.
DEFAULT_FTS_LANGUAGE = "english"

#: Deterministic constraint names, so migrations can refer to them.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: ``JSON`` everywhere, ``JSONB`` on PostgreSQL (indexable, compact).
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

#: Identifiers compare by code point everywhere (``COLLATE "C"`` on PostgreSQL,
#: SQLite's default ``BINARY``), as Python and Redis order them: list cursors
#: then mean the same thing in every tier, and index comparisons are memcmp.
IdType = sa.String().with_variant(sa.String(collation="C"), "postgresql")

sessions = sa.Table(
    SESSIONS,
    metadata,
    sa.Column("namespace", IdType, nullable=False),
    sa.Column("session_id", IdType, nullable=False),
    sa.Column("user_id", IdType, nullable=True),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("created_ms", sa.BigInteger(), nullable=False),
    sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    sa.Column("expires_ms", sa.BigInteger(), nullable=True),
    sa.Column("ttl_ms", sa.BigInteger(), nullable=True),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("message_count", sa.Integer(), nullable=False),
    sa.Column("next_seq", sa.BigInteger(), nullable=False),
    # The first seq of the current history (the last save replaced all before it).
    sa.Column("base_seq", sa.BigInteger(), nullable=False),
    # How many messages at the start of the history are system messages.
    sa.Column("lead", sa.Integer(), nullable=False),
    # The session's tombstone: when its id was last deleted (migration 0003).
    sa.Column("deleted_ms", sa.BigInteger(), nullable=True),
    # The archive took writes while Redis was unreachable (write_through).
    sa.Column("detached", sa.Boolean(), nullable=False, server_default=sa.false()),
    # The version whose write last set the metadata (mirrors may arrive out of order).
    sa.Column("meta_version", sa.BigInteger(), nullable=False, server_default="0"),
    # The partition of the session's messages (migration 0004): the UTC month,
    # as YYYYMM, of the generation's creation when the row was first written.
    sa.Column("month", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("namespace", "session_id"),
    # list(): keyset pagination by last activity, per namespace and per user.
    sa.Index("ix_tieredstore_sessions_activity", "namespace", "updated_ms", "session_id"),
    sa.Index("ix_tieredstore_sessions_user", "namespace", "user_id", "updated_ms", "session_id"),
    # expiry scans (maintenance) and idle-archival queries.
    sa.Index("ix_tieredstore_sessions_expiry", "namespace", "expires_ms"),
    # retention: the sessions of one partition.
    sa.Index("ix_tieredstore_sessions_month", "month", "namespace"),
    # sessions whose Redis copy must be reconciled (write_through).
    sa.Index(
        "ix_tieredstore_sessions_detached",
        "namespace",
        postgresql_where=sa.text("detached"),
        sqlite_where=sa.text("detached"),
    ),
    # PostgreSQL: metadata containment (``metadata @> '{...}'``) for archival queries.
    sa.Index(
        "ix_tieredstore_sessions_metadata",
        "metadata",
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    ).ddl_if(dialect="postgresql"),
)

messages = sa.Table(
    MESSAGES,
    metadata,
    # Fixed-width columns first: no alignment padding between them (lean rows).
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("created_ms", sa.BigInteger(), nullable=False),
    # The session's ``month``: all of a session's rows are in one partition.
    sa.Column("month", sa.Integer(), nullable=False),
    sa.Column("namespace", IdType, nullable=False),
    sa.Column("session_id", IdType, nullable=False),
    sa.Column("kind", sa.String(1), nullable=False),
    sa.Column("role", sa.String(), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    # SQLite: the search text of every row. PostgreSQL: NULL (the text is read
    # from the payload) unless the payload escapes U+0000, which JSONB rejects.
    sa.Column("content_text", sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint("namespace", "session_id", "seq", "month"),
    # messages by time (archival, retention and analytics queries).
    sa.Index("ix_tieredstore_messages_created", "namespace", "created_ms"),
    # PostgreSQL: full-text search over each message's text (see tieredstore.query).
    sa.Index(
        FTS_INDEX,
        sa.text(
            f"to_tsvector('{DEFAULT_FTS_LANGUAGE}'::regconfig, "
            f"{MESSAGE_TEXT_FUNCTION}(payload, content_text))"
        ),
        postgresql_using="gin",
    ).ddl_if(dialect="postgresql"),
    # PostgreSQL: one partition per month (tieredstore.tiers.archive.partitions).
    postgresql_partition_by="RANGE (month)",
)


checkpoint_threads = sa.Table(
    CHECKPOINT_THREADS,
    metadata,
    sa.Column("namespace", IdType, nullable=False),
    sa.Column("thread_id", IdType, nullable=False),
    # The creation (unix ms) of the oldest generation whose rows are here.
    sa.Column("created_ms", sa.BigInteger(), nullable=False),
    sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    sa.Column("expires_ms", sa.BigInteger(), nullable=True),
    # The thread's tombstone: when it was last deleted. Copies of generations
    # created before it are refused.
    sa.Column("deleted_ms", sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint("namespace", "thread_id"),
    # retention: threads by last activity; expiry sweeps.
    sa.Index("ix_tieredstore_checkpoint_threads_activity", "namespace", "updated_ms"),
    sa.Index("ix_tieredstore_checkpoint_threads_expiry", "namespace", "expires_ms"),
)

checkpoints = sa.Table(
    CHECKPOINTS,
    metadata,
    sa.Column("namespace", IdType, nullable=False),
    sa.Column("thread_id", IdType, nullable=False),
    sa.Column("checkpoint_ns", IdType, nullable=False),
    sa.Column("checkpoint_id", IdType, nullable=False),
    sa.Column("parent_checkpoint_id", IdType, nullable=True),
    sa.Column("created_ms", sa.BigInteger(), nullable=False),
    # The serializer's type tag and bytes of the whole checkpoint, channel values included.
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    # list(): a thread's checkpoints newest first, per checkpoint namespace.
    sa.PrimaryKeyConstraint("namespace", "thread_id", "checkpoint_ns", "checkpoint_id"),
    # PostgreSQL: list(filter=...) as metadata containment.
    sa.Index(
        "ix_tieredstore_checkpoints_metadata",
        "metadata",
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    ).ddl_if(dialect="postgresql"),
)

checkpoint_writes = sa.Table(
    CHECKPOINT_WRITES,
    metadata,
    sa.Column("namespace", IdType, nullable=False),
    sa.Column("thread_id", IdType, nullable=False),
    sa.Column("checkpoint_ns", IdType, nullable=False),
    sa.Column("checkpoint_id", IdType, nullable=False),
    sa.Column("task_id", IdType, nullable=False),
    # LangGraph's index of the write in its task (negative for special channels).
    sa.Column("idx", sa.Integer(), nullable=False),
    sa.Column("channel", sa.String(), nullable=False),
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("value", sa.LargeBinary(), nullable=False),
    sa.Column("task_path", sa.String(), nullable=False),
    sa.PrimaryKeyConstraint(
        "namespace", "thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"
    ),
)

def normalize_url(url: str | sa.URL) -> sa.URL:
    """Parse ``url``; plain ``postgresql://``/``postgres://`` means psycopg 3.

    A URL SQLAlchemy cannot parse, or whose database it has no driver for,
    raises :class:`~tieredstore.errors.InvalidInput` (the password hidden).
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        shown = str(url).split("://", 1)[0] + "://…" if "://" in str(url) else repr(str(url))
        raise InvalidInput(
            f"not a database URL: {shown} (expected postgresql://… or sqlite:///…)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        parsed.get_dialect()
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise InvalidInput(
            f"no database driver for {parsed.render_as_string(hide_password=True)!r}: "
            f"{exc} (expected postgresql://… or sqlite:///…)"
        ) from None
    return parsed
