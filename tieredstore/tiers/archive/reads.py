"""Plans of the archive's reads: the store contract's, list_keys, snapshot, history_page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tieredstore.codec import (
    decode_cursor,
    decode_message,
    decode_messages,
    encode_cursor,
    resident_nbytes,
)
from tieredstore.core import Order, check_before, check_limit, from_ms
from tieredstore.errors import SessionNotFound
from tieredstore.model import Message, Page, Session
from tieredstore.plans import Plan
from tieredstore.tiers.archive.base import ArchiveBase
from tieredstore.tiers.archive.rows import _frozen
from tieredstore.tiers.archive.statements import (
    _COUNT,
    _EXISTS,
    _HISTORY,
    _HISTORY_BEFORE,
    _LIST,
    _LIVE_PAYLOADS_ALL,
    _LIVE_PAYLOADS_LAST,
    _SELECT_LIVE,
    _SEQ_PAYLOADS_ALL,
    _SEQ_PAYLOADS_LAST,
    _SLIDE,
    _SNAPSHOT_ALL,
    _SNAPSHOT_LAST,
)
from tieredstore.tiers.transfer import HistoryPart

if TYPE_CHECKING:
    from tieredstore.tiers.transfer import Snapshot


class ArchiveReads(ArchiveBase):
    """Plans of the reads: one statement or one snapshot (a lock when the TTL slides)."""

    def _plan_read(
        self, sid: str, last: int | None
    ) -> Plan[tuple[Any, list[Message], tuple[int, ...]]]:
        """The live session row, its messages and their seqs, from one snapshot
        (sliding the TTL)."""

        def work(conn: sa.Connection) -> tuple[Any, list[Message], tuple[int, ...]]:
            params = self._params(sid, self._now_ms())
            # The sliding UPDATE also locks the row, so the messages match it.
            row = conn.execute(_SLIDE if self.sliding_ttl else _SELECT_LIVE, params).first()
            if row is None:
                raise SessionNotFound(sid)
            if last == 0:
                return row, [], ()
            if last is None:
                rows = conn.execute(_SEQ_PAYLOADS_ALL, params).all()
            else:
                params["last"] = last
                rows = conn.execute(_SEQ_PAYLOADS_LAST, params).all()[::-1]
            return row, decode_messages([r.payload for r in rows]), tuple(r.seq for r in rows)

        return (
            yield from self._transaction(
                work, "writer" if self.sliding_ttl else "reader", read=True
            )
        )

    def _plan_load(self, sid: str, last: int | None) -> Plan[list[Message]]:
        if self.sliding_ttl or last == 0:
            return (yield from self._plan_read(sid, last))[1]

        def work(conn: sa.Connection) -> list[Message]:
            params = self._params(sid, self._now_ms())
            if last is None:
                payloads = conn.execute(_LIVE_PAYLOADS_ALL, params).scalars().all()
            else:
                params["last"] = last
                payloads = conn.execute(_LIVE_PAYLOADS_LAST, params).scalars().all()[::-1]
            if not payloads and conn.execute(_EXISTS, params).first() is None:
                raise SessionNotFound(sid)
            return decode_messages(payloads)

        return (yield from self._transaction(work, "single", read=True))

    def _plan_get(self, sid: str, last: int | None) -> Plan[Session]:
        row, messages, seqs = yield from self._plan_read(sid, last)
        return Session(
            id=sid,
            messages=messages,
            metadata=_frozen(row.metadata),
            user_id=row.user_id,
            created_at=from_ms(row.created_ms),  # type: ignore[arg-type]
            updated_at=from_ms(row.updated_ms),  # type: ignore[arg-type]
            version=row.version,
            expires_at=from_ms(row.expires_ms),
            message_count=row.message_count,
            tier="archive",
            seqs=seqs,
        )

    def _plan_count(self, sid: str) -> Plan[int]:
        def work(conn: sa.Connection) -> int:
            count = conn.execute(_COUNT, self._params(sid, self._now_ms())).scalar()
            if count is None:
                raise SessionNotFound(sid)
            return int(count)

        return (yield from self._transaction(work, "single", read=True))

    def _plan_exists(self, sid: str) -> Plan[bool]:
        def work(conn: sa.Connection) -> bool:
            return conn.execute(_EXISTS, self._params(sid, self._now_ms())).first() is not None

        return (yield from self._transaction(work, "single", read=True))

    def _plan_list(
        self, user_id: str | None, limit: int, cursor: str | None, order: Order
    ) -> Plan[Page]:
        position = decode_cursor(cursor) if cursor is not None else None
        keys = yield from self._plan_list_keys(user_id, limit + 1, position, order)
        if len(keys) <= limit:
            return Page([sid for _, sid in keys], None)
        return Page([sid for _, sid in keys[:limit]], encode_cursor(*keys[limit - 1]))

    # -- the tiered layer -----------------------------------------------------

    def _plan_list_keys(
        self,
        user_id: str | None,
        limit: int,
        position: tuple[int, str] | None,
        order: Order,
    ) -> Plan[list[tuple[int, str]]]:
        """The plan of :meth:`ArchiveStore.list_keys`."""
        params: dict[str, Any] = {"ns": self.namespace, "last": limit}
        if position is not None:
            params["after_ms"], params["after_sid"] = position
        if user_id is not None:
            params["user"] = user_id
        stmt = _LIST[order, position is not None, user_id is not None]

        def work(conn: sa.Connection) -> list[tuple[int, str]]:
            params["now"] = self._now_ms()
            return [(row.updated_ms, row.session_id) for row in conn.execute(stmt, params)]

        return (yield from self._transaction(work, "single", read=True))

    def _plan_snapshot(
        self, session_id: str, last: int | None = None, /, *, refresh: bool = False
    ) -> Plan[Snapshot | None]:
        """The plan of :meth:`ArchiveStore.snapshot`."""
        from tieredstore.tiers.transfer import Snapshot

        sid = self._sid(session_id)

        def work(conn: sa.Connection) -> Snapshot | None:
            params = self._params(sid, self._now_ms())
            row = conn.execute(_SLIDE if refresh else _SELECT_LIVE, params).first()
            if row is None:
                return None
            if last is None:
                rows = conn.execute(_SNAPSHOT_ALL, params).all()
            elif last == 0:
                rows = []
            else:
                params["last"] = last
                rows = conn.execute(_SNAPSHOT_LAST, params).all()[::-1]
            return Snapshot(
                sid=sid,
                messages=tuple(decode_messages([r.payload for r in rows])),
                seqs=tuple(r.seq for r in rows),
                kinds="".join(r.kind for r in rows),
                metadata=_frozen(row.metadata),
                user_id=row.user_id,
                created_ms=row.created_ms,
                updated_ms=row.updated_ms,
                version=row.version,
                expires_ms=row.expires_ms,
                ttl_ms=row.ttl_ms,
                message_count=row.message_count,
                next_seq=row.next_seq,
                nbytes=sum(resident_nbytes(r.payload) for r in rows),
                base_seq=row.base_seq,
            )

        return (yield from self._transaction(work, "writer" if refresh else "reader", read=True))

    def _plan_history_page(
        self, session_id: str, before: int | None, limit: int
    ) -> Plan[HistoryPart | None]:
        """The plan of :meth:`ArchiveStore.history_page`."""
        sid, before = self._sid(session_id), check_before(before)
        check_limit(limit, maximum=100_000)

        def work(conn: sa.Connection) -> HistoryPart | None:
            params = self._params(sid, self._now_ms(), last=limit)
            row = conn.execute(_SELECT_LIVE, params).first()
            if row is None:
                return None
            params["base"] = row.base_seq
            if before is None:
                rows = conn.execute(_HISTORY, params).all()
            else:
                params["before"] = before
                rows = conn.execute(_HISTORY_BEFORE, params).all()
            pairs = [(r.seq, decode_message(r.payload)) for r in reversed(rows)]
            return HistoryPart(row.created_ms, row.base_seq, pairs)

        return (yield from self._transaction(work, "reader", read=True))
