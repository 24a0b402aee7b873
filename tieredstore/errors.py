"""Typed errors raised by every tieredstore store.

::

    TieredStoreError
    ├── SessionNotFound          the session does not exist (or has expired)
    ├── SessionExists            a session that must be new already exists (fork)
    ├── VersionConflict          expected_version did not match; nothing was written
    ├── LockTimeout              a session lock could not be acquired in time
    ├── StoreClosed              an adapter session was closed (also a RuntimeError)
    ├── InvalidInput             bad input, rejected before anything is written
    │   ├── InvalidSessionId     malformed session or user id
    │   ├── InvalidMessage       not a JSON object with a string ``role``
    │   ├── PayloadTooLarge      a message, call or metadata blob over its limit
    │   └── InvalidRecord        a line of an import file is bad (``.line``)
    │       └── RecordTooLarge   ... because it or its message is too large
    │                            (also a PayloadTooLarge)
    ├── ConfigurationError       the server refuses what the store asks (permissions,
    │                            an unknown command, cross-slot keys, a foreign key
    │                            of the wrong type): fix the set-up, do not retry
    └── BackendUnavailable       Redis / the database could not be reached or failed
        │                        for now: transient, retrying may succeed
        │                        (the driver's exception is ``__cause__``)
        ├── SchemaNotReady       the archive tables are missing or out of date
        └── CircuitOpen          the tier's circuit breaker is open: failed fast,
                                 without I/O (see :mod:`tieredstore.breaker`)

Drivers' exceptions never leak: each tier translates them at its boundary and
raises one of these ``from`` the original.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "CircuitOpen",
    "ConfigurationError",
    "InvalidInput",
    "InvalidMessage",
    "InvalidRecord",
    "InvalidSessionId",
    "LockTimeout",
    "PayloadTooLarge",
    "RecordTooLarge",
    "SchemaNotReady",
    "SessionExists",
    "SessionNotFound",
    "StoreClosed",
    "TieredStoreError",
    "VersionConflict",
]


class TieredStoreError(Exception):
    """Base class of every error raised by tieredstore."""


class SessionNotFound(TieredStoreError, KeyError):
    """The session does not exist in any tier, or it has expired."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        return f"session not found: {self.session_id!r}"


class SessionExists(TieredStoreError):
    """A session that must not exist yet (for example a fork target) exists.

    ``line`` is the line of an import file that tried to create it, if any.
    """

    def __init__(self, session_id: str, line: int | None = None) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}session already exists: {session_id!r}")
        self.session_id = session_id
        self.line = line


class VersionConflict(TieredStoreError):
    """``expected_version`` did not match the stored version; nothing was written."""

    def __init__(self, session_id: str, expected: int, actual: int) -> None:
        super().__init__(f"version conflict on {session_id!r}: expected {expected}, found {actual}")
        self.session_id = session_id
        self.expected = expected
        self.actual = actual


class LockTimeout(TieredStoreError):
    """The session lock could not be acquired within ``blocking_timeout``."""


class StoreClosed(TieredStoreError, RuntimeError):
    """The object was closed (with the store it owned) and serves no more calls."""


class InvalidInput(TieredStoreError, ValueError):
    """Input rejected by validation before anything was written."""


class InvalidSessionId(InvalidInput):
    """A session id or user id is empty, too long, or holds unsafe characters."""


class InvalidMessage(InvalidInput):
    """A message is not a JSON object with a string ``role``, or is not JSON-safe."""


class PayloadTooLarge(InvalidInput):
    """A message, a call, or a metadata object exceeds its configured limit."""


class InvalidRecord(InvalidInput):
    """A line of an import file is not a valid export record; nothing was imported.

    ``line`` is its number (from 1); the validator's own error, if one
    rejected it, is ``__cause__``.
    """

    def __init__(self, line: int, detail: str) -> None:
        super().__init__(f"line {line}: {detail}")
        self.line = line
        self.detail = detail


class RecordTooLarge(InvalidRecord, PayloadTooLarge):
    """An import line, or the message or metadata on it, is over its limit."""


class ConfigurationError(TieredStoreError):
    """A server refused the store's command for a reason retrying will not fix.

    Missing permissions (ACL ``NOPERM``, failed authentication), a disabled or
    renamed command, keys in different cluster slots, a key of this store's
    prefix holding another type, or a database error that is not about the
    connection. The driver's own exception is chained as ``__cause__``.
    """

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend} misconfigured: {detail}")
        self.backend = backend


class BackendUnavailable(TieredStoreError, ConnectionError):
    """A backing server (Redis, the database) could not be reached or failed.

    The driver's own exception is chained as ``__cause__``.
    """

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend} unavailable: {detail}")
        self.backend = backend


class SchemaNotReady(BackendUnavailable):
    """The archive tables are missing or older than this code: run ``tieredstore.migrate(url)``."""


class CircuitOpen(BackendUnavailable):
    """Recent calls to this tier failed, so this one failed fast without touching it.

    ``retry_after``: seconds until the breaker lets a probe through;
    ``last_error``: the failure that kept it open; ``opened_at``: when it
    opened (epoch seconds).
    """

    def __init__(
        self,
        backend: str,
        detail: str,
        *,
        retry_after: float,
        last_error: str | None,
        opened_at: float,
    ) -> None:
        super().__init__(backend, detail)
        self.retry_after = retry_after
        self.last_error = last_error
        self.opened_at = opened_at
