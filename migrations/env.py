"""Alembic environment for tieredstore's archive tables.

Runs programmatically (:func:`tieredstore.migrate` hands over a connection in
``config.attributes["connection"]``) or from the alembic CLI with a URL from
``-x url=...``, ``sqlalchemy.url`` or ``TIEREDSTORE_DATABASE_URL``.

Only tables named ``tieredstore_*`` are tieredstore's: autogenerate and
``alembic check`` ignore every other table, so the archive can share a database
with an application that has its own migrations. The revision is kept in
``tieredstore_alembic_version``, not in the application's ``alembic_version``.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from alembic import context

from tieredstore.schema import TABLE_PREFIX, VERSION_TABLE, metadata, normalize_url

config = context.config

# Serialises concurrent migrations on PostgreSQL (several workers starting at
# once); any constant works, this one spells "tsmigrat".
_PG_LOCK_KEY = 0x74736D6967726174


# The partitions of the messages table (PostgreSQL): made at run time, not by
# migrations, so not compared (the partitioned parent is).
_partitions: set[str] = set()


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Compare only tieredstore's own tables (and everything inside them), not partitions."""
    if type_ == "table":
        return name is not None and name.startswith(TABLE_PREFIX) and name not in _partitions
    return True


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Skip model objects declared for another dialect (``Index(...).ddl_if(dialect=...)``)."""
    ddl_if = getattr(obj, "_ddl_if", None)
    if reflected or ddl_if is None or ddl_if.dialect is None:
        return True
    dialects = (ddl_if.dialect,) if isinstance(ddl_if.dialect, str) else tuple(ddl_if.dialect)
    return context.get_context().dialect.name in dialects


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("TIEREDSTORE_DATABASE_URL")
    )
    if not url:
        raise RuntimeError(
            "no database given: call tieredstore.migrate(url), or set "
            "TIEREDSTORE_DATABASE_URL, or pass -x url=..."
        )
    return normalize_url(url).render_as_string(hide_password=False)


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        include_object=include_object,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: sa.Connection) -> None:
    _configure(
        connection=connection,
        # SQLite cannot ALTER most things; batch mode recreates the table.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            _partitions.update(
                connection.execute(
                    sa.text(
                        "SELECT c.relname FROM pg_class c JOIN pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE c.relispartition "
                        "AND n.nspname = current_schema()"
                    )
                ).scalars()
            )
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
