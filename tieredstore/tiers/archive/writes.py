"""Plans of the archive's own writes: save, append, merge_metadata, delete and fork."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tieredstore.core import Batch, merge_metadata
from tieredstore.errors import SessionExists, SessionNotFound, VersionConflict
from tieredstore.model import EMPTY_METADATA, FrozenDict
from tieredstore.plans import Plan
from tieredstore.policy import leading_system
from tieredstore.tiers.archive.base import ArchiveBase, _Retry
from tieredstore.tiers.archive.partitions import month_of
from tieredstore.tiers.archive.rows import _arrays, _frozen, _kept, _trim
from tieredstore.tiers.archive.statements import (
    _APPEND,
    _COPY_MESSAGES,
    _DELETE_MESSAGE_RANGE,
    _DELETE_MESSAGES,
    _PG_APPEND,
    _SEQ_KINDS,
    _SHARE_LIVE,
    _UPDATE_ROW,
)

if TYPE_CHECKING:
    from tieredstore.tiers.transfer import WriteReceipt


class ArchiveWrites(ArchiveBase):
    """Plans of the writes, and of their twins that return a :class:`WriteReceipt`."""

    def _plan_save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> Plan[int]:
        receipt = yield from self._plan_write_save(
            sid,
            batch,
            ttl_ms=ttl_ms,
            metadata=metadata,
            user_id=user_id,
            expected_version=expected_version,
        )
        return receipt.version

    def _plan_append(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> Plan[int]:
        receipt = yield from self._plan_write_append(
            sid, batch, ttl_ms=ttl_ms, expected_version=expected_version
        )
        return receipt.version

    def _plan_write_save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> Plan[WriteReceipt]:
        """The plan of :meth:`ArchiveStore.write_save`."""
        from tieredstore.tiers.transfer import WriteReceipt

        n = len(batch)
        lead, drop, kept = _trim(batch.kinds, self.max_messages)
        keep = _kept(n, lead, drop)
        new_lead = leading_system(kept)

        def work(conn: sa.Connection) -> WriteReceipt:
            now = self._now_ms()
            row = self._lock_row(conn, sid)
            live = self._is_live(row, now)
            if expected_version is not None:
                actual = row.version if live else 0
                if actual != expected_version:
                    raise VersionConflict(sid, expected_version, actual)
            if not live:
                born = self._born(row, now)
                values = self._new_values(
                    created_ms=born,
                    updated_ms=now,
                    ttl_ms=ttl_ms,
                    expires_ms=now + ttl_ms if ttl_ms is not None else None,
                    count=len(keep),
                    next_seq=n,
                    lead=new_lead,
                    metadata=metadata,
                    user_id=user_id,
                    detached=detached,
                )
                self._renew(conn, sid, row, values)
                self._insert_messages(conn, sid, batch, keep, keep, now)
                return WriteReceipt(1, 0, n, born, now, values["expires_ms"], ttl_ms)
            # Seqs only grow: the new history starts after the last seq used.
            first = row.next_seq
            values = {
                "version": row.version + 1,
                "updated_ms": max(now, row.updated_ms),
                "message_count": len(keep),
                "next_seq": first + n,
                "base_seq": first,
                "lead": new_lead,
                "ttl_ms": row.ttl_ms if ttl_ms is None else ttl_ms,
                "expires_ms": row.expires_ms if ttl_ms is None else now + ttl_ms,
            }
            if detached:
                values["detached"] = True
            if metadata is not None:
                values["metadata"] = metadata
                values["meta_version"] = values["version"]
            if user_id is not None:
                values["user_id"] = user_id
            conn.execute(_DELETE_MESSAGES, self._params(sid))
            conn.execute(_UPDATE_ROW, self._params(sid, **values))
            self._insert_messages(conn, sid, batch, keep, [first + i for i in keep], now)
            return WriteReceipt(
                values["version"],
                first,
                first + n,
                row.created_ms,
                values["updated_ms"],
                values["expires_ms"],
                values["ttl_ms"],
            )

        return (yield from self._transaction(work, "writer"))

    def _plan_write_append(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        expected_version: int | None,
        detached: bool = False,
    ) -> Plan[WriteReceipt]:
        """The plan of :meth:`ArchiveStore.write_append`."""
        from tieredstore.tiers.transfer import WriteReceipt

        n = len(batch)
        batch_lead = leading_system(batch.kinds)

        def receipt(row: Any) -> WriteReceipt:
            return WriteReceipt(
                int(row.version),
                row.next_seq - n,
                row.next_seq,
                row.created_ms,
                row.updated_ms,
                row.expires_ms,
                row.ttl_ms,
            )

        def bump_params(now: int) -> dict[str, Any]:
            params = self._params(sid, now, n=n, batch_lead=batch_lead)
            if ttl_ms is not None:
                params["ttl"], params["expires"] = ttl_ms, now + ttl_ms
            if expected_version is not None:
                params["expected"] = expected_version
            return params

        if self._pg and self.max_messages is None and not detached:
            stmt = _PG_APPEND[ttl_ms is not None, expected_version is not None]
            offsets = range(n)

            def one_statement(conn: sa.Connection) -> Any:
                params = bump_params(self._now_ms())
                params.update(_arrays(batch, offsets, offsets))
                return conn.execute(stmt, params).first()

            bumped = yield from self._transaction(one_statement, "single")
            if bumped is not None:
                return receipt(bumped)

        bump = _APPEND[ttl_ms is not None, expected_version is not None]

        def work(conn: sa.Connection) -> WriteReceipt:
            now = self._now_ms()
            # Fast path: one statement locks, checks and bumps a live session.
            bumped = conn.execute(bump, bump_params(now)).first()
            if bumped is not None:
                first = bumped.next_seq - n
                keep: Sequence[int] = range(n)
                if self.max_messages is not None and bumped.message_count > self.max_messages:
                    keep = self._trim_stored(conn, sid, batch)
                self._insert_messages(conn, sid, batch, keep, [first + i for i in keep], now)
                if detached:
                    conn.execute(_UPDATE_ROW, self._params(sid, detached=True))
                return receipt(bumped)
            # Slow path: the session is missing or expired, or the version differs.
            row = self._lock_row(conn, sid)
            if self._is_live(row, now):
                if expected_version is not None and row.version != expected_version:
                    raise VersionConflict(sid, expected_version, row.version)
                raise _Retry  # created concurrently since the UPDATE: start over
            if expected_version not in (None, 0):
                raise VersionConflict(sid, expected_version, 0)
            lead, drop, kept = _trim(batch.kinds, self.max_messages)
            keep = _kept(n, lead, drop)
            expires = now + ttl_ms if ttl_ms is not None else None
            born = self._born(row, now)
            values = self._new_values(
                created_ms=born,
                updated_ms=now,
                ttl_ms=ttl_ms,
                expires_ms=expires,
                count=len(keep),
                next_seq=n,
                lead=leading_system(kept),
                detached=detached,
            )
            self._renew(conn, sid, row, values)
            self._insert_messages(conn, sid, batch, keep, keep, now)
            return WriteReceipt(1, 0, n, born, now, expires, ttl_ms)

        return (yield from self._transaction(work, "writer"))

    def _trim_stored(self, conn: sa.Connection, sid: str, batch: Batch) -> list[int]:
        """Apply ``max_messages`` to the stored history plus ``batch`` (row locked).

        Deletes the dropped stored rows, fixes the count and lead, and returns
        the indices of the batch messages that survive.
        """
        existing = conn.execute(_SEQ_KINDS, self._params(sid)).all()
        stored = len(existing)
        kinds = "".join(row.kind for row in existing) + batch.kinds
        lead, drop, kept = _trim(kinds, self.max_messages)
        end = lead + drop
        if drop and lead < stored:
            low, high = existing[lead].seq, existing[min(end, stored) - 1].seq
            conn.execute(_DELETE_MESSAGE_RANGE, self._params(sid, low=low, high=high))
        conn.execute(
            _UPDATE_ROW,
            self._params(sid, message_count=len(kept), lead=leading_system(kept)),
        )
        return [i for i in range(len(batch)) if not lead <= stored + i < end]

    def _plan_merge_metadata(
        self, sid: str, updates: FrozenDict, detached: bool = False
    ) -> Plan[FrozenDict]:
        def work(conn: sa.Connection) -> FrozenDict:
            now = self._now_ms()
            row = self._lock_row(conn, sid)
            if not self._is_live(row, now):
                raise SessionNotFound(sid)
            merged = merge_metadata(_frozen(row.metadata), updates)
            values = {
                "metadata": merged,
                "version": row.version + 1,
                "meta_version": row.version + 1,
                "updated_ms": max(now, row.updated_ms),
            }
            if detached:
                values["detached"] = True
            conn.execute(_UPDATE_ROW, self._params(sid, **values))
            return merged

        return (yield from self._transaction(work, "writer"))

    def _plan_delete(self, sid: str, floor_ms: int = 0, detached: bool = False) -> Plan[bool]:
        """Delete, leaving the row as a tombstone (see :meth:`ArchiveStore.delete_at`)."""

        def work(conn: sa.Connection) -> bool:
            now = self._now_ms()
            row = self._lock_row(conn, sid)
            tombstone = max(now, floor_ms)
            if row is not None:
                # later than every generation this id had, and than earlier tombstones
                last_born = row.created_ms + 1 if row.version > 0 else 0
                tombstone = max(tombstone, row.deleted_ms or 0, last_born)
            values: dict[str, Any] = {
                "user_id": None,
                "metadata": EMPTY_METADATA,
                "updated_ms": tombstone,
                "expires_ms": 0,
                "ttl_ms": None,
                "version": 0,
                "message_count": 0,
                "lead": 0,
                "deleted_ms": tombstone,
                "detached": detached or (row is not None and bool(row.detached)),
            }
            if row is None:
                created = conn.execute(
                    self._create_row,
                    {
                        "namespace": self.namespace,
                        "session_id": sid,
                        "created_ms": tombstone,
                        "month": month_of(tombstone),
                        "next_seq": 0,
                        "base_seq": 0,
                        **values,
                    },
                ).first()
                if created is None:
                    raise _Retry
                return False
            conn.execute(_DELETE_MESSAGES, self._params(sid))
            conn.execute(_UPDATE_ROW, self._params(sid, **values))
            return self._is_live(row, now) and row.version > 0

        return (yield from self._transaction(work, "writer"))

    def _plan_fork(self, src: str, dst: str, *, ttl_ms: int | None) -> Plan[int]:
        def work(conn: sa.Connection) -> int:
            now = self._now_ms()
            source = conn.execute(_SHARE_LIVE, self._params(src, now)).first()
            if source is None:
                raise SessionNotFound(src)
            target = self._lock_row(conn, dst)
            if self._is_live(target, now):
                raise SessionExists(dst)
            ttl = ttl_ms or self.default_ttl_ms or source.ttl_ms
            values = self._new_values(
                created_ms=now,
                updated_ms=now,
                ttl_ms=ttl,
                expires_ms=now + ttl if ttl is not None else None,
                count=source.message_count,
                next_seq=source.next_seq,
                base_seq=source.base_seq,
                lead=source.lead,
                metadata=_frozen(source.metadata),
                user_id=source.user_id,
            )
            self._renew(conn, dst, target, values)
            conn.execute(_COPY_MESSAGES, self._params(src, dst=dst))
            return 1

        return (yield from self._transaction(work, "writer"))
