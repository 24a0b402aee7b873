"""Plans of retention: dropping whole months, deleting the rest by batch, partitions ahead.

A session is past retention when its last activity (``updated_ms``) is
before the cutoff. A session on legal hold (``metadata[hold_key] is True``)
is never deleted, nor one another tier still holds alive (``live``, the
Redis tier in practice: the archive's copy is only as recent as its last
archival). Sessions are deleted whole, row and messages together, so no
session's counters ever disagree with its rows; a delete tombstone
(``version = 0``) is left to ``expire``.

On PostgreSQL a partition whose sessions are all of this namespace and all
past retention, with none held or alive elsewhere, is dropped at once
(:meth:`ArchiveRetention._plan_drop_month`); everything else past
retention goes by batches (:meth:`ArchiveRetention._plan_retain_batch`).
A partition holding a held session stays, its other sessions deleted by
batch, until the hold is lifted and the session too is past retention.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tieredstore.core import check_limit
from tieredstore.errors import InvalidInput
from tieredstore.plans import Plan
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import sessions as SESSIONS
from tieredstore.tiers.archive.base import ArchiveBase
from tieredstore.tiers.archive.partitions import (
    PartitionRange,
    analyze,
    month_start_ms,
    months_ahead,
    ranges,
)
from tieredstore.tiers.archive.rows import _frozen
from tieredstore.tiers.archive.statements import _M, _NS, _S

#: The metadata key whose value ``true`` puts a session on legal hold.
HOLD_KEY = "legal_hold"
#: How long a drop waits for the messages table's lock before it gives up (and
#: leaves the month to a later run) rather than stall every reader behind it.
DROP_LOCK_TIMEOUT_MS = 2000

Live = Callable[[list[str]], Collection[str]]
"""``live(ids)``: those of ``ids`` another tier holds alive (they are kept)."""

_CUTOFF: sa.BindParameter[int] = sa.bindparam("cutoff")
_IDS: sa.BindParameter[list[str]] = sa.bindparam("ids", expanding=True)
_PAST = (
    sa.select(_S.session_id, _S.updated_ms, _S.month, _S["metadata"])
    .where(
        _S.namespace == _NS,
        _S.version > 0,
        _S.updated_ms < _CUTOFF,
        sa.tuple_(_S.updated_ms, _S.session_id)
        > sa.tuple_(sa.bindparam("after_ms"), sa.bindparam("after_sid")),
    )
    .order_by(_S.updated_ms, _S.session_id)
    .limit(sa.bindparam("last"))
    .with_for_update(skip_locked=True)
)
_DELETE_MESSAGES_OF = sa.delete(MESSAGES).where(
    _M.namespace == _NS,
    _M.session_id.in_(_IDS),
    _M.month.in_(sa.bindparam("months", expanding=True)),
)
_DELETE_SESSIONS_OF = sa.delete(SESSIONS).where(
    _S.namespace == _NS, _S.session_id.in_(_IDS), _S.version > 0
)
# A month's sessions (every namespace's), deleted: the drop keeps this only if
# every one of them may go, and rolls it back otherwise. The hold is tested by
# the server: a month's metadata never travels to the client.
_DELETE_MONTH_SESSIONS = sa.text(
    f"DELETE FROM {SESSIONS.name} WHERE month >= :low AND month < :high AND version > 0 "
    "RETURNING namespace, session_id, updated_ms, message_count, "
    "coalesce(metadata -> CAST(:hold_key AS text) = 'true'::jsonb, false) AS held"
)


class _Keep(Exception):
    """Raised inside a drop's transaction to roll it back: the month must stay."""


@dataclass(frozen=True, slots=True)
class RetainBatch:
    """One batch of retention: what was (or, in a dry run, would be) deleted."""

    seen: int
    sessions: int
    messages: int
    held: int
    live: int
    after: tuple[int, str] | None


@dataclass(frozen=True, slots=True)
class DroppedMonth:
    """A partition dropped whole (or, in a dry run, that would be)."""

    name: str
    sessions: int
    messages: int


def _held(metadata: Any, hold_key: str) -> bool:
    return _frozen(metadata).get(hold_key) is True


class ArchiveRetention(ArchiveBase):
    """Retention and partition upkeep: the plans behind ``retain`` and ``partitions``."""

    def _plan_partitions(self) -> Plan[list[PartitionRange]]:
        """The partitions of the messages table, oldest first (empty on SQLite)."""
        if not self._pg:
            return []
        return (yield from self._transaction(ranges, "single", read=True))

    def _plan_ensure_ahead(self, ahead: int) -> Plan[list[str]]:
        """Partitions for this month and ``ahead`` more; the names of those created."""
        if isinstance(ahead, bool) or not isinstance(ahead, int) or not 0 <= ahead <= 120:
            raise InvalidInput(f"ahead must be an integer between 0 and 120, got {ahead!r}")
        return (yield from self._plan_ensure_months(months_ahead(self._now_ms(), ahead)))

    def _plan_analyze(self) -> Plan[None]:
        """``ANALYZE`` the partitioned tables (autovacuum analyses partitions, never the parent)."""
        if not self._pg:
            return None

        def work(conn: sa.Connection) -> None:
            analyze(conn, SESSIONS.name)
            analyze(conn, MESSAGES.name)

        return (yield from self._transaction(work, "single"))

    def _plan_drop_month(
        self,
        partition: PartitionRange,
        cutoff_ms: int,
        *,
        live: Live | None,
        hold_key: str,
        dry_run: bool,
    ) -> Plan[DroppedMonth | None]:
        """Drop ``partition`` with its sessions if all are past retention; ``None`` if not.

        One transaction: the partition is locked first (``ACCESS EXCLUSIVE``),
        so no message lands in it unseen; then every session row of the month
        is deleted, and the drop goes on only if all of them were this
        namespace's, past retention, not held and not alive elsewhere (else it
        rolls back). A write racing the drop either committed before the lock
        (its session is then active, and the month stays) or waits and finds
        its session gone. Readers of the messages table wait while this runs
        (well under a second for a month of millions of messages); the lock is
        awaited at most :data:`DROP_LOCK_TIMEOUT_MS`, then the month is left
        to a later run.
        """
        if not self._pg or month_start_ms(partition.low) >= cutoff_ms:
            return None
        bounds = {"low": partition.low, "high": partition.high, "hold_key": hold_key}
        name = partition.name

        def work(conn: sa.Connection) -> DroppedMonth:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = {DROP_LOCK_TIMEOUT_MS}"))
            conn.execute(sa.text(f'LOCK TABLE "{name}" IN ACCESS EXCLUSIVE MODE'))
            rows = conn.execute(_DELETE_MONTH_SESSIONS, bounds).all()
            for row in rows:
                if row.namespace != self.namespace or row.updated_ms >= cutoff_ms or row.held:
                    raise _Keep
            ids = [row.session_id for row in rows]
            if ids and live is not None and live(ids):
                raise _Keep
            dropped = DroppedMonth(name, len(ids), sum(int(r.message_count) for r in rows))
            if dry_run:
                raise _Keep(dropped)
            conn.execute(sa.text(f'DROP TABLE "{name}"'))
            return dropped

        try:
            dropped = yield from self._transaction(work, "writer")
        except _Keep as keep:
            return keep.args[0] if keep.args else None
        except Exception as exc:
            if _lock_timeout(exc):
                return None
            raise
        self._partitions = tuple(p for p in self._partitions if p.name != partition.name)
        return dropped

    def _plan_retain_batch(
        self,
        cutoff_ms: int,
        *,
        batch_size: int,
        after: tuple[int, str] | None,
        live: Live | None,
        hold_key: str,
        dry_run: bool,
        skip: Sequence[tuple[int, int]] = (),
    ) -> Plan[RetainBatch]:
        """Delete up to ``batch_size`` sessions past retention, oldest activity first.

        ``after`` is the keyset cursor of the previous batch (held and live
        sessions are passed over, not retried); rows another transaction
        holds are skipped, for a later run. Sessions whose month is in one
        of the ``skip`` ranges ``[low, high)`` are passed over (a dry run's
        months that would be dropped whole, already counted).
        """
        check_limit(batch_size, "batch_size", maximum=100_000)
        after_ms, after_sid = after if after is not None else (-(2**63), "")

        def work(conn: sa.Connection) -> RetainBatch:
            params: dict[str, Any] = {
                "ns": self.namespace,
                "cutoff": cutoff_ms,
                "after_ms": after_ms,
                "after_sid": after_sid,
                "last": batch_size,
            }
            rows = conn.execute(_PAST, params).all()
            if not rows:
                return RetainBatch(0, 0, 0, 0, 0, None)
            held = [row for row in rows if _held(row.metadata, hold_key)]
            candidates = [
                row for row in rows
                if not _held(row.metadata, hold_key)
                and not any(low <= row.month < high for low, high in skip)
            ]
            alive = set(live([row.session_id for row in candidates])) if (
                live is not None and candidates) else set()
            doomed = [row for row in candidates if row.session_id not in alive]
            cursor = (int(rows[-1].updated_ms), str(rows[-1].session_id))
            if not doomed:
                return RetainBatch(len(rows), 0, 0, len(held), len(alive), cursor)
            params["ids"] = [row.session_id for row in doomed]
            params["months"] = sorted({row.month for row in doomed})
            if dry_run:
                messages = conn.execute(
                    sa.select(sa.func.count()).where(
                        _M.namespace == _NS,
                        _M.session_id.in_(_IDS),
                        _M.month.in_(sa.bindparam("months", expanding=True)),
                    ),
                    params,
                ).scalar_one()
                sessions = len(doomed)
            else:
                messages = conn.execute(_DELETE_MESSAGES_OF, params).rowcount
                sessions = conn.execute(_DELETE_SESSIONS_OF, params).rowcount
            return RetainBatch(
                len(rows), int(sessions), int(messages), len(held), len(alive), cursor
            )

        return (yield from self._transaction(work, "writer"))


def _lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is PostgreSQL's ``lock_not_available`` (55P03)."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", seen)
        if getattr(orig, "sqlstate", None) == "55P03":
            return True
        seen = seen.__cause__
    return False


__all__ = ["HOLD_KEY", "ArchiveRetention", "DroppedMonth", "RetainBatch"]
