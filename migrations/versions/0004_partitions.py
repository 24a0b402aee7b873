"""Monthly partitions, lean message rows, retention by month.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

* ``tieredstore_sessions.month`` (``YYYYMM``, UTC): the month a session's
  generation was created when its row was first written, indexed with the
  namespace. Every message row carries its session's month.
* PostgreSQL: ``tieredstore_messages`` becomes a table partitioned by range
  of ``month``, one partition a month (``tieredstore_messages_m<YYYYMM>``),
  so all of a session's messages are in one partition and retention drops
  whole months. The primary key gains ``month`` (a partitioned table's keys
  must hold its partition key); the foreign key to the sessions table goes
  (the store deletes a session's messages with it, and a drop of a month
  would otherwise cascade row by row).
* Lean rows on PostgreSQL: the search index reads each message's text out
  of its payload through the function ``tieredstore_message_text(payload,
  content_text)``, so ``content_text`` holds the text only for the rare
  payload that escapes U+0000 (JSONB rejects it) and is empty otherwise (an
  empty string costs a byte, a NULL the row's null bitmap). SQLite keeps
  the text in every row.

The migration copies every message row into the new table in one pass,
checks that the counts agree before the old table is dropped, builds the
indexes, and analyses the result (a planner without statistics picks the
wrong index). It takes in the order of a minute per few million messages;
the text-search configuration of the old index is kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose: a migration must not change when the package does.
_SESSIONS = "tieredstore_sessions"
_MESSAGES = "tieredstore_messages"
_OLD = "tieredstore_messages_0003"
_FTS = "ix_tieredstore_messages_fts"
_NUL_ESCAPE = r"'\x5c7530303030'::bytea"  # the bytes of the JSON escape \u0000
# The UTC month of created_ms as YYYYMM, years clamped to 1..9999 (as the package does).
_PG_MONTH = (
    "CAST(to_char(to_timestamp(LEAST(GREATEST(created_ms, -62135596800000), "
    "253402300799999) / 1000.0) AT TIME ZONE 'UTC', 'YYYYMM') AS integer)"
)
_SQLITE_MONTH = (
    "CAST(strftime('%Y%m', MIN(MAX(created_ms, -62135596800000), 253402300799999) / 1000.0, "
    "'unixepoch') AS INTEGER)"
)
_TEXT_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tieredstore_message_text(payload bytea, stored text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
  WHEN position({_NUL_ESCAPE} IN payload) > 0 THEN stored
  ELSE (
    SELECT CASE jsonb_typeof(c)
      WHEN 'string' THEN c #>> '{{}}'
      WHEN 'array' THEN (
        SELECT string_agg(p.part ->> 'text', E'\\n' ORDER BY p.n)
        FROM jsonb_array_elements(c) WITH ORDINALITY AS p(part, n)
        WHERE jsonb_typeof(p.part) = 'object' AND jsonb_typeof(p.part -> 'text') = 'string')
    END
    FROM (SELECT convert_from(payload, 'UTF8')::jsonb -> 'content' AS c) AS j)
END
$$
"""


def _language(bind: sa.Connection) -> str:
    definition = bind.execute(
        sa.text("SELECT pg_get_indexdef(to_regclass(:name))"), {"name": _FTS}
    ).scalar()
    found = re.search(r"to_tsvector\('([^']+)'::regconfig", definition or "")
    return found.group(1) if found else "english"


def _next(month: int) -> int:
    year, mm = divmod(month, 100)
    return (year + 1) * 100 + 1 if mm >= 12 else month + 1


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column(_SESSIONS, sa.Column("month", sa.Integer(), nullable=True))
    if bind.dialect.name != "postgresql":
        _upgrade_sqlite()
        return
    language = _language(bind)
    op.execute(f"UPDATE {_SESSIONS} SET month = {_PG_MONTH}")
    op.alter_column(_SESSIONS, "month", nullable=False)
    op.create_index("ix_tieredstore_sessions_month", _SESSIONS, ["month", "namespace"])
    op.execute(_TEXT_FUNCTION)

    op.rename_table(_MESSAGES, _OLD)
    op.drop_constraint("fk_tieredstore_messages_tieredstore_sessions", _OLD, type_="foreignkey")
    op.execute(f"ALTER TABLE {_OLD} RENAME CONSTRAINT pk_tieredstore_messages TO pk_{_OLD}")
    op.drop_index(_FTS, table_name=_OLD)
    op.drop_index("ix_tieredstore_messages_created", table_name=_OLD)
    # fixed-width columns first, so no row pays alignment padding between them
    op.execute(
        f"CREATE TABLE {_MESSAGES} ("
        "seq BIGINT NOT NULL, created_ms BIGINT NOT NULL, month INTEGER NOT NULL, "
        'namespace VARCHAR COLLATE "C" NOT NULL, session_id VARCHAR COLLATE "C" NOT NULL, '
        "kind VARCHAR(1) NOT NULL, role VARCHAR NOT NULL, payload BYTEA NOT NULL, "
        "content_text TEXT) PARTITION BY RANGE (month)"
    )
    months = bind.execute(
        sa.text(
            f"SELECT DISTINCT s.month FROM {_SESSIONS} s WHERE EXISTS (SELECT 1 FROM {_OLD} m "
            "WHERE m.namespace = s.namespace AND m.session_id = s.session_id)"
        )
    ).scalars()
    now_month = bind.execute(sa.text("SELECT CAST(to_char(now() AT TIME ZONE 'UTC', 'YYYYMM') "
                                     "AS integer)")).scalar_one()
    wanted = set(months)
    month = now_month
    for _ in range(4):  # this month and three ahead, as the worker keeps them
        wanted.add(month)
        month = _next(month)
    for month in sorted(wanted):
        op.execute(
            f"CREATE TABLE {_MESSAGES}_m{month:06d} PARTITION OF {_MESSAGES} "
            f"FOR VALUES FROM ({month}) TO ({_next(month)})"
        )
    copied = bind.execute(
        sa.text(
            f"INSERT INTO {_MESSAGES} (namespace, session_id, seq, month, created_ms, role, "
            "kind, payload, content_text) "
            "SELECT m.namespace, m.session_id, m.seq, s.month, m.created_ms, m.role, m.kind, "
            f"m.payload, CASE WHEN position({_NUL_ESCAPE} IN m.payload) > 0 "
            f"THEN m.content_text ELSE '' END FROM {_OLD} m JOIN {_SESSIONS} s "
            "ON s.namespace = m.namespace AND s.session_id = m.session_id"
        )
    ).rowcount
    before = bind.execute(sa.text(f"SELECT count(*) FROM {_OLD}")).scalar_one()
    if copied != before:
        raise RuntimeError(
            f"{_MESSAGES}: copied {copied} of {before} rows (messages without a session?); "
            "nothing was changed"
        )
    op.drop_table(_OLD)
    op.create_primary_key(
        "pk_tieredstore_messages", _MESSAGES, ["namespace", "session_id", "seq", "month"]
    )
    op.create_index("ix_tieredstore_messages_created", _MESSAGES, ["namespace", "created_ms"])
    op.execute(
        f"CREATE INDEX {_FTS} ON {_MESSAGES} USING gin (to_tsvector('{language}'::regconfig, "
        "tieredstore_message_text(payload, content_text)))"
    )
    op.execute(f"ANALYZE {_SESSIONS}")
    op.execute(f"ANALYZE {_MESSAGES}")


def _upgrade_sqlite() -> None:
    op.execute(f"UPDATE {_SESSIONS} SET month = {_SQLITE_MONTH}")
    with op.batch_alter_table(_SESSIONS) as batch:
        batch.alter_column("month", existing_type=sa.Integer(), nullable=False)
        batch.create_index("ix_tieredstore_sessions_month", ["month", "namespace"])
    op.add_column(_MESSAGES, sa.Column("month", sa.Integer(), nullable=True))
    op.execute(
        f"UPDATE {_MESSAGES} SET month = (SELECT s.month FROM {_SESSIONS} s "
        f"WHERE s.namespace = {_MESSAGES}.namespace AND s.session_id = {_MESSAGES}.session_id)"
    )
    with op.batch_alter_table(_MESSAGES, recreate="always") as batch:
        batch.drop_constraint("fk_tieredstore_messages_tieredstore_sessions", type_="foreignkey")
        batch.drop_constraint("pk_tieredstore_messages", type_="primary")
        batch.alter_column("month", existing_type=sa.Integer(), nullable=False)
        batch.create_primary_key(
            "pk_tieredstore_messages", ["namespace", "session_id", "seq", "month"]
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table(_MESSAGES, recreate="always") as batch:
            batch.drop_constraint("pk_tieredstore_messages", type_="primary")
            batch.drop_column("month")
            batch.create_primary_key("pk_tieredstore_messages", ["namespace", "session_id", "seq"])
            batch.create_foreign_key(
                "fk_tieredstore_messages_tieredstore_sessions", _SESSIONS,
                ["namespace", "session_id"], ["namespace", "session_id"], ondelete="CASCADE",
            )
        with op.batch_alter_table(_SESSIONS) as batch:
            batch.drop_index("ix_tieredstore_sessions_month")
            batch.drop_column("month")
        return
    language = _language(bind)
    op.rename_table(_MESSAGES, _OLD)
    op.execute(f"ALTER TABLE {_OLD} RENAME CONSTRAINT pk_tieredstore_messages TO pk_{_OLD}")
    op.drop_index(_FTS, table_name=_OLD)
    op.drop_index("ix_tieredstore_messages_created", table_name=_OLD)
    op.execute(
        f"CREATE TABLE {_MESSAGES} ("
        'namespace VARCHAR COLLATE "C" NOT NULL, session_id VARCHAR COLLATE "C" NOT NULL, '
        "seq BIGINT NOT NULL, created_ms BIGINT NOT NULL, role VARCHAR NOT NULL, "
        "kind VARCHAR(1) NOT NULL, payload BYTEA NOT NULL, content_text TEXT)"
    )
    op.execute(
        f"INSERT INTO {_MESSAGES} SELECT namespace, session_id, seq, created_ms, role, kind, "
        f"payload, tieredstore_message_text(payload, content_text) FROM {_OLD}"
    )
    op.drop_table(_OLD)
    op.create_primary_key("pk_tieredstore_messages", _MESSAGES, ["namespace", "session_id", "seq"])
    op.create_foreign_key(
        "fk_tieredstore_messages_tieredstore_sessions", _MESSAGES, _SESSIONS,
        ["namespace", "session_id"], ["namespace", "session_id"], ondelete="CASCADE",
    )
    op.create_index("ix_tieredstore_messages_created", _MESSAGES, ["namespace", "created_ms"])
    op.execute(
        f"CREATE INDEX {_FTS} ON {_MESSAGES} "
        f"USING gin (to_tsvector('{language}'::regconfig, content_text))"
    )
    op.execute("DROP FUNCTION tieredstore_message_text(bytea, text)")
    op.drop_index("ix_tieredstore_sessions_month", table_name=_SESSIONS)
    op.drop_column(_SESSIONS, "month")
    op.execute(f"ANALYZE {_MESSAGES}")
