"""Plans of upkeep: reconciling detached sessions, purging, trimming, stats."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tieredstore.core import check_limit
from tieredstore.model import FrozenDict
from tieredstore.plans import Plan
from tieredstore.policy import leading_system, plan_trim_bytes
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import sessions as SESSIONS
from tieredstore.tiers.archive.base import ArchiveBase
from tieredstore.tiers.archive.records import Reconciled
from tieredstore.tiers.archive.rows import _frozen
from tieredstore.tiers.archive.statements import (
    _DELETE_MESSAGE_RANGE,
    _DETACHED,
    _LEAD,
    _M,
    _MESSAGES_AT,
    _MESSAGES_STAMPED,
    _NOW,
    _NS,
    _S,
    _SELECT_EXPIRED,
    _SEQ_KIND_SIZES,
    _SESSION_IDS_AFTER,
    _SIZES,
    _UPDATE_ROW,
)

if TYPE_CHECKING:
    from tieredstore.tiers.redis import Fenced, OutboxRecord


class ArchiveUpkeep(ArchiveBase):
    """Plans of reconciliation (write_through after a Redis outage) and maintenance."""

    # -- reconciliation (write_through after a Redis outage) ----------------------

    def _plan_detached(self, limit: int) -> Plan[list[str]]:
        """The plan of :meth:`ArchiveStore.detached_sessions`."""
        check_limit(limit, maximum=100_000)

        def work(conn: sa.Connection) -> list[str]:
            return list(conn.execute(_DETACHED, {"ns": self.namespace, "last": limit}).scalars())

        return (yield from self._transaction(work, "single", read=True))

    def _plan_reconcile(self, sid: str, fenced: Fenced | None) -> Plan[Reconciled]:
        """The plan of :meth:`ArchiveStore.reconcile`."""

        def work(conn: sa.Connection) -> Reconciled:
            now = self._now_ms()
            row = self._lock_row(conn, sid)
            if row is None:
                return Reconciled("unfence" if fenced else "none")
            tombstone = row.deleted_ms or 0
            if fenced is not None and fenced.created_ms < tombstone:
                action = "drop"
            elif not row.detached:
                newer = (
                    row.version > 0 and fenced is not None and row.created_ms > fenced.created_ms
                )
                action = "promote" if newer else ("unfence" if fenced else "none")
                return Reconciled(action, tombstone, row.version)
            elif fenced is None:
                action = "none"
            elif row.version == 0:
                action = "unfence"  # Redis holds a generation created after the delete
            else:
                return self._absorb_fenced(conn, sid, row, fenced, now)
            conn.execute(_UPDATE_ROW, self._params(sid, detached=False))
            return Reconciled(action, tombstone, row.version)

        return (yield from self._transaction(work, "writer"))

    def _absorb_fenced(
        self, conn: sa.Connection, sid: str, row: Any, fenced: Fenced, now: int
    ) -> Reconciled:
        """Make the detached archive copy the session's one history again.

        The fenced Redis copy's outbox holds its writes the archive may lack:
        each one the archive does not hold at its seqs is appended after the
        archive's history (a save's messages too: both sides were
        acknowledged). The result is a new generation, so a late mirror of
        the fenced copy is recognised as stale; its version is above both.
        """
        next_seq, count = row.next_seq, row.message_count
        metadata = dict(_frozen(row.metadata))
        user_id, updated = row.user_id, row.updated_ms
        inserted = False
        for record in fenced.records:
            receipt = record.receipt
            updated = max(updated, receipt.updated_ms)
            if record.metadata is not None:
                metadata.update(record.metadata)
            if record.user_id is not None:
                user_id = record.user_id
            batch = record.batch
            if not len(batch) or self._holds(conn, sid, row, record):
                continue
            seqs = [next_seq + i for i in range(len(batch))]
            self._insert_messages(conn, sid, batch, range(len(batch)), seqs, receipt.updated_ms)
            next_seq += len(batch)
            count += len(batch)
            inserted = True
        version = max(row.version, fenced.version) + 1
        values: dict[str, Any] = {
            "created_ms": max(now, row.created_ms + 1, fenced.created_ms + 1),
            "version": version,
            "updated_ms": updated,
            "next_seq": next_seq,
            "message_count": count,
            "metadata": FrozenDict(metadata),
            "meta_version": version,
            "user_id": user_id,
            "detached": False,
        }
        if inserted:
            values["lead"] = conn.execute(_LEAD, self._params(sid)).scalar_one()
        conn.execute(_UPDATE_ROW, self._params(sid, **values))
        return Reconciled("promote", row.deleted_ms or 0, version)

    def _holds(self, conn: sa.Connection, sid: str, row: Any, record: OutboxRecord) -> bool:
        """Whether the archive already holds this outbox record's messages (a
        mirror that landed before the outage, whose acknowledgement was lost).

        A record of another generation than the archive's is held when its
        messages are in the history with their write time, at whatever seqs:
        an earlier reconciliation appended them after the archive's own
        messages (a fenced copy can be reconciled twice when Redis fails
        again before the first one replaced it)."""
        receipt = record.receipt
        if receipt.created_ms != row.created_ms:
            elsewhere = {
                (bytes(r.payload), r.created_ms)
                for r in conn.execute(
                    _MESSAGES_STAMPED, self._params(sid, stamps=[receipt.updated_ms])
                )
            }
            return all((p, receipt.updated_ms) in elsewhere for p in record.batch.payloads)
        seqs = [receipt.first_seq + i for i in range(len(record.batch))]
        stored = {
            r.seq: (bytes(r.payload), r.created_ms)
            for r in conn.execute(_MESSAGES_AT, self._params(sid, seqs=seqs))
        }
        return all(
            stored.get(seq) == (payload, receipt.updated_ms)
            for seq, payload in zip(seqs, record.batch.payloads, strict=True)
        )

    # -- maintenance ----------------------------------------------------------

    def _plan_purge_expired(
        self,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
    ) -> Plan[int]:
        """The plan of :meth:`ArchiveStore.purge_expired`."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            batches += 1
            seen, purged = yield from self._plan_purge_expired_batch(batch_size, live=live)
            total += purged
            if seen < batch_size:
                break
        return total

    def _plan_purge_expired_batch(
        self,
        batch_size: int,
        *,
        live: Callable[[list[str]], Mapping[str, int | None]] | None = None,
        now_ms: int | None = None,
    ) -> Plan[tuple[int, int]]:
        """One transaction of :meth:`purge_expired`: ``(expired rows seen, deleted)``.

        ``live(ids)`` names the sessions another tier still holds alive, with
        their expiry there (``None``: none): those rows are not deleted but
        take that expiry, since the archive's copy of a session that lives on
        in Redis is only as old as its last archival.
        """
        check_limit(batch_size, "batch_size", maximum=100_000)
        ids_param: sa.BindParameter[list[str]] = sa.bindparam("ids", expanding=True)
        delete_messages = sa.delete(MESSAGES).where(
            _M.namespace == _NS, _M.session_id.in_(ids_param)
        )
        delete_sessions = sa.delete(SESSIONS).where(
            _S.namespace == _NS, _S.session_id.in_(ids_param), _S.expires_ms <= _NOW
        )

        def work(conn: sa.Connection) -> tuple[int, int]:
            now = self._now_ms() if now_ms is None else now_ms
            params: dict[str, Any] = {
                "ns": self.namespace,
                "now": now,
                "last": batch_size,
                "tomb_before": now - self.tombstone_ms,
            }
            ids = list(conn.execute(_SELECT_EXPIRED, params).scalars())
            if not ids:
                return 0, 0
            kept = live(ids) if live is not None else {}
            for sid, expires in kept.items():
                conn.execute(_UPDATE_ROW, self._params(sid, expires_ms=expires))
            params["ids"] = [sid for sid in ids if sid not in kept]
            if not params["ids"]:
                return len(ids), 0
            conn.execute(delete_messages, params)
            return len(ids), int(conn.execute(delete_sessions, params).rowcount)

        return (yield from self._transaction(work, "writer"))

    def _plan_trim_batch(
        self,
        *,
        max_messages: int | None,
        max_bytes: int | None,
        batch_size: int,
        after: str | None = None,
        dry_run: bool = False,
    ) -> Plan[tuple[list[str], int, int]]:
        """The plan of :meth:`ArchiveStore.trim_batch`."""
        check_limit(batch_size, "batch_size", maximum=100_000)

        def work(conn: sa.Connection) -> tuple[list[str], int, int]:
            params: dict[str, Any] = {
                "ns": self.namespace,
                "after": after or "",
                "last": batch_size,
            }
            ids = list(conn.execute(_SESSION_IDS_AFTER, params).scalars())
            if not ids:
                return [], 0, 0
            params["ids"] = ids
            trimmed = dropped = 0
            for sid, count, nbytes in conn.execute(_SIZES, params):
                over_count = max_messages is not None and count > max_messages
                over_bytes = max_bytes is not None and nbytes > max_bytes
                if not (over_count or over_bytes):
                    continue
                if self._lock_row(conn, sid) is None:
                    continue
                rows = conn.execute(_SEQ_KIND_SIZES, self._params(sid)).all()
                kinds = "".join(row.kind for row in rows)
                lead, drop = plan_trim_bytes(
                    kinds, [row.size for row in rows], max_messages, max_bytes
                )
                if not drop:
                    continue
                trimmed += 1
                dropped += drop
                if dry_run:
                    continue
                low, high = rows[lead].seq, rows[lead + drop - 1].seq
                conn.execute(_DELETE_MESSAGE_RANGE, self._params(sid, low=low, high=high))
                kept = kinds[:lead] + kinds[lead + drop :]
                conn.execute(
                    _UPDATE_ROW,
                    self._params(sid, message_count=len(kept), lead=leading_system(kept)),
                )
            return ids, trimmed, dropped

        return (yield from self._transaction(work, "writer"))

    def _plan_stats(self) -> Plan[dict[str, int]]:
        """The plan of :meth:`ArchiveStore.stats`."""

        def work(conn: sa.Connection) -> dict[str, int]:
            params = {"ns": self.namespace, "now": self._now_ms()}
            real = _S.version > 0
            sessions = conn.execute(
                sa.select(
                    sa.func.count().filter(real),
                    sa.func.count().filter(real, _S.expires_ms <= _NOW),
                    sa.func.count().filter(sa.not_(real)),
                ).where(_S.namespace == _NS),
                params,
            ).one()
            messages = conn.execute(
                sa.select(sa.func.count()).where(_M.namespace == _NS), params
            ).scalar_one()
            return {
                "sessions": int(sessions[0]),
                "expired_sessions": int(sessions[1]),
                "tombstones": int(sessions[2]),
                "messages": int(messages),
            }

        return (yield from self._transaction(work, "reader", read=True))

