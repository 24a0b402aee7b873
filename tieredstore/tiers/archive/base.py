""":class:`ArchiveBase`: what every plan of the archive tier builds on.

Setup (dialect, engine roles, the io bound), the transaction loop with
its retries and error translation (:meth:`ArchiveBase._transaction`),
and the row primitives several plans share (lock, renew, insert messages).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from tieredstore.base import StoreCore
from tieredstore.breaker import CircuitBreaker, resolve_breaker
from tieredstore.core import Batch, check_session_id, to_ms
from tieredstore.errors import BackendUnavailable, ConfigurationError, InvalidInput, SchemaNotReady
from tieredstore.model import EMPTY_METADATA
from tieredstore.plans import Op, Plan
from tieredstore.schema import sessions as SESSIONS
from tieredstore.tiers.archive.engines import _SQLITE_BEGIN, _install_sqlite_hooks
from tieredstore.tiers.archive.partitions import (
    PartitionRange,
    covering,
    ensure,
    missing_partition,
    month_of,
    ranges,
)
from tieredstore.tiers.archive.rows import _arrays, _content_text, _no_nul
from tieredstore.tiers.archive.statements import (
    _DELETE_MESSAGES,
    _INSERT_MESSAGES,
    _INSERT_MESSAGES_PG,
    _INSERT_NEW_MESSAGES_PG,
    _INSERT_NEW_MESSAGES_SQLITE,
    _LOCK_ROW,
    _S,
    _SESSION_MONTH,
    _UPDATE_ROW,
)
from tieredstore.tiers.sql_errors import misconfigured, schema_missing
from tieredstore.tiers.transfer import tombstone_ms
from tieredstore.timeouts import IO_OPTION, WATCHDOG, ArchiveTimeouts

T = TypeVar("T")


_MAX_ATTEMPTS = 8
# SQLSTATEs worth retrying the whole transaction for: serialization failure, deadlock.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})


class _Retry(Exception):
    """Raised inside a transaction to run it again (a concurrent create won a race)."""


class _NeedPartition(Exception):
    """Raised inside a transaction whose rows need a partition that does not exist yet."""

    def __init__(self, month: int) -> None:
        super().__init__(month)
        self.month = month


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


class ArchiveBase(StoreCore):
    """Setup, transactions and row primitives: the base of the archive's plan mixins."""

    tier = "archive"
    namespace: str
    tombstone_ms: int
    _pg: bool
    _bulk_copy: bool
    _url: sa.URL
    _create_row: Any
    #: Partitions known to exist (PostgreSQL), so a write checks the catalog once.
    _partitions: tuple[PartitionRange, ...] = ()

    def _setup(
        self, engine: sa.Engine, namespace: str, tombstone_ttl: float
    ) -> dict[str, dict[str, Any]]:
        """Check the dialect and prepare ``engine``; the execution options of each role."""
        self.namespace = check_session_id(namespace, self.limits, what="namespace")
        self.tombstone_ms = tombstone_ms(tombstone_ttl)
        self._url = engine.url
        dialect = engine.dialect.name
        self._pg = dialect == "postgresql"
        roles: dict[str, dict[str, Any]]
        if self._pg:
            insert: Any = postgresql.insert
            # One statement needs no BEGIN/COMMIT round trips; several
            # statements that must agree read one snapshot.
            roles = {
                "single": {"isolation_level": "AUTOCOMMIT"},
                "reader": {"isolation_level": "REPEATABLE READ"},
                "writer": {},
            }
        elif dialect == "sqlite":
            _install_sqlite_hooks(engine)
            insert = sqlite.insert
            roles = {"single": {}, "reader": {}, "writer": {_SQLITE_BEGIN: "IMMEDIATE"}}
        else:
            raise InvalidInput(f"ArchiveStore supports PostgreSQL and SQLite, not {dialect!r}")
        self._create_row = insert(SESSIONS).on_conflict_do_nothing().returning(_S.version)
        return roles

    def _setup_bounds(
        self, engine: sa.Engine, breaker: CircuitBreaker | bool, timeouts: ArchiveTimeouts | None
    ) -> None:
        """The circuit breaker, and the client-side bound of one transaction (PostgreSQL)."""
        self.breaker = resolve_breaker(breaker, "database")
        io = engine.get_execution_options().get(IO_OPTION, ...)
        if io is ...:  # a caller's own engine: these (or the default) timeouts' bound
            io = (timeouts or ArchiveTimeouts()).io_bound()
        self._io_timeout: float | None = io if self._pg else None

    def _bounded(self, conn: sa.Connection | None) -> contextlib.AbstractContextManager[Any]:
        """While inside, a server that stops answering gets its socket shut down."""
        io = self._io_timeout
        if io is None or conn is None:
            return contextlib.nullcontext()
        return WATCHDOG.watch(
            conn.connection.driver_connection.fileno(),  # type: ignore[union-attr]
            io,
            lambda: BackendUnavailable(
                "database",
                f"{self._url.render_as_string(hide_password=True)}: no reply within {io:g} s "
                "(io timeout); connection closed",
            ),
        )

    def _lock_scope(self) -> str:
        # Sync and async stores on one database share their process-local locks.
        url = self._url.set(drivername=self._url.get_backend_name())
        return repr(("archive", url.render_as_string(hide_password=True), self.namespace))

    # -- plumbing -------------------------------------------------------------

    def _now_ms(self) -> int:
        return to_ms(self.clock())

    def _params(self, sid: str, now: int | None = None, **more: Any) -> dict[str, Any]:
        params = {"ns": self.namespace, "sid": sid, **more}
        if now is not None:
            params["now"] = now
        return params

    def _transaction(
        self, work: Callable[[sa.Connection], T], role: str, *, read: bool = False
    ) -> Plan[T]:
        """Run ``work`` in one transaction of ``role``, retrying lost races and deadlocks.

        A ``read`` is also retried once on a fresh
        connection when its pooled one turns out dead (a database restart).
        Database errors leave as :class:`BackendUnavailable` (``from`` the
        driver's error); our own errors (``VersionConflict``...) pass through.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                result: T = yield Op("db", "_in_transaction", (work, role))
                return result
            except _Retry:
                if attempt >= _MAX_ATTEMPTS:
                    raise BackendUnavailable(
                        "database", "gave up after repeated concurrent-write conflicts"
                    ) from None
            except _NeedPartition as need:
                if attempt >= _MAX_ATTEMPTS:
                    raise BackendUnavailable(
                        "database", f"no partition for month {need.month} could be made"
                    ) from None
                yield from self._plan_ensure_months([need.month], refresh=True)
            except sa.exc.DBAPIError as exc:
                if read and exc.connection_invalidated and attempt == 1:
                    continue
                month = missing_partition(exc) if self._pg else None
                if month is not None and attempt < _MAX_ATTEMPTS:
                    yield from self._plan_ensure_months([month], refresh=True)
                    continue
                if attempt < _MAX_ATTEMPTS and self._retryable(exc):
                    yield Op("clock", "sleep", (0.001 * attempt,))
                    continue
                raise self._translate(exc) from exc
            except sa.exc.SQLAlchemyError as exc:
                raise self._translate(exc) from exc

    def _plan_ensure_months(
        self, months: Iterable[int], *, refresh: bool = False
    ) -> Plan[list[str]]:
        """Make sure a partition holds each of ``months`` (PostgreSQL); the ones created.

        Known partitions are cached, so this is free for months seen before;
        ``refresh`` (a write found none) reads the catalog again.
        """
        if not self._pg:
            return []
        months = list(months)
        if not refresh and all(covering(self._partitions, m) is not None for m in months):
            return []

        def work(conn: sa.Connection) -> tuple[list[str], list[PartitionRange]]:
            created = ensure(conn, months)
            return created, ranges(conn)

        try:
            created, known = yield Op("db", "_in_transaction", (work, "single"))
        except sa.exc.SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        self._partitions = tuple(known)
        return list(created)

    def _retryable(self, exc: sa.exc.DBAPIError) -> bool:
        if exc.connection_invalidated:
            return False
        if _sqlstate(exc) in _RETRY_SQLSTATES:
            return True
        return not self._pg and "database is locked" in str(exc.orig)

    def _translate(self, exc: sa.exc.SQLAlchemyError) -> BackendUnavailable | ConfigurationError:
        where = self._url.render_as_string(hide_password=True)
        orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        text = str(orig).strip()
        detail = text.splitlines()[0] if text else type(orig).__name__
        if schema_missing(exc, detail):
            return SchemaNotReady(
                "database",
                f"the tieredstore tables in {where} are missing or out of date; "
                f"run tieredstore.migrate(url) first ({detail})",
            )
        if misconfigured(exc):
            return ConfigurationError("database", f"{where}: {detail}")
        return BackendUnavailable("database", f"{where}: {detail}")

    @staticmethod
    def _is_live(row: Any, now_ms: int) -> bool:
        return row is not None and (row.expires_ms is None or row.expires_ms > now_ms)

    @staticmethod
    def _born(row: Any, now_ms: int) -> int:
        """The created time of a new generation: never before the id's tombstone."""
        if row is not None and row.deleted_ms is not None and row.deleted_ms > now_ms:
            return int(row.deleted_ms)
        return now_ms

    def _lock_row(self, conn: sa.Connection, sid: str) -> Any:
        return conn.execute(_LOCK_ROW, self._params(sid)).first()

    def _insert_messages(
        self,
        conn: sa.Connection,
        sid: str,
        batch: Batch,
        keep: Sequence[int],
        seqs: Sequence[int],
        created_ms: int,
        *,
        skip_existing: bool = False,
    ) -> int:
        """Insert ``batch.messages[keep[j]]`` as seq ``seqs[j]``; return how many were new.

        ``skip_existing`` leaves rows whose seq is already stored alone (a seq
        names one message for life, so they hold the same message).
        """
        if not keep:
            return 0
        if self._pg:
            stmt = _INSERT_NEW_MESSAGES_PG if skip_existing else _INSERT_MESSAGES_PG
            params = self._params(sid, created_ms, **_arrays(batch, keep, seqs))
            return int(conn.execute(stmt, params).rowcount)
        ns, messages, payloads, kinds = self.namespace, batch.messages, batch.payloads, batch.kinds
        month = conn.execute(_SESSION_MONTH, self._params(sid)).scalar_one()
        rows = []
        for i, seq in zip(keep, seqs, strict=True):
            message = messages[i]
            rows.append(
                {
                    "namespace": ns,
                    "session_id": sid,
                    "seq": seq,
                    "month": month,
                    "created_ms": created_ms,
                    "role": _no_nul(message["role"]),
                    "kind": kinds[i],
                    "payload": payloads[i],
                    "content_text": _content_text(message),
                }
            )
        insert = _INSERT_NEW_MESSAGES_SQLITE if skip_existing else _INSERT_MESSAGES
        return int(conn.execute(insert, rows).rowcount)

    def _renew(self, conn: sa.Connection, sid: str, row: Any, values: dict[str, Any]) -> None:
        """Make ``sid`` a brand-new session: replace its stale row, or insert one.

        An insert that loses a race with a concurrent creator retries the
        transaction, which then finds the row.
        """
        if row is None:
            created = conn.execute(
                self._create_row, {"namespace": self.namespace, "session_id": sid, **values}
            ).first()
            if created is None:
                raise _Retry
            return
        conn.execute(_DELETE_MESSAGES, self._params(sid))
        conn.execute(_UPDATE_ROW, self._params(sid, **values))

    @staticmethod
    def _new_values(
        *,
        created_ms: int,
        updated_ms: int,
        ttl_ms: int | None,
        expires_ms: int | None,
        version: int = 1,
        count: int,
        next_seq: int,
        base_seq: int = 0,
        lead: int,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        detached: bool = False,
    ) -> dict[str, Any]:
        return {
            "detached": detached,
            "meta_version": version,
            "user_id": user_id,
            "metadata": metadata if metadata is not None else EMPTY_METADATA,
            "created_ms": created_ms,
            "month": month_of(created_ms),
            "updated_ms": updated_ms,
            "expires_ms": expires_ms,
            "ttl_ms": ttl_ms,
            "version": version,
            "message_count": count,
            "next_seq": next_seq,
            "base_seq": base_seq,
            "lead": lead,
        }
