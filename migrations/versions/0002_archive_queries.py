"""Archival queries: full-text search and metadata containment on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

PostgreSQL only (SQLite searches without indexes, see :mod:`tieredstore.query`):

* ``ix_tieredstore_messages_fts``: a GIN index on
  ``to_tsvector(<language>, content_text)``. ``<language>`` is a text-search
  configuration (regconfig), ``english`` unless ``TIEREDSTORE_FTS_LANGUAGE``
  (or ``alembic -x fts_language=...``) names another when this migration runs.
  The query API reads the configuration back from the index, so the two
  always match.
* ``ix_tieredstore_sessions_metadata``: a GIN (``jsonb_path_ops``) index on the
  session metadata for ``metadata @> '{...}'``.

Only indexes are added: every existing row stays as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from alembic import context, op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _language() -> str:
    language = (
        context.get_x_argument(as_dictionary=True).get("fts_language")
        or os.environ.get("TIEREDSTORE_FTS_LANGUAGE")
        or "english"
    )
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", language):
        raise ValueError(f"not a text-search configuration name: {language!r}")
    return language


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE INDEX ix_tieredstore_messages_fts ON tieredstore_messages "
        f"USING gin (to_tsvector('{_language()}'::regconfig, content_text))"
    )
    op.execute(
        "CREATE INDEX ix_tieredstore_sessions_metadata ON tieredstore_sessions "
        "USING gin (metadata jsonb_path_ops)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_tieredstore_sessions_metadata", table_name="tieredstore_sessions")
    op.drop_index("ix_tieredstore_messages_fts", table_name="tieredstore_messages")
