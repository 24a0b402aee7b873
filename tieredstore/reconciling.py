"""One history per session across Redis and the archive: mirrors, outboxes, reconciliation.

The plans here are the part of :class:`tieredstore.tiering.TieredCore` that
keeps the two durable tiers agreeing in ``durability="write_through"``:

* **Mirror and outbox.** Every Redis write of a write_through store also
  keeps its record in the session's outbox, atomically, in the same script.
  Once the archive has the write (:meth:`Reconciler._mirror`) the record is
  acknowledged and dropped. When the archive is unreachable the write is
  still acknowledged: its record stays in Redis until the next write to the
  session, or the worker (:func:`tieredstore.maintenance.reconcile`),
  copies it over (:meth:`Reconciler.drain_outbox`).
* **Detached sessions.** When Redis is unreachable the archive takes the
  write itself and marks the session *detached*: the Redis copy, if any, is
  stale. Before that copy is used again it is reconciled
  (:meth:`Reconciler.reconcile`): fenced in Redis (writes and reads refuse
  it), its outbox merged into the archive's history, and replaced by the
  archive's state as a new generation with a higher version. A process that
  saw Redis fail reconciles every detached session before its next Redis
  call; a mirror that reaches a detached session reconciles it on the spot;
  the worker sweeps the rest.

Each archive row and each Redis hash records its generation (``created_ms``)
and every cross-tier copy is conditional on it, see :mod:`tieredstore.tiering`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from tieredstore.errors import BackendUnavailable
from tieredstore.plans import Op, Plan
from tieredstore.tiers.transfer import SessionFenced, Snapshot, WriteReceipt

__all__ = ["Reconciler", "archive_op", "redis_op"]

log = logging.getLogger(__name__)

_SWEEP_BATCH = 1000


def redis_op(name: str, *args: Any, **kwargs: Any) -> Op:
    """A call of the Redis tier's method ``name`` (see :mod:`tieredstore.plans`)."""
    return Op("redis", name, args, kwargs)


def archive_op(name: str, *args: Any, **kwargs: Any) -> Op:
    """A call of the archive tier's method ``name``."""
    return Op("archive", name, args, kwargs)


_redis, _archive = redis_op, archive_op


class Reconciler:
    """Mirroring, outbox draining and reconciliation plans (a mixin of ``TieredCore``).

    ``_redis_lost`` is set when a Redis call fails in write_through mode: the
    archive may then take writes that leave Redis copies stale, so the next
    Redis call first reconciles every detached session.
    """

    stats: dict[str, Any]
    _archive_window: Callable[[str], Plan[Snapshot | None]]
    _memory_forget: Callable[[str], None]

    @property
    def write_through(self) -> bool:
        raise NotImplementedError

    def _init_reconciler(self) -> None:
        # Redis failures seen, and how many of them a completed sweep covers.
        self._redis_failures = 0
        self._swept_failures = 0
        self._sweep_lock = threading.Lock()

    @property
    def _redis_lost(self) -> bool:
        return self._redis_failures > self._swept_failures

    def _note_redis_down(self) -> None:
        if not self.write_through:
            return
        if not self._redis_lost:
            log.info("Redis unreachable: write_through writes go to the archive alone")
        self._redis_failures += 1

    def _note_redis_up(self, swept: int) -> None:
        """A Redis call succeeded after a sweep covering ``swept`` failures."""
        if swept > self._swept_failures:
            with self._sweep_lock:
                if swept > self._swept_failures:
                    self._swept_failures = swept
                    if not self._redis_lost:
                        log.info("Redis reachable again: detached sessions reconciled")

    def _before_redis(self) -> Plan[int]:
        """After Redis was lost, reconcile the detached sessions before using Redis again.

        Returns how many failures the sweep covers (0: none was needed); the
        caller confirms it with :meth:`_note_redis_up` once Redis answers.
        """
        if not self._redis_lost:
            return 0
        failures = self._redis_failures
        while True:
            sids: list[str] = yield _archive("detached_sessions", _SWEEP_BATCH)
            for sid in sids:
                yield from self.reconcile(sid)
            if len(sids) < _SWEEP_BATCH:
                return failures

    # -- reconciliation -------------------------------------------------------------

    def reconcile(self, sid: str) -> Plan[int]:
        """Give ``sid`` one history again; the version it then has (0: none).

        Fences the Redis copy, lets the archive absorb its outbox (the archive
        decides, see :class:`tieredstore.tiers.archive.Reconciled`), then
        settles the Redis copy accordingly. Safe to run concurrently and
        repeatedly: every step is conditional.
        """
        fenced = yield _redis("fence", sid)
        decision = yield _archive("reconcile", sid, fenced)
        self._memory_forget(sid)
        if decision.action == "drop":
            yield _redis("write_delete", sid, floor_ms=decision.tombstone_ms)
            return 0
        if decision.action == "unfence":
            yield _redis("unfence", sid, fenced.created_ms if fenced is not None else 0)
            return int(fenced.version) if fenced is not None else 0
        if decision.action == "promote":
            snap = yield from self._archive_window(sid)
            if snap is not None:
                yield _redis("promote", snap)
            return int(decision.version)
        return int(decision.version)

    # -- mirroring and the outbox -------------------------------------------------------

    def _mirror(self, sid: str, receipt: WriteReceipt, mirror: Op) -> Plan[int]:
        """Apply a Redis write to the archive, then acknowledge its outbox record.

        Returns the version the caller reports: the write's, or the version a
        reconciliation gave the session (the write is part of it). With the
        archive down the write stays in the outbox and is acknowledged.
        """
        if receipt.pending > 1:
            # Older writes wait in the outbox: copy them all, in order, this one included.
            try:
                _, reconciled = yield from self._drain(sid)
            except BackendUnavailable as exc:
                if exc.backend != "redis":
                    self.stats["archive"].errors += 1
                    return receipt.version
                # Redis failed under the drain: the write must still reach the
                # archive before it is acknowledged (Redis alone may lose it).
            else:
                # Reconciled on the way (Redis numbered a write over one it lost):
                # the write is part of the new history, whose version is above both.
                return reconciled or receipt.version
        try:
            applied = yield mirror
            if not applied:
                yield from self._settle_mirror(sid)
        except SessionFenced:
            return (yield from self.reconcile(sid)) or receipt.version
        except BackendUnavailable:
            self.stats["archive"].errors += 1
            return receipt.version
        try:
            left = yield _redis("outbox_ack", sid, receipt.created_ms, [receipt.version])
        except BackendUnavailable:
            return receipt.version
        if left:
            # Others' records: this write is in the archive already, whatever happens to them.
            with contextlib.suppress(BackendUnavailable):
                yield from self.drain_outbox(sid)
        return receipt.version

    def _settle_mirror(self, sid: str) -> Plan[None]:
        """Settle a write-through mirror the archive could not apply on its own.

        Concurrent writers' mirrors may reach the archive out of order; one
        that finds no session yet (or a newer version) is settled by copying
        the session's current Redis state, which includes the write.
        """
        snap = yield _redis("snapshot", sid, None)
        if snap is not None:
            yield _archive("restore", snap)

    def drain_outbox(self, sid: str) -> Plan[int]:
        """Copy every outbox record of ``sid`` into the archive; how many were drained."""
        drained, _ = yield from self._drain(sid)
        return drained

    def _drain(self, sid: str) -> Plan[tuple[int, int]]:
        """:meth:`drain_outbox`, also returning the version a reconciliation on the
        way gave the session (0: none happened)."""
        try:
            created, records = yield _redis("outbox_records", sid)
        except SessionFenced:
            return 0, (yield from self.reconcile(sid))
        done: list[int] = []
        failure: BackendUnavailable | None = None
        fenced = False
        try:
            for record in records:
                if record.op == "m":
                    applied = yield _archive(
                        "mirror_metadata", sid, record.metadata, record.receipt
                    )
                else:
                    applied = yield _archive(
                        "mirror",
                        sid,
                        record.batch,
                        record.receipt,
                        replace=record.op == "s",
                        metadata=record.metadata,
                        user_id=record.user_id,
                    )
                if not applied:
                    yield from self._settle_mirror(sid)
                done.append(record.receipt.version)
        except SessionFenced:
            fenced = True
        except BackendUnavailable as exc:
            failure = exc
        if done:
            # On failure the records stay and are drained again (mirrors are idempotent).
            with contextlib.suppress(BackendUnavailable):
                yield _redis("outbox_ack", sid, created, done)
        reconciled = (yield from self.reconcile(sid)) if fenced else 0
        if failure is not None:
            raise failure
        return len(done), reconciled

    def settle(self, limit: int) -> Plan[tuple[int, int, bool]]:
        """Reconcile up to ``limit`` detached sessions and drain up to ``limit``
        outboxes: ``(reconciled, outbox records drained, more work left)``."""
        detached: list[str] = yield _archive("detached_sessions", limit)
        for sid in detached:
            yield from self.reconcile(sid)
        waiting: list[str] = yield _redis("outbox_sessions", limit)
        drained = 0
        for sid in waiting:
            drained += yield from self.drain_outbox(sid)
        return len(detached), drained, len(detached) >= limit or len(waiting) >= limit
