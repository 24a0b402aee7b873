"""Initial archive schema: sessions and their messages.

Revision ID: 0001
Revises:
Create Date: 2026-05-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose: a migration must not change when schema.py does.
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = sa.String().with_variant(sa.String(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tieredstore_sessions",
        sa.Column("namespace", _ID, nullable=False),
        sa.Column("session_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=True),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=True),
        sa.Column("ttl_ms", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.Column("base_seq", sa.BigInteger(), nullable=False),
        sa.Column("lead", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "session_id", name="pk_tieredstore_sessions"),
    )
    op.create_index(
        "ix_tieredstore_sessions_activity",
        "tieredstore_sessions",
        ["namespace", "updated_ms", "session_id"],
    )
    op.create_index(
        "ix_tieredstore_sessions_user",
        "tieredstore_sessions",
        ["namespace", "user_id", "updated_ms", "session_id"],
    )
    op.create_index(
        "ix_tieredstore_sessions_expiry", "tieredstore_sessions", ["namespace", "expires_ms"]
    )
    op.create_table(
        "tieredstore_messages",
        sa.Column("namespace", _ID, nullable=False),
        sa.Column("session_id", _ID, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("kind", sa.String(1), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("content_text", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("namespace", "session_id", "seq", name="pk_tieredstore_messages"),
        sa.ForeignKeyConstraint(
            ["namespace", "session_id"],
            ["tieredstore_sessions.namespace", "tieredstore_sessions.session_id"],
            name="fk_tieredstore_messages_tieredstore_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_tieredstore_messages_created", "tieredstore_messages", ["namespace", "created_ms"]
    )


def downgrade() -> None:
    op.drop_index("ix_tieredstore_messages_created", table_name="tieredstore_messages")
    op.drop_table("tieredstore_messages")
    op.drop_index("ix_tieredstore_sessions_expiry", table_name="tieredstore_sessions")
    op.drop_index("ix_tieredstore_sessions_user", table_name="tieredstore_sessions")
    op.drop_index("ix_tieredstore_sessions_activity", table_name="tieredstore_sessions")
    op.drop_table("tieredstore_sessions")
