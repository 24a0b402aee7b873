"""The archive tier of LangGraph checkpoints: the ``tieredstore_checkpoint*`` tables.

:class:`ColdCheckpoints` runs its SQL through an :class:`ArchiveStore`'s
transactions, so it shares that store's engine, timeouts, circuit breaker,
retries and error translation (a database without migration 0005 raises
:class:`~tieredstore.errors.SchemaNotReady`).

Every copy into the archive is conditional on the thread's tombstone
(``deleted_ms``): a generation created before the thread's last delete is
refused, so an archival or a mirror still in flight when ``delete_thread``
ran never brings the thread back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from tieredstore.integrations.langgraph.records import (
    Found,
    StoredCheckpoint,
    StoredWrite,
    ThreadCopy,
)
from tieredstore.schema import checkpoint_threads as THREADS
from tieredstore.schema import checkpoint_writes as WRITES
from tieredstore.schema import checkpoints as CHECKPOINTS
from tieredstore.tiers.archive import ArchiveStore
from tieredstore.tiers.archive.base import _Retry

__all__ = ["ColdCheckpoints", "ColdRead", "Swept"]

T = TypeVar("T")

_T, _C, _W = THREADS.c, CHECKPOINTS.c, WRITES.c
_NS: sa.BindParameter[str] = sa.bindparam("ns")
_TID: sa.BindParameter[str] = sa.bindparam("tid")
_THREAD_KEY = sa.and_(_T.namespace == _NS, _T.thread_id == _TID)
_CHECKPOINT_KEY = sa.and_(_C.namespace == _NS, _C.thread_id == _TID)
_WRITE_KEY = sa.and_(_W.namespace == _NS, _W.thread_id == _TID)
_THREAD_COLUMNS = (_T.created_ms, _T.updated_ms, _T.expires_ms, _T.deleted_ms)
_CHECKPOINT_COLUMNS = (_C.thread_id, _C.checkpoint_ns, _C.checkpoint_id,
                       _C.parent_checkpoint_id, _C.created_ms, _C.type, _C.checkpoint,
                       _C["metadata"])

_SELECT_THREAD = sa.select(*_THREAD_COLUMNS).where(_THREAD_KEY)
_LOCK_THREAD = _SELECT_THREAD.with_for_update()
_UPDATE_THREAD = (
    sa.update(THREADS).where(_THREAD_KEY).values(
        created_ms=sa.bindparam("created"), updated_ms=sa.bindparam("updated"),
        expires_ms=sa.bindparam("expires"))
)
_TOMBSTONE = sa.update(THREADS).where(_THREAD_KEY).values(
    deleted_ms=sa.bindparam("tomb"), updated_ms=sa.bindparam("tomb"),
    expires_ms=sa.bindparam("expires"))
_ONE = (
    sa.select(*_CHECKPOINT_COLUMNS)
    .where(_CHECKPOINT_KEY, _C.checkpoint_ns == sa.bindparam("cns"),
           _C.checkpoint_id == sa.bindparam("cid"))
)
_NEWEST = (
    sa.select(*_CHECKPOINT_COLUMNS)
    .where(_CHECKPOINT_KEY, _C.checkpoint_ns == sa.bindparam("cns"))
    .order_by(_C.checkpoint_id.desc())
    .limit(1)
)
_WRITES_OF = (
    sa.select(_W.task_id, _W.idx, _W.channel, _W.type, _W.value, _W.task_path)
    .where(_WRITE_KEY, _W.checkpoint_ns == sa.bindparam("cns"),
           _W.checkpoint_id == sa.bindparam("cid"))
)
_DELETE_CHECKPOINTS = sa.delete(CHECKPOINTS).where(_CHECKPOINT_KEY)
_DELETE_WRITES = sa.delete(WRITES).where(_WRITE_KEY)
_PRUNE_CHECKPOINTS = sa.delete(CHECKPOINTS).where(
    _CHECKPOINT_KEY, _C.checkpoint_ns == sa.bindparam("cns"),
    _C.checkpoint_id < sa.bindparam("keep"))
_PRUNE_WRITES = sa.delete(WRITES).where(
    _WRITE_KEY, _W.checkpoint_ns == sa.bindparam("cns"), _W.checkpoint_id < sa.bindparam("keep"))


# PostgreSQL: a write_through mirror in one statement (autocommit, one round trip)
# when the thread's row is absent or live and the copy's generation is not older
# than its tombstone; otherwise (refused, or an expired row to clear) it inserts
# nothing and the mirror goes the general way (ColdCheckpoints.absorb).
_PG_THREAD = """
INSERT INTO tieredstore_checkpoint_threads AS t
  (namespace, thread_id, created_ms, updated_ms, expires_ms, deleted_ms)
VALUES (:ns, :tid, :created, :updated, :expires, NULL)
ON CONFLICT (namespace, thread_id) DO UPDATE SET
  created_ms = LEAST(t.created_ms, EXCLUDED.created_ms),
  updated_ms = GREATEST(t.updated_ms, EXCLUDED.updated_ms),
  expires_ms = CASE WHEN EXCLUDED.updated_ms >= t.updated_ms
                    THEN EXCLUDED.expires_ms ELSE t.expires_ms END
WHERE (t.deleted_ms IS NULL
       OR (t.created_ms >= t.deleted_ms AND EXCLUDED.created_ms >= t.deleted_ms))
  AND (t.expires_ms IS NULL OR t.expires_ms > :now)
RETURNING 1"""
_PG_MIRROR_CHECKPOINT = sa.text(f"""
WITH t AS ({_PG_THREAD})
INSERT INTO tieredstore_checkpoints (namespace, thread_id, checkpoint_ns, checkpoint_id,
  parent_checkpoint_id, created_ms, type, checkpoint, metadata)
SELECT :ns, :tid, :cns, :cid, :parent, :cms, :type, :blob, CAST(:meta AS jsonb) FROM t
ON CONFLICT (namespace, thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
  parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, created_ms = EXCLUDED.created_ms,
  type = EXCLUDED.type, checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
RETURNING 1""")
_PG_WRITE_COLUMNS = "namespace, thread_id, checkpoint_ns, checkpoint_id, task_id, idx, " \
                    "channel, type, value, task_path"
_PG_MIRROR_WRITES = sa.text(f"""
WITH t AS ({_PG_THREAD}),
w AS (SELECT * FROM unnest(CAST(:tasks AS text[]), CAST(:idxs AS integer[]),
  CAST(:channels AS text[]), CAST(:types AS text[]), CAST(:vals AS bytea[]),
  CAST(:paths AS text[])) AS u(task_id, idx, channel, type, value, task_path)),
kept AS (INSERT INTO tieredstore_checkpoint_writes ({_PG_WRITE_COLUMNS})
  SELECT :ns, :tid, :cns, :cid, w.* FROM w, t WHERE w.idx >= 0 ON CONFLICT DO NOTHING),
replaced AS (INSERT INTO tieredstore_checkpoint_writes ({_PG_WRITE_COLUMNS})
  SELECT :ns, :tid, :cns, :cid, w.* FROM w, t WHERE w.idx < 0
  ON CONFLICT (namespace, thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET
    channel = EXCLUDED.channel, type = EXCLUDED.type, value = EXCLUDED.value,
    task_path = EXCLUDED.task_path)
SELECT count(*) FROM t""")


@dataclass(frozen=True, slots=True)
class ColdRead:
    """A thread in the archive: its generation, expiry and (maybe) one checkpoint."""

    created_ms: int
    expires_ms: int | None
    found: Found | None


@dataclass(frozen=True, slots=True)
class Swept:
    """One batch of expiry or retention: threads looked at, deleted, left to Redis."""

    seen: int
    deleted: int
    live: int
    after: tuple[int, str] | None


def _live(row: Any, now_ms: int, hot: bool = False) -> bool:
    """A thread row standing for a generation that is neither deleted nor expired
    (``hot``: the thread lives in Redis, whose expiry governs it)."""
    if row.deleted_ms is not None and row.created_ms < row.deleted_ms:
        return False
    return hot or row.expires_ms is None or row.expires_ms > now_ms


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(row.checkpoint_ns, row.checkpoint_id, row.parent_checkpoint_id,
                            row.created_ms, row.type, bytes(row.checkpoint),
                            orjson.dumps(row.metadata))


def _write(row: Any) -> StoredWrite:
    return StoredWrite(row.task_id, row.idx, row.channel, row.type, bytes(row.value),
                       row.task_path)


def matches(metadata: bytes | Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    """``list(filter=...)``: each key of ``wanted`` equal at the top level of the metadata."""
    if not wanted:
        return True
    found = orjson.loads(metadata) if isinstance(metadata, bytes) else metadata
    return all(found.get(k) == v for k, v in wanted.items())


class ColdCheckpoints:
    """LangGraph checkpoints in the archive's tables, through an :class:`ArchiveStore`."""

    def __init__(self, archive: ArchiveStore) -> None:
        self.archive = archive
        self.namespace = archive.namespace
        self.tombstone_ms = archive.tombstone_ms
        pg = archive._pg
        self._pg = pg
        insert: Any = postgresql.insert if pg else sqlite.insert
        self._insert_thread = insert(THREADS).on_conflict_do_nothing()
        put = insert(CHECKPOINTS)
        self._upsert_checkpoints = put.on_conflict_do_update(
            index_elements=[_C.namespace, _C.thread_id, _C.checkpoint_ns, _C.checkpoint_id],
            set_={c: put.excluded[c] for c in ("parent_checkpoint_id", "created_ms", "type",
                                               "checkpoint", "metadata")},
        )
        # A task's regular writes are kept as first stored (LangGraph's retries must
        # not change them); its special ones (negative idx: errors, interrupts...)
        # are replaced.
        write = insert(WRITES)
        self._insert_writes = write.on_conflict_do_nothing()
        self._upsert_writes = write.on_conflict_do_update(
            index_elements=[_W.namespace, _W.thread_id, _W.checkpoint_ns, _W.checkpoint_id,
                            _W.task_id, _W.idx],
            set_={c: write.excluded[c] for c in ("channel", "type", "value", "task_path")},
        )

    def now_ms(self) -> int:
        return int(self.archive.clock() * 1000)

    def _run(self, work: Callable[[sa.Connection], T], role: str, *, read: bool = False) -> T:
        return self.archive._drive(self.archive._transaction(work, role, read=read))

    def _params(self, tid: str, **more: Any) -> dict[str, Any]:
        return {"ns": self.namespace, "tid": tid, **more}

    # -- writes ------------------------------------------------------------------------

    def absorb(self, copies: Sequence[ThreadCopy]) -> list[bool]:
        """Store each copy (one transaction); per copy, whether the archive took it.

        A copy of a generation created before the thread's tombstone is refused.
        ``created_ms=0`` asks for the archive's own generation (no Redis tier):
        the thread's, or a new one no earlier than its tombstone.
        """
        if not copies:
            return []
        # Rows are locked in thread order, so concurrent absorbs cannot deadlock.
        order = sorted(range(len(copies)), key=lambda i: copies[i].thread_id)

        def work(conn: sa.Connection) -> list[bool]:
            taken = [False] * len(copies)
            for i in order:
                taken[i] = self._absorb(conn, copies[i])
            return taken

        return self._run(work, "writer")

    def _absorb(self, conn: sa.Connection, copy: ThreadCopy) -> bool:
        now = self.now_ms()
        params = self._params(copy.thread_id)
        row = conn.execute(_LOCK_THREAD, params).first()
        created = copy.created_ms
        if row is None:
            created = created or now
            values = {"namespace": self.namespace, "thread_id": copy.thread_id,
                      "created_ms": created, "updated_ms": copy.updated_ms,
                      "expires_ms": copy.expires_ms, "deleted_ms": None}
            if not conn.execute(self._insert_thread, values).rowcount:
                raise _Retry  # a concurrent first copy won: go again, finding its row
        else:
            deleted = row.deleted_ms
            alive = _live(row, now)
            if not created:
                created = row.created_ms if alive else max(now, deleted or 0)
            if deleted is not None and created < deleted:
                return False
            if not alive and created > row.created_ms:
                # A generation after the archived one expired (or was deleted):
                # what the archive still holds of the old one is not its history.
                conn.execute(_DELETE_WRITES, params)
                conn.execute(_DELETE_CHECKPOINTS, params)
            newer = copy.updated_ms >= row.updated_ms
            conn.execute(_UPDATE_THREAD, {
                **params,
                "created": min(row.created_ms, created) if alive else created,
                "updated": max(row.updated_ms, copy.updated_ms),
                "expires": copy.expires_ms if newer or not alive else row.expires_ms,
            })
        ns, tid = self.namespace, copy.thread_id
        if copy.checkpoints:
            conn.execute(self._upsert_checkpoints, [{
                "namespace": ns, "thread_id": tid, "checkpoint_ns": c.checkpoint_ns,
                "checkpoint_id": c.checkpoint_id, "parent_checkpoint_id": c.parent_id,
                "created_ms": c.created_ms, "type": c.type, "checkpoint": c.blob,
                "metadata": orjson.loads(c.metadata)} for c in copy.checkpoints])
        for special, statement in ((False, self._insert_writes), (True, self._upsert_writes)):
            rows = [{"namespace": ns, "thread_id": tid, "checkpoint_ns": cns, "checkpoint_id": cid,
                     "task_id": w.task_id, "idx": w.idx, "channel": w.channel, "type": w.type,
                     "value": w.value, "task_path": w.task_path}
                    for cns, cid, w in copy.writes if (w.idx < 0) == special]
            if rows:
                conn.execute(statement, rows)
        return True

    def mirror(self, copy: ThreadCopy) -> bool:
        """Store a ``write_through`` copy (one checkpoint, or one checkpoint's writes);
        whether the archive took it (see :meth:`absorb`). On PostgreSQL the common
        case is one statement."""
        single = len(copy.checkpoints) + bool(copy.writes) == 1
        if self._pg and copy.created_ms and single and self._run(
                lambda conn: self._mirror_pg(conn, copy), "single"):
            return True
        return self.absorb([copy])[0]

    def _mirror_pg(self, conn: sa.Connection, copy: ThreadCopy) -> bool:
        params = self._params(copy.thread_id, created=copy.created_ms, updated=copy.updated_ms,
                              expires=copy.expires_ms, now=self.now_ms())
        if copy.checkpoints:
            (c,) = copy.checkpoints
            params.update(cns=c.checkpoint_ns, cid=c.checkpoint_id, parent=c.parent_id,
                          cms=c.created_ms, type=c.type, blob=c.blob, meta=c.metadata.decode())
            return conn.execute(_PG_MIRROR_CHECKPOINT, params).first() is not None
        writes = [w for _, _, w in copy.writes]
        cns, cid, _ = copy.writes[0]
        params.update(cns=cns, cid=cid, tasks=[w.task_id for w in writes],
                      idxs=[w.idx for w in writes], channels=[w.channel for w in writes],
                      types=[w.type for w in writes], vals=[w.value for w in writes],
                      paths=[w.task_path for w in writes])
        return bool(conn.execute(_PG_MIRROR_WRITES, params).scalar_one())

    def delete(self, tid: str, tomb_ms: int | None) -> None:
        """Remove the thread's rows and leave its tombstone (``tomb_ms``: Redis's, or
        the archive's clock without a Redis tier)."""

        def work(conn: sa.Connection) -> None:
            params = self._params(tid)
            tomb = tomb_ms if tomb_ms is not None else self.now_ms()
            row = conn.execute(_LOCK_THREAD, params).first()
            if row is None:
                values = {"namespace": self.namespace, "thread_id": tid, "created_ms": 0,
                          "updated_ms": tomb, "expires_ms": tomb + self.tombstone_ms,
                          "deleted_ms": tomb}
                if not conn.execute(self._insert_thread, values).rowcount:
                    raise _Retry
            else:
                tomb = max(tomb, row.deleted_ms or 0, row.created_ms + 1)
                conn.execute(_TOMBSTONE, {**params, "tomb": tomb,
                                          "expires": tomb + self.tombstone_ms})
            conn.execute(_DELETE_WRITES, params)
            conn.execute(_DELETE_CHECKPOINTS, params)

        self._run(work, "writer")

    def prune(self, tid: str, keep: Mapping[str, str]) -> None:
        """Delete each namespace's checkpoints (and writes) older than ``keep[ns]``."""

        def work(conn: sa.Connection) -> None:
            for cns, cid in keep.items():
                params = self._params(tid, cns=cns, keep=cid)
                conn.execute(_PRUNE_WRITES, params)
                conn.execute(_PRUNE_CHECKPOINTS, params)

        if keep:
            self._run(work, "writer")

    def runs(self, run_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """``(thread_id, checkpoint_ns, checkpoint_id)`` of every checkpoint whose
        metadata names one of ``run_ids``."""
        metadata = _C["metadata"]
        if self._pg:  # containment: the GIN index finds them
            match = sa.or_(*(metadata.op("@>")(sa.cast(
                sa.literal(orjson.dumps({"run_id": r}).decode()), postgresql.JSONB))
                for r in run_ids))
        else:
            match = metadata["run_id"].as_string().in_(list(run_ids))
        query = sa.select(_C.thread_id, _C.checkpoint_ns, _C.checkpoint_id).where(
            _C.namespace == _NS, match)

        def work(conn: sa.Connection) -> list[tuple[str, str, str]]:
            return [(r.thread_id, r.checkpoint_ns, r.checkpoint_id)
                    for r in conn.execute(query, {"ns": self.namespace})]

        return self._run(work, "reader", read=True) if run_ids else []

    def drop(self, found: Sequence[tuple[str, str, str]]) -> None:
        """Delete these checkpoints, ``(thread_id, checkpoint_ns, checkpoint_id)``, and
        their writes."""

        def work(conn: sa.Connection) -> None:
            for table in (WRITES, CHECKPOINTS):
                c = table.c
                conn.execute(sa.delete(table).where(
                    c.namespace == _NS,
                    sa.tuple_(c.thread_id, c.checkpoint_ns, c.checkpoint_id).in_(list(found))),
                    {"ns": self.namespace})

        if found:
            self._run(work, "writer")

    # -- reads ---------------------------------------------------------------------------

    def read(self, tid: str, checkpoint_ns: str, checkpoint_id: str | None, *,
             hot: bool = False) -> ColdRead | None:
        """The thread (``None``: not here, deleted or expired) and one checkpoint of it:
        ``checkpoint_id``, or the namespace's newest. ``hot``: the thread lives in
        Redis, so the archived copy's expiry (as of its last archival) does not count."""

        def work(conn: sa.Connection) -> ColdRead | None:
            params = self._params(tid, cns=checkpoint_ns, cid=checkpoint_id)
            thread = conn.execute(_SELECT_THREAD, params).first()
            if thread is None or not _live(thread, self.now_ms(), hot):
                return None
            row = conn.execute(_ONE if checkpoint_id else _NEWEST, params).first()
            found = None
            if row is not None:
                params["cid"] = row.checkpoint_id
                writes = sorted((_write(w) for w in conn.execute(_WRITES_OF, params)),
                                key=lambda w: (w.task_path, w.task_id, w.idx))
                found = Found(tid, _checkpoint(row), tuple(writes), thread.created_ms, "archive")
            return ColdRead(thread.created_ms, thread.expires_ms, found)

        return self._run(work, "reader", read=True)

    def listing(self, tid: str | None, checkpoint_ns: str | None, before: str | None,
                limit: int | None, wanted: Mapping[str, Any] | None, *,
                hot: bool = False) -> list[Found]:
        """Checkpoints newest first (by id), with their writes: of one thread or of all
        (``tid=None``), of one namespace or all, below ``before``, matching ``wanted``
        (``hot``: as for :meth:`read`)."""
        query = (
            sa.select(*_CHECKPOINT_COLUMNS, _T.created_ms.label("generation"))
            .join(THREADS, sa.and_(_T.namespace == _C.namespace, _T.thread_id == _C.thread_id))
            .where(_C.namespace == _NS)
            .order_by(_C.checkpoint_id.desc())
        )
        if tid is not None:
            query = query.where(_C.thread_id == _TID)
        if checkpoint_ns is not None:
            query = query.where(_C.checkpoint_ns == checkpoint_ns)
        if before is not None:
            query = query.where(_C.checkpoint_id < before)
        exact = True
        if wanted:
            scalar = {k: v for k, v in wanted.items()
                      if v is not None and not isinstance(v, dict | list)}
            exact = len(scalar) == len(wanted)
            if self._pg and scalar:
                query = query.where(_C["metadata"].op("@>")(
                    sa.cast(sa.literal(orjson.dumps(scalar).decode()), postgresql.JSONB)))
            exact = exact and self._pg
        if limit is not None and exact:
            query = query.limit(limit)

        def work(conn: sa.Connection) -> list[Found]:
            now = self.now_ms()
            threads: dict[str, bool] = {}
            rows = []
            for row in conn.execute(query, self._params(tid or "")):
                if not matches(row.metadata, wanted):
                    continue
                if row.thread_id not in threads:
                    t = conn.execute(_SELECT_THREAD, self._params(row.thread_id)).first()
                    threads[row.thread_id] = t is not None and _live(t, now, hot)
                if threads[row.thread_id]:
                    rows.append(row)
                    if limit is not None and len(rows) >= limit:
                        break
            return [self._with_writes(conn, row) for row in rows]

        return self._run(work, "reader", read=True)

    def _with_writes(self, conn: sa.Connection, row: Any) -> Found:
        params = self._params(row.thread_id, cns=row.checkpoint_ns, cid=row.checkpoint_id)
        writes = sorted((_write(w) for w in conn.execute(_WRITES_OF, params)),
                        key=lambda w: (w.task_path, w.task_id, w.idx))
        return Found(row.thread_id, _checkpoint(row), tuple(writes), row.generation, "archive")

    def thread_ids(self) -> list[str]:
        """Every live thread here (``list()`` without a thread)."""
        now = self.now_ms()
        query = sa.select(*_THREAD_COLUMNS, _T.thread_id).where(_T.namespace == _NS)

        def work(conn: sa.Connection) -> list[str]:
            return [r.thread_id for r in conn.execute(query, {"ns": self.namespace})
                    if _live(r, now)]

        return self._run(work, "reader", read=True)

    # -- maintenance ---------------------------------------------------------------------

    def sweep(self, *, column: str, cutoff_ms: int, batch_size: int,
              after: tuple[int, str] | None, live: Callable[[list[str]], list[bool]] | None,
              dry_run: bool = False) -> Swept:
        """Delete up to ``batch_size`` threads whose ``column`` (``expires_ms``: expiry,
        ``updated_ms``: retention) is at or before ``cutoff_ms``, with their rows.

        Threads the Redis tier holds (``live``) are left alone: Redis governs them,
        and archival copies them again with their Redis expiry. ``after`` resumes a
        walk by ``(value, thread id)``.
        """
        col = _T[column]
        query = sa.select(_T.thread_id, col.label("at")).where(
            _T.namespace == _NS, col.is_not(None), col <= cutoff_ms)
        if after is not None:
            query = query.where(sa.tuple_(col, _T.thread_id) > sa.tuple_(*after))
        query = query.order_by(col, _T.thread_id).limit(batch_size)
        if self._pg:
            query = query.with_for_update(skip_locked=True)

        def work(conn: sa.Connection) -> Swept:
            rows = conn.execute(query, {"ns": self.namespace}).all()
            ids = [r.thread_id for r in rows]
            alive = live(ids) if live is not None and ids else [False] * len(ids)
            gone = [t for t, hot in zip(ids, alive, strict=True) if not hot]
            if gone and not dry_run:
                for table in (WRITES, CHECKPOINTS, THREADS):
                    conn.execute(sa.delete(table).where(
                        table.c.namespace == _NS, table.c.thread_id.in_(gone)),
                        {"ns": self.namespace})
            last = (rows[-1].at, rows[-1].thread_id) if rows else None
            return Swept(len(ids), len(gone), len(ids) - len(gone), last)

        return self._run(work, "writer")
