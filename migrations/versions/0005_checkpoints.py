"""LangGraph checkpoints: threads, checkpoints and pending writes.

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-15

Three new tables for :mod:`tieredstore.integrations.langgraph`; nothing
existing changes.

* ``tieredstore_checkpoint_threads``: one row per thread and namespace —
  the creation of the oldest generation archived, last activity, expiry,
  and the tombstone of the thread's last delete (``deleted_ms``), which
  refuses copies of generations created before it.
* ``tieredstore_checkpoints``: one row per checkpoint, keyed by
  ``(namespace, thread_id, checkpoint_ns, checkpoint_id)``: its parent, the
  serializer's type tag and bytes of the whole checkpoint, and its metadata
  as JSON (``JSONB`` with a ``jsonb_path_ops`` GIN index on PostgreSQL, for
  ``list(filter=...)``).
* ``tieredstore_checkpoint_writes``: one row per pending write, keyed by
  ``(..., checkpoint_id, task_id, idx)``.

Identifiers compare by code point (``COLLATE "C"`` on PostgreSQL), so
checkpoint ids sort the same in every tier.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose: a migration must not change when the package does.
_THREADS = "tieredstore_checkpoint_threads"
_CHECKPOINTS = "tieredstore_checkpoints"
_WRITES = "tieredstore_checkpoint_writes"


def _id() -> sa.types.TypeEngine[str]:
    return sa.String().with_variant(sa.String(collation="C"), "postgresql")


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        _THREADS,
        sa.Column("namespace", _id(), nullable=False),
        sa.Column("thread_id", _id(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=True),
        sa.Column("deleted_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("namespace", "thread_id", name=f"pk_{_THREADS}"),
    )
    op.create_index(f"ix_{_THREADS}_activity", _THREADS, ["namespace", "updated_ms"])
    op.create_index(f"ix_{_THREADS}_expiry", _THREADS, ["namespace", "expires_ms"])
    op.create_table(
        _CHECKPOINTS,
        sa.Column("namespace", _id(), nullable=False),
        sa.Column("thread_id", _id(), nullable=False),
        sa.Column("checkpoint_ns", _id(), nullable=False),
        sa.Column("checkpoint_id", _id(), nullable=False),
        sa.Column("parent_checkpoint_id", _id(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
        sa.Column(
            "metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint(
            "namespace", "thread_id", "checkpoint_ns", "checkpoint_id", name=f"pk_{_CHECKPOINTS}"
        ),
    )
    if pg:
        op.create_index(
            "ix_tieredstore_checkpoints_metadata",
            _CHECKPOINTS,
            ["metadata"],
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        )
    op.create_table(
        _WRITES,
        sa.Column("namespace", _id(), nullable=False),
        sa.Column("thread_id", _id(), nullable=False),
        sa.Column("checkpoint_ns", _id(), nullable=False),
        sa.Column("checkpoint_id", _id(), nullable=False),
        sa.Column("task_id", _id(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("task_path", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint(
            "namespace", "thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx",
            name=f"pk_{_WRITES}",
        ),
    )


def downgrade() -> None:
    op.drop_table(_WRITES)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_tieredstore_checkpoints_metadata", table_name=_CHECKPOINTS)
    op.drop_table(_CHECKPOINTS)
    op.drop_index(f"ix_{_THREADS}_expiry", table_name=_THREADS)
    op.drop_index(f"ix_{_THREADS}_activity", table_name=_THREADS)
    op.drop_table(_THREADS)
