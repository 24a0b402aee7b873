"""Which database errors mean misconfiguration rather than a transient failure.

The archive and the query layer raise :class:`~tieredstore.errors.ConfigurationError`
for these (missing permissions, failed authentication, a database that does
not exist, a read-only SQLite file, SQL the server does not support) and
:class:`~tieredstore.errors.BackendUnavailable` for the rest, which a retry
may cure. Missing tieredstore tables are neither: they stay
:class:`~tieredstore.errors.SchemaNotReady`, checked first by the callers.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["misconfigured", "schema_missing"]

# SQLSTATEs that mean the schema is missing or older than this code.
_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})
# PostgreSQL SQLSTATEs and classes (the first two characters) no retry changes:
# invalid authorization (28), syntax or access rule violation (42), invalid
# catalog or schema name (3D, 3F), feature not supported (0A).
_PG_CLASSES = frozenset({"28", "42", "3D", "3F", "0A"})
# SQLite result codes that say the same of a database file.
_SQLITE_NAMES = ("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH", "SQLITE_NOTADB")
# A refused PostgreSQL connection carries no SQLSTATE, only the server's message.
_PG_CONNECT_REFUSALS = (
    "does not exist",  # database or role
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
)


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return state if isinstance(state, str) else None


def schema_missing(exc: BaseException, detail: str) -> bool:
    """Whether ``exc`` (its first line ``detail``) says the tieredstore tables are
    missing or out of date: run the migrations."""
    return isinstance(exc, sa.exc.DBAPIError) and (
        _sqlstate(exc) in _SCHEMA_SQLSTATES
        or "no such table: tieredstore_" in detail
        or "no such column" in detail
    )


def misconfigured(exc: BaseException) -> bool:
    """Whether ``exc`` (not a missing-schema error) is a setup problem, not an outage."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    state = _sqlstate(exc)
    if state is not None and len(state) == 5:
        return state[:2] in _PG_CLASSES
    name = getattr(exc.orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return name.startswith(_SQLITE_NAMES)
    text = str(exc.orig)
    return "FATAL:" in text and any(refusal in text for refusal in _PG_CONNECT_REFUSALS)
