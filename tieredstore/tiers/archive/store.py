"""``ArchiveStore``: the sync shell of the archive tier (see :class:`ArchiveShared`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from tieredstore.base import BaseStore
from tieredstore.breaker import CircuitBreaker
from tieredstore.core import Batch, Order
from tieredstore.errors import InvalidInput
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.plans import Plan, run
from tieredstore.tiers.archive.engines import create_engine
from tieredstore.tiers.archive.partitions import PartitionRange
from tieredstore.tiers.archive.records import ArchiveCopy, PreparedCopies, Reconciled
from tieredstore.tiers.archive.retention import HOLD_KEY, DroppedMonth, Live, RetainBatch
from tieredstore.tiers.archive.shared import ArchiveShared
from tieredstore.tiers.transfer import DEFAULT_TOMBSTONE_TTL, HistoryPart
from tieredstore.timeouts import ArchiveTimeouts, db_failure

if TYPE_CHECKING:
    from tieredstore.tiers.redis import Fenced
    from tieredstore.tiers.transfer import Snapshot, WriteReceipt

T = TypeVar("T")


class ArchiveStore(ArchiveShared, BaseStore):
    """The durable store: sessions and messages in PostgreSQL or SQLite tables.

    Pass an :class:`sqlalchemy.Engine` (shared with the application; the store
    never disposes it) or a ``url`` (the store owns that engine and disposes it
    on :meth:`close`). ``namespace`` scopes every session; ``options`` are those
    of :class:`~tieredstore.BaseStore` (``default_ttl``, ``max_messages``,
    ``sliding_ttl``, ``limits``, ``clock``). Expired sessions read as missing and
    are removed by :meth:`purge_expired`.

    ``timeouts`` (:class:`~tieredstore.timeouts.ArchiveTimeouts`) bound the
    PostgreSQL connections of an engine built from ``url``, and every
    transaction on the client side; ``breaker`` (a
    :class:`~tieredstore.CircuitBreaker`, ``True`` for the defaults, ``False``
    for none) fails calls fast while the database is down.
    """

    def __init__(
        self,
        engine: sa.Engine | None = None,
        *,
        url: str | sa.URL | None = None,
        namespace: str = "default",
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        timeouts: ArchiveTimeouts | None = None,
        breaker: CircuitBreaker | bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if (engine is None) == (url is None):
            raise InvalidInput("ArchiveStore needs either an engine or a url")
        self._owns_engine = engine is None
        if engine is None:
            assert url is not None
            engine = create_engine(url, timeouts=timeouts)
        self.engine = engine
        roles = self._setup(engine, namespace, tombstone_ttl)
        self._setup_bounds(engine, breaker, timeouts)
        self._bulk_copy = self._pg
        self._engines = {
            role: engine.execution_options(**opts) if opts else engine
            for role, opts in roles.items()
        }
        self._targets = {"db": self, "clock": time}

    @classmethod
    def from_url(
        cls,
        url: str | sa.URL,
        *,
        engine_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ArchiveStore:
        """A store on its own engine for ``url`` (``postgresql://...`` or ``sqlite:///...``).

        ``engine_options`` (pool size, ...) and ``timeouts`` go to
        :func:`create_engine`; the store disposes the engine on :meth:`close`.
        """
        engine = create_engine(url, timeouts=kwargs.get("timeouts"), **(engine_options or {}))
        store = cls(engine, **kwargs)
        store._owns_engine = True
        return store

    # -- the I/O shell ------------------------------------------------------------

    def _in_transaction(self, work: Callable[[sa.Connection], T], role: str) -> T:
        with (
            self.breaker.guard(db_failure),
            self._engines[role].connect() as conn,
            self._bounded(conn),
            conn.begin(),
        ):
            return work(conn)

    def _drive(self, plan: Plan[T]) -> T:
        return run(plan, self._targets)

    def _close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # -- primitives ---------------------------------------------------------------

    def _save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> int:
        return self._drive(
            self._plan_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
            )
        )

    def _append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> int:
        return self._drive(
            self._plan_append(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    def _load(self, sid: str, last: int | None) -> list[Message]:
        return self._drive(self._plan_load(sid, last))

    def _get(self, sid: str, last: int | None) -> Session:
        return self._drive(self._plan_get(sid, last))

    def _count(self, sid: str) -> int:
        return self._drive(self._plan_count(sid))

    def _exists(self, sid: str) -> bool:
        return self._drive(self._plan_exists(sid))

    def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return self._drive(self._plan_merge_metadata(sid, updates))

    def _delete(self, sid: str) -> bool:
        return self._drive(self._plan_delete(sid))

    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page:
        return self._drive(self._plan_list(user_id, limit, cursor, order))

    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return self._drive(self._plan_fork(src, dst, ttl_ms=ttl_ms))

    # -- the tiered layer -----------------------------------------------------------

    def write_save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> WriteReceipt:
        """:meth:`save` on validated input, returning the full :class:`WriteReceipt`.

        ``detached`` marks a write taken while Redis is unreachable: the Redis
        copy is then stale until reconciled (see :meth:`reconcile`).
        """
        return self._drive(
            self._plan_write_save(
                sid,
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
                detached=detached,
            )
        )

    def write_append(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> WriteReceipt:
        """:meth:`append` on validated input, returning the full :class:`WriteReceipt`."""
        return self._drive(
            self._plan_write_append(
                sid, batch, ttl_ms=ttl_ms, expected_version=expected_version, detached=detached
            )
        )

    def write_merge_metadata(
        self, sid: str, updates: FrozenDict, *, detached: bool = False
    ) -> FrozenDict:
        """:meth:`merge_metadata` on validated input (``detached`` as for :meth:`write_save`)."""
        return self._drive(self._plan_merge_metadata(self._sid(sid), updates, detached))

    def delete_at(self, sid: str, *, floor_ms: int = 0, detached: bool = False) -> bool:
        """Delete the session, keeping its row as a tombstone no earlier than ``floor_ms``.

        Copies of any generation created before the tombstone are refused
        (:meth:`absorb_many`, :meth:`mirror`, :meth:`restore`), and a session
        written later is a new generation created at or after it. Tombstones
        are removed by :meth:`purge_expired` once ``tombstone_ttl`` has passed.
        """
        return self._drive(self._plan_delete(self._sid(sid), floor_ms, detached))

    def detached_sessions(self, limit: int = 1000) -> list[str]:
        """Sessions that took writes while Redis was unreachable, not yet reconciled."""
        return self._drive(self._plan_detached(limit))

    def reconcile(self, sid: str, fenced: Fenced | None) -> Reconciled:
        """Settle a detached session against its fenced Redis copy (``None``: none).

        See :class:`Reconciled` for what the caller does next with the Redis copy.
        """
        return self._drive(self._plan_reconcile(self._sid(sid), fenced))

    def list_keys(
        self,
        user_id: str | None,
        limit: int,
        position: tuple[int, str] | None,
        order: Order,
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` ``(updated_ms, session_id)`` of live sessions after ``position``.

        The keyset behind :meth:`list` (``position`` is a decoded cursor), for
        merging this tier's index with another's.
        """
        return self._drive(self._plan_list_keys(user_id, limit, position, order))

    def snapshot(
        self, session_id: str, last: int | None = None, /, *, refresh: bool = False
    ) -> Snapshot | None:
        """The live session with seqs and bookkeeping, or ``None``: what another tier copies.

        ``last`` keeps only the newest messages; ``refresh`` slides the TTL
        (as a read with ``sliding_ttl`` does).
        """
        return self._drive(self._plan_snapshot(session_id, last, refresh=refresh))

    def history_page(
        self, session_id: str, before: int | None, limit: int
    ) -> HistoryPart | None:
        """The newest ``limit`` messages of the current history (from its base
        seq) with seq below ``before``, as ``(seq, message)`` oldest first, with
        the generation; ``None`` if the session is missing or expired."""
        return self._drive(self._plan_history_page(session_id, before, limit))

    def mirror(
        self,
        session_id: str,
        batch: Batch,
        receipt: WriteReceipt,
        *,
        replace: bool,
        metadata: FrozenDict | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Apply a write that another tier made (``receipt`` says where it landed).

        ``replace`` marks a ``save`` (the history restarts at ``receipt.first_seq``).
        Idempotent and order-independent: messages land at their seqs, and the
        session's version, expiry and metadata change only for a newer write.
        Returns ``False`` when the write was stale (a newer incarnation of the
        session is stored) or left a gap (an append to a session this tier does
        not hold), so the caller can copy the whole session instead.
        """
        return self._drive(
            self._plan_mirror(
                session_id, batch, receipt, replace=replace, metadata=metadata, user_id=user_id
            )
        )

    def mirror_metadata(self, session_id: str, metadata: FrozenDict, receipt: WriteReceipt) -> bool:
        """Apply a metadata write made in another tier; ``False`` if this tier lacks
        that incarnation of the session (the write is then for the caller to copy)."""
        return self._drive(self._plan_mirror_metadata(session_id, metadata, receipt))

    def restore(self, snapshot: Snapshot) -> bool:
        """Copy a session from another tier into the archive (archival, write-back).

        Same rules as :meth:`mirror`: stored messages of the same incarnation
        at or after ``snapshot.base_seq`` are kept (older history the other
        tier trimmed), the snapshot's messages land at their seqs, and the
        bookkeeping changes only for a newer version. ``False`` if stale.
        """
        return self._drive(self._plan_restore(snapshot))

    def absorb_many(self, copies: Sequence[ArchiveCopy] | PreparedCopies) -> list[bool]:
        """Upsert sessions copied from another tier, all in one transaction (archival).

        Per session, as :meth:`restore`: messages land at their seqs and
        stored seqs are left alone (so absorbing the same copy twice changes
        nothing), rows below ``base_seq`` go (a save replaced them), and the
        bookkeeping changes only for a version at least as new. Sessions the
        archive does not hold yet are created in bulk (on PostgreSQL one
        ``INSERT`` for the rows and one binary ``COPY`` for the messages).
        ``copies`` may come from :meth:`prepare`. Returns, per copy, ``False``
        if the archive holds a newer incarnation.
        """
        return self._drive(self._plan_absorb_many(copies))

    # -- partitions and retention -----------------------------------------------------

    def partitions(self) -> list[PartitionRange]:
        """The monthly partitions of the messages table, oldest first (PostgreSQL; else empty)."""
        return self._drive(self._plan_partitions())

    def ensure_partitions(self, ahead: int = 3) -> list[str]:
        """Create (and analyse) partitions for this month and ``ahead`` more; the new names."""
        return self._drive(self._plan_ensure_ahead(ahead))

    def analyze(self) -> None:
        """``ANALYZE`` the archive's tables, the partitioned parent included (PostgreSQL)."""
        self._drive(self._plan_analyze())

    def drop_month(
        self,
        partition: PartitionRange,
        cutoff_ms: int,
        *,
        live: Live | None = None,
        hold_key: str = HOLD_KEY,
        dry_run: bool = False,
    ) -> DroppedMonth | None:
        """Drop ``partition`` whole if every session in it is past retention (see
        :mod:`tieredstore.tiers.archive.retention`); ``None`` if it must stay."""
        return self._drive(
            self._plan_drop_month(partition, cutoff_ms, live=live, hold_key=hold_key,
                                  dry_run=dry_run)
        )

    def retain_batch(
        self,
        cutoff_ms: int,
        *,
        batch_size: int = 500,
        after: tuple[int, str] | None = None,
        live: Live | None = None,
        hold_key: str = HOLD_KEY,
        dry_run: bool = False,
        skip: Sequence[tuple[int, int]] = (),
    ) -> RetainBatch:
        """Delete up to ``batch_size`` sessions whose last activity is before ``cutoff_ms``."""
        return self._drive(
            self._plan_retain_batch(cutoff_ms, batch_size=batch_size, after=after, live=live,
                                    hold_key=hold_key, dry_run=dry_run, skip=skip)
        )

    # -- maintenance ----------------------------------------------------------------

    def purge_expired(
        self,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
    ) -> int:
        """Delete this namespace's expired sessions, ``batch_size`` per transaction.

        Returns how many were deleted. Reads already treat them as missing;
        this reclaims their rows. See :meth:`purge_expired_batch` for ``live``.
        """
        return self._drive(
            self._plan_purge_expired(batch_size=batch_size, max_batches=max_batches, live=live)
        )

    def purge_expired_batch(
        self,
        batch_size: int,
        *,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
        now_ms: int | None = None,
    ) -> tuple[int, int]:
        """One transaction of :meth:`purge_expired`: ``(expired rows seen, deleted)``.

        ``live(ids)`` names the sessions another tier still holds alive, with
        their expiry there (``None``: none): those rows are not deleted but
        take that expiry, since the archive's copy of a session that lives on
        in Redis is only as old as its last archival. It runs inside the
        transaction and must not block for long.
        """
        return self._drive(self._plan_purge_expired_batch(batch_size, live=live, now_ms=now_ms))

    def trim_batch(
        self,
        *,
        max_messages: int | None,
        max_bytes: int | None,
        batch_size: int,
        after: str | None = None,
        dry_run: bool = False,
    ) -> tuple[list[str], int, int]:
        """Enforce the trim policy on up to ``batch_size`` sessions after ``after`` (by id).

        One transaction: ``(ids scanned, sessions trimmed, messages deleted)``;
        pass the last id scanned as ``after`` to continue, ``[]`` means the end.
        The policy is :func:`tieredstore.policy.plan_trim_bytes` over the stored
        history; the version is left alone (a retention step, not a write).
        """
        return self._drive(
            self._plan_trim_batch(
                max_messages=max_messages,
                max_bytes=max_bytes,
                batch_size=batch_size,
                after=after,
                dry_run=dry_run,
            )
        )

    def stats(self) -> dict[str, Any]:
        """Row counts for this namespace: sessions (live and expired), delete
        tombstones and messages; also the circuit breaker's state (``breaker``)."""
        return {**self._drive(self._plan_stats()), "breaker": self.breaker.stats()}
