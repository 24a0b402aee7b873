"""Session generations across tiers: delete tombstones and detached sessions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

* ``deleted_ms``: when the session id was last deleted (its tombstone). A
  copy of any generation created before it (an archival or a mirror still in
  flight when the delete ran) is refused, and a new generation is created at
  or after it. While the row stands for no live generation (``version = 0``,
  ``expires_ms = deleted_ms``) it is a pure tombstone, which ``expire``
  removes once the tombstone TTL has passed.
* ``detached``: the archive accepted a write while Redis was unreachable
  (``durability="write_through"``): the Redis copy, if any, is stale until
  reconciled. A partial index finds such sessions.
* ``meta_version``: the version of the write that last set the metadata, so
  a metadata write mirrored after a later append still lands.

Existing rows keep their data: ``deleted_ms`` starts NULL, ``detached``
false, ``meta_version`` 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tieredstore_sessions") as batch:
        batch.add_column(sa.Column("deleted_ms", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("detached", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("meta_version", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_index(
        "ix_tieredstore_sessions_detached",
        "tieredstore_sessions",
        ["namespace"],
        postgresql_where=sa.text("detached"),
        sqlite_where=sa.text("detached"),
    )


def downgrade() -> None:
    op.drop_index("ix_tieredstore_sessions_detached", table_name="tieredstore_sessions")
    with op.batch_alter_table("tieredstore_sessions") as batch:
        batch.drop_column("meta_version")
        batch.drop_column("detached")
        batch.drop_column("deleted_ms")
