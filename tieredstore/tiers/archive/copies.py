"""Plans that apply writes made in another tier, by seq: mirror, restore, absorb_many."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from tieredstore.core import Batch
from tieredstore.errors import InvalidInput
from tieredstore.model import FrozenDict
from tieredstore.plans import Plan
from tieredstore.policy import leading_system
from tieredstore.tiers.archive.base import ArchiveBase, _NeedPartition, _Retry
from tieredstore.tiers.archive.engines import _json_dumps
from tieredstore.tiers.archive.partitions import missing_partition, month_of
from tieredstore.tiers.archive.records import ArchiveCopy, PreparedCopies
from tieredstore.tiers.archive.rows import (
    _arrays,
    _no_nul,
    _snapshot_batch,
    _stored_text,
    _subset,
)
from tieredstore.tiers.archive.statements import (
    _ABSORB_COLUMNS,
    _DELETE_MESSAGES_BEFORE,
    _LEAD,
    _LOCK_ROWS,
    _MESSAGES_AT,
    _PG_COPY_MESSAGES,
    _PG_COPY_TYPES,
    _PG_CREATE_SESSIONS,
    _PG_MIRROR,
    _UPDATE_ROW,
)
from tieredstore.tiers.transfer import SessionFenced

if TYPE_CHECKING:
    from tieredstore.tiers.transfer import Snapshot, WriteReceipt


class ArchiveCopies(ArchiveBase):
    """Plans that merge another tier's copies into the stored session, by seq and version."""

    def _plan_mirror(
        self,
        session_id: str,
        batch: Batch,
        receipt: WriteReceipt,
        *,
        replace: bool,
        metadata: FrozenDict | None = None,
        user_id: str | None = None,
    ) -> Plan[bool]:
        """The plan of :meth:`ArchiveStore.mirror`."""
        sid = self._sid(session_id)
        seqs = [receipt.first_seq + i for i in range(len(batch))]
        if (
            self._pg
            and not replace
            and metadata is None
            and user_id is None
            and seqs
            and receipt.next_seq == seqs[-1] + 1
        ):
            tail = yield from self._transaction(self._mirror_tail(sid, batch, receipt), "single")
            if tail:
                return True

        def work(conn: sa.Connection) -> bool | None:
            row = self._lock_row(conn, sid)
            if (
                row is not None
                and row.created_ms == receipt.created_ms
                and not row.detached
                and seqs
                and (
                    # new messages under the version of a write this tier holds
                    receipt.version == row.version
                    if seqs[0] >= row.next_seq
                    else self._overwrites(conn, sid, batch, seqs, receipt.updated_ms)
                )
            ):
                conn.execute(_UPDATE_ROW, self._params(sid, detached=True))
                return None
            return self._apply_locked(
                conn,
                sid,
                row,
                batch,
                seqs,
                created_ms=receipt.created_ms,
                updated_ms=receipt.updated_ms,
                version=receipt.version,
                expires_ms=receipt.expires_ms,
                ttl_ms=receipt.ttl_ms,
                next_seq=receipt.next_seq,
                base_seq=receipt.first_seq if replace else None,
                metadata=metadata,
                user_id=user_id,
            )

        applied = yield from self._transaction(work, "writer")
        if applied is None:
            # Redis numbered this write over messages (or the version) of a write
            # the archive holds: it lost acknowledged writes (a failover to a
            # replica that never got them).
            # The session is now detached; reconciliation keeps both histories.
            raise SessionFenced(sid)
        return applied

    def _mirror_tail(
        self, sid: str, batch: Batch, receipt: WriteReceipt
    ) -> Callable[[sa.Connection], bool]:
        """The one-statement mirror of an append after every stored message (see
        :data:`_PG_MIRROR`): ``True`` if it applied, ``False`` for another case."""
        offsets = range(len(batch))
        params = self._params(
            sid,
            version=receipt.version,
            n=len(batch),
            first=receipt.first_seq,
            next_seq=receipt.next_seq,
            created=receipt.created_ms,
            updated=receipt.updated_ms,
            batch_lead=leading_system(batch.kinds),
        )
        params.update(_arrays(batch, offsets, offsets))
        if receipt.ttl_ms is not None:
            params["ttl"], params["expires"] = receipt.ttl_ms, receipt.expires_ms
        statement = _PG_MIRROR[receipt.ttl_ms is not None]

        def work(conn: sa.Connection) -> bool:
            try:
                return conn.execute(statement, params).first() is not None
            except sa.exc.IntegrityError:  # a seq already stored: the general path decides
                return False

        return work

    def _plan_mirror_metadata(
        self, session_id: str, metadata: FrozenDict, receipt: WriteReceipt
    ) -> Plan[bool]:
        """The plan of :meth:`ArchiveStore.mirror_metadata`."""
        sid = self._sid(session_id)

        def work(conn: sa.Connection) -> bool:
            row = self._lock_row(conn, sid)
            if row is not None and row.detached:
                raise SessionFenced(sid)
            if row is None or row.created_ms != receipt.created_ms:
                return False
            values: dict[str, Any] = {}
            if receipt.version > row.meta_version:
                values.update(metadata=metadata, meta_version=receipt.version)
            if receipt.version > row.version:
                values.update(
                    version=receipt.version,
                    updated_ms=receipt.updated_ms,
                    expires_ms=receipt.expires_ms,
                    ttl_ms=receipt.ttl_ms,
                )
            if values:
                conn.execute(_UPDATE_ROW, self._params(sid, **values))
            return True

        return (yield from self._transaction(work, "writer"))

    def _plan_restore(self, snapshot: Snapshot) -> Plan[bool]:
        """The plan of :meth:`ArchiveStore.restore`."""
        sid = self._sid(snapshot.sid)
        return (
            yield from self._plan_apply(
                sid,
                _snapshot_batch(snapshot),
                snapshot.seqs,
                created_ms=snapshot.created_ms,
                updated_ms=snapshot.updated_ms,
                version=snapshot.version,
                expires_ms=snapshot.expires_ms,
                ttl_ms=snapshot.ttl_ms,
                next_seq=snapshot.next_seq,
                base_seq=snapshot.base_seq,
                metadata=snapshot.metadata,
                user_id=snapshot.user_id,
            )
        )

    def prepare(self, copies: Sequence[ArchiveCopy]) -> PreparedCopies:
        """Check ``copies`` and build their rows for :meth:`absorb_many` (no I/O)."""
        ids = [copy.sid for copy in copies]
        if len(set(ids)) != len(ids):
            raise InvalidInput("absorb_many got the same session twice")
        for sid in ids:
            self._sid(sid)
        if not self._bulk_copy:
            return PreparedCopies(self.namespace, copies, [], [])
        ns = self.namespace
        loads = orjson.loads
        sessions: list[tuple[Any, ...]] = []
        messages: list[list[tuple[Any, ...]]] = []
        for copy in copies:
            sid, base, kinds, payloads = copy.sid, copy.base_seq, copy.kinds, copy.payloads
            stamps = copy.stamps or [copy.updated_ms] * len(copy.seqs)
            decoded = copy.messages
            rows: list[tuple[Any, ...]] = []
            kept: list[str] = []
            month = month_of(copy.created_ms)
            for i, seq in enumerate(copy.seqs):
                if seq < base:
                    continue
                message = decoded[i] if decoded is not None else loads(payloads[i])
                kept.append(kinds[i])
                rows.append(
                    (
                        ns,
                        sid,
                        seq,
                        month,
                        stamps[i],
                        _no_nul(message["role"]),
                        kinds[i],
                        payloads[i],
                        _stored_text(message, payloads[i]),
                    )
                )
            messages.append(rows)
            sessions.append(
                (
                    sid,
                    copy.user_id,
                    _json_dumps(copy.metadata),
                    copy.created_ms,
                    copy.updated_ms,
                    copy.expires_ms,
                    copy.ttl_ms,
                    copy.version,
                    len(rows),
                    copy.next_seq,
                    base,
                    leading_system(kept),
                    copy.version,
                    month,
                )
            )
        return PreparedCopies(ns, copies, sessions, messages)

    def _plan_absorb_many(self, copies: Sequence[ArchiveCopy] | PreparedCopies) -> Plan[list[bool]]:
        """The plan of :meth:`ArchiveStore.absorb_many`."""
        prepared = copies if isinstance(copies, PreparedCopies) else self.prepare(copies)
        if prepared.namespace != self.namespace:
            raise InvalidInput("these copies were prepared for another namespace")
        ids = [copy.sid for copy in prepared.copies]
        if not ids:
            return []
        yield from self._plan_ensure_months({month_of(c.created_ms) for c in prepared.copies})

        def work(conn: sa.Connection) -> list[bool]:
            rows = {
                row.session_id: row
                for row in conn.execute(_LOCK_ROWS, {"ns": self.namespace, "ids": sorted(ids)})
            }
            done: dict[str, bool] = {}
            fresh: list[int] = []
            for index, copy in enumerate(prepared.copies):
                row = rows.get(copy.sid)
                if row is None and self._bulk_copy:
                    fresh.append(index)
                    continue
                keep = [i for i, seq in enumerate(copy.seqs) if seq >= copy.base_seq]
                batch = copy.batch()
                if len(keep) < len(batch):
                    batch = _subset(batch, keep)
                done[copy.sid] = self._apply_locked(
                    conn,
                    copy.sid,
                    row,
                    batch,
                    [copy.seqs[i] for i in keep],
                    created_ms=copy.created_ms,
                    updated_ms=copy.updated_ms,
                    version=copy.version,
                    expires_ms=copy.expires_ms,
                    ttl_ms=copy.ttl_ms,
                    next_seq=copy.next_seq,
                    base_seq=copy.base_seq,
                    metadata=copy.metadata,
                    user_id=copy.user_id,
                    skip_detached=True,
                )
            if fresh:
                self._create_many(conn, prepared, fresh)
            return [done.get(sid, True) for sid in ids]

        return (yield from self._transaction(work, "writer"))

    def _create_many(
        self, conn: sa.Connection, prepared: PreparedCopies, fresh: Sequence[int]
    ) -> None:
        """PostgreSQL: create the sessions ``fresh`` (indices) with their messages, in bulk.

        A session created concurrently since the rows were locked makes the
        insert skip it; the transaction is then retried, and finds the row.
        """
        values = [prepared.sessions[i] for i in fresh]
        columns = {name: [row[k] for row in values] for k, name in enumerate(_ABSORB_COLUMNS)}
        created = conn.execute(_PG_CREATE_SESSIONS, {"ns": self.namespace, **columns}).all()
        if len(created) < len(fresh):
            raise _Retry
        dbapi: Any = conn.connection.driver_connection
        try:
            with dbapi.cursor() as cursor, cursor.copy(_PG_COPY_MESSAGES) as copy_in:
                copy_in.set_types(_PG_COPY_TYPES)
                write = copy_in.write_row
                for i in fresh:
                    for row in prepared.messages[i]:
                        write(row)
        except dbapi.Error as exc:  # the raw cursor: SQLAlchemy does not wrap it
            month = missing_partition(exc)
            if month is None:
                raise
            raise _NeedPartition(month) from exc

    def _plan_apply(
        self,
        sid: str,
        batch: Batch,
        seqs: Sequence[int],
        **bookkeeping: Any,
    ) -> Plan[bool]:
        """Merge messages at known seqs plus versioned bookkeeping into the stored session.

        ``bookkeeping`` is that of :meth:`_apply_locked`, which runs in one transaction here.
        """

        def work(conn: sa.Connection) -> bool:
            return self._apply_locked(
                conn, sid, self._lock_row(conn, sid), batch, seqs, **bookkeeping
            )

        return (yield from self._transaction(work, "writer"))

    def _apply_locked(
        self,
        conn: sa.Connection,
        sid: str,
        row: Any,
        batch: Batch,
        seqs: Sequence[int],
        *,
        created_ms: int,
        updated_ms: int,
        version: int,
        expires_ms: int | None,
        ttl_ms: int | None,
        next_seq: int,
        base_seq: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        skip_detached: bool = False,
    ) -> bool:
        """:meth:`_apply` inside the caller's transaction; ``row`` is the locked session row.

        ``base_seq`` (``None``: unchanged) is where the writer's history starts.
        A copy of a generation created before the id's tombstone is refused
        (``False``), and so is any copy onto a detached session: that raises
        :class:`SessionFenced` unless ``skip_detached``.
        """
        now = self._now_ms()
        if row is not None and row.deleted_ms is not None and created_ms < row.deleted_ms:
            return False  # a deleted generation: the delete wins
        if row is not None and row.detached:
            if skip_detached:
                return False
            raise SessionFenced(sid)
        if row is not None and row.created_ms > created_ms and self._is_live(row, now):
            return False  # a newer incarnation of the session is stored
        if row is None or row.created_ms != created_ms:
            # A new incarnation: it replaces whatever is stored.
            first = seqs[0] if seqs else next_seq
            # An out-of-order append does not know where the history starts: assume
            # its beginning, so earlier messages arriving later are still kept.
            start = base_seq if base_seq is not None else 0
            fresh = self._new_values(
                created_ms=created_ms,
                updated_ms=updated_ms,
                ttl_ms=ttl_ms,
                expires_ms=expires_ms,
                version=version,
                count=len(batch),
                next_seq=next_seq,
                base_seq=start,
                lead=leading_system(batch.kinds),
                metadata=metadata,
                user_id=user_id,
            )
            self._renew(conn, sid, row, fresh)
            self._insert_messages(conn, sid, batch, range(len(batch)), seqs, updated_ms)
            # An append whose earlier messages this tier never saw leaves a gap.
            return first == 0 or base_seq is not None
        base = row.base_seq if base_seq is None else max(row.base_seq, base_seq)
        deleted = 0
        if base > row.base_seq:
            deleted = conn.execute(_DELETE_MESSAGES_BEFORE, self._params(sid, base=base)).rowcount
        keep = [i for i, seq in enumerate(seqs) if seq >= base]
        inserted = self._insert_messages(
            conn,
            sid,
            batch,
            keep,
            [seqs[i] for i in keep],
            updated_ms,
            skip_existing=True,
        )
        values: dict[str, Any] = {
            "message_count": row.message_count - deleted + inserted,
            "next_seq": max(row.next_seq, next_seq),
            "base_seq": base,
        }
        if version > row.version:
            values.update(
                version=version,
                updated_ms=max(updated_ms, row.updated_ms),
                expires_ms=expires_ms,
                ttl_ms=ttl_ms,
            )
        if version > row.meta_version and (metadata is not None or user_id is not None):
            values["meta_version"] = version
            if metadata is not None:
                values["metadata"] = metadata
            if user_id is not None:
                values["user_id"] = user_id
        if deleted or inserted:
            values["lead"] = self._lead_after(conn, sid, row, batch, keep, seqs, deleted, inserted)
        conn.execute(_UPDATE_ROW, self._params(sid, **values))
        return True

    def _lead_after(
        self,
        conn: sa.Connection,
        sid: str,
        row: Any,
        batch: Batch,
        keep: Sequence[int],
        seqs: Sequence[int],
        deleted: int,
        inserted: int,
    ) -> int:
        """The session's leading system messages once ``keep`` went in.

        Messages that all went in after every stored one (an append) extend
        the leading run only if it was the whole history: no need to count
        it again, which reads the whole session. Anything else is counted.
        """
        if not deleted and inserted == len(keep) and seqs[keep[0]] >= row.next_seq:
            if row.lead != row.message_count:
                return int(row.lead)
            return int(row.lead) + leading_system("".join(batch.kinds[i] for i in keep))
        return int(conn.execute(_LEAD, self._params(sid)).scalar_one())

    def _overwrites(
        self, conn: sa.Connection, sid: str, batch: Batch, seqs: Sequence[int], stamp: int
    ) -> bool:
        """Whether one of these seqs already holds another write's message: other
        content, or the same content stored earlier than this write was made
        (a copy of this very write made later, e.g. from a snapshot, carries
        a later time). Then the seq was used twice."""
        stored = {
            r.seq: (bytes(r.payload), r.created_ms)
            for r in conn.execute(_MESSAGES_AT, self._params(sid, seqs=list(seqs)))
        }
        for seq, payload in zip(seqs, batch.payloads, strict=True):
            if seq in stored:
                held, at = stored[seq]
                if held != payload or at < stamp:
                    return True
        return False
