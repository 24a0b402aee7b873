"""``RedisStore``: the sync shell of the Redis tier (see :mod:`.plans`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import NoScriptError

from tieredstore.base import BaseStore
from tieredstore.breaker import CircuitBreaker
from tieredstore.core import Batch, Order, check_limit
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.tiers.redis.errors import (
    DRIVER_FAULTS,
    REDIS_ERRORS,
    driver_fault,
    raise_first,
    translate,
    used_memory,
)
from tieredstore.tiers.redis.keys import DEFAULT_BUCKETS
from tieredstore.tiers.redis.multi import transaction
from tieredstore.tiers.redis.plans import Plan
from tieredstore.tiers.redis.records import (
    Call,
    Calls,
    Captured,
    Commands,
    Fenced,
    OutboxRecord,
    Spilled,
)
from tieredstore.tiers.redis.shell import RedisShared, evalsha_args, redis_down, source
from tieredstore.tiers.transfer import DEFAULT_TOMBSTONE_TTL, HistoryPart, Snapshot, WriteReceipt

__all__ = ["RedisStore"]

T = TypeVar("T")


class RedisStore(RedisShared, BaseStore):
    """Sessions in Redis: one LIST and one HASH per session, sorted-set indexes.

    Pass a ``redis.Redis`` ``client`` (kept open on :meth:`close`), a ``url``
    or a ``connection_pool`` (the store then owns the client it builds), or
    nothing for ``redis://localhost:6379/0``. The client must return bytes:
    a ``decode_responses=True`` client is rejected with :class:`InvalidInput`
    (binary entries are decoded by the store's codec, not by redis-py).

    ``publish``: every write script announces the session's new generation on
    :attr:`invalidation_channel`. ``spill``: entries a trim drops are kept in
    a per-session spill list (see :meth:`spilled`) until the archival worker
    has copied them (:meth:`drain_spill`), instead of being discarded.

    A client the store builds gets :data:`~tieredstore.timeouts.REDIS_TIMEOUTS`
    unless told otherwise. ``breaker`` (a :class:`~tieredstore.CircuitBreaker`,
    ``True`` for the defaults, ``False`` for none) fails calls fast while
    Redis is down.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        url: str | None = None,
        connection_pool: redis.ConnectionPool | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        publish: bool = True,
        spill: bool = False,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        breaker: CircuitBreaker | bool = True,
        buckets: int = DEFAULT_BUCKETS,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._setup(
            client,
            url,
            connection_pool,
            namespace=namespace,
            prefix=prefix,
            publish=publish,
            spill=spill,
            tombstone_ttl=tombstone_ttl,
            breaker=breaker,
            buckets=buckets,
        )

    # -- the I/O shell ------------------------------------------------------

    def _drive(self, plan: Plan[T]) -> T:
        """Run a plan's calls; driver errors become ours (see :mod:`.errors`).

        Each call passes the circuit breaker, which fails it fast while open.
        The first call of a store checks the namespace's bucket count.
        """
        if not self._layout_checked:
            self._drive_plan(self._layout_plan())
        return self._drive_plan(plan)

    def _drive_plan(self, plan: Plan[T]) -> T:
        breaker = self.breaker
        try:
            call = next(plan)
            while True:
                try:
                    with breaker.guard(redis_down):
                        reply = self._send(call)
                except REDIS_ERRORS as exc:
                    raise translate(exc) from exc
                except DRIVER_FAULTS as exc:
                    if not driver_fault(exc):
                        raise
                    raise translate(exc) from exc
                call = plan.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _send(self, call: Call | Calls | Commands) -> Any:
        client = self.client
        if isinstance(call, Call):
            return self._eval(call)
        if isinstance(call, Commands) and call.atomic:
            return transaction(client, call.commands)
        pipe = client.pipeline(transaction=False)
        if isinstance(call, Commands):
            for command in call.commands:
                pipe.execute_command(*command)
            return pipe.execute()
        if self.cluster:
            return raise_first(self._cluster_calls(call.calls))
        for each in call.calls:
            pipe.evalsha(*evalsha_args(each))
        replies = pipe.execute(raise_on_error=False)
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            for name in {call.calls[i].script for i in unknown}:
                client.script_load(source(name))
            pipe = client.pipeline(transaction=False)
            for i in unknown:
                pipe.evalsha(*evalsha_args(call.calls[i]))
            for i, reply in zip(unknown, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        return raise_first(replies)

    def _eval(self, call: Call) -> Any:
        try:
            return self.client.evalsha(*evalsha_args(call))
        except NoScriptError:
            self.client.script_load(source(call.script))
            return self.client.evalsha(*evalsha_args(call))

    def _cluster_calls(self, calls: list[Call]) -> list[Any]:
        """Scripts on a cluster: one pipeline per node owning their slots (the
        cluster pipeline refuses EVALSHA); a call the node did not run (moved
        slot, unknown script, lost connection) goes again through the client,
        which follows redirections."""
        client = self.client
        by_node: dict[str, list[int]] = {}
        nodes: dict[str, Any] = {}
        for i, each in enumerate(calls):
            node = client.get_node_from_key(each.keys[0])
            by_node.setdefault(node.name, []).append(i)
            nodes[node.name] = node
        replies: list[Any] = [None] * len(calls)
        for name, positions in by_node.items():
            pipe = nodes[name].redis_connection.pipeline(transaction=False)
            for i in positions:
                pipe.evalsha(*evalsha_args(calls[i]))
            try:
                answers = pipe.execute(raise_on_error=False)
            except REDIS_ERRORS:
                answers = [None] * len(positions)
            for i, answer in zip(positions, answers, strict=True):
                if answer is None or isinstance(answer, BaseException):
                    answer = self._eval(calls[i])
                replies[i] = answer
        return replies

    def _close(self) -> None:
        if self._owns_client:
            self.client.close()

    # -- primitives -----------------------------------------------------------

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
            self._ops.save_version(
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
            self._ops.append_version(sid, batch, ttl_ms=ttl_ms, expected_version=expected_version)
        )

    def _load(self, sid: str, last: int | None) -> list[Message]:
        return self._drive(self._ops.load(sid, last))

    def _get(self, sid: str, last: int | None) -> Session:
        return self._drive(self._ops.get(sid, last))

    def _count(self, sid: str) -> int:
        return self._drive(self._ops.count(sid))

    def _exists(self, sid: str) -> bool:
        return self._drive(self._ops.exists(sid))

    def _merge_metadata(self, sid: str, updates: FrozenDict) -> FrozenDict:
        return self._drive(self._ops.merged_metadata(sid, updates))

    def _delete(self, sid: str) -> bool:
        return self._drive(self._ops.delete(sid))

    def _list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Page:
        return self._drive(self._ops.list(user_id, limit, cursor, order))

    def _fork(self, src: str, dst: str, *, ttl_ms: int | None) -> int:
        return self._drive(self._ops.fork(src, dst, ttl_ms=ttl_ms))

    # -- the tiered layer (TieredStore's view of this tier) ---------------------
    #
    # These take prepared input (a validated Batch, FrozenDict metadata, TTLs
    # in ms) like the primitives above; session ids are checked again (cheap).

    def write_save(
        self,
        sid: str,
        *,
        batch: Batch,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> WriteReceipt | None:
        """``save`` returning where its messages landed; ``None`` (nothing written)
        when ``create=False`` and the session is missing here. ``outbox`` keeps
        the write in the session's outbox until :meth:`outbox_ack`."""
        return self._drive(
            self._ops.save(
                self._sid(sid),
                batch,
                ttl_ms=ttl_ms,
                metadata=metadata,
                user_id=user_id,
                expected_version=expected_version,
                create=create,
                outbox=outbox,
            )
        )

    def write_append(
        self,
        sid: str,
        *,
        batch: Batch,
        ttl_ms: int | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> WriteReceipt | None:
        """``append`` returning where its messages landed; ``None`` (nothing written)
        when ``create=False`` and the session is missing here."""
        return self._drive(
            self._ops.append(
                self._sid(sid),
                batch,
                ttl_ms=ttl_ms,
                expected_version=expected_version,
                create=create,
                outbox=outbox,
            )
        )

    def write_merge_metadata(
        self, sid: str, updates: FrozenDict, *, outbox: bool = False
    ) -> tuple[FrozenDict, WriteReceipt]:
        """``merge_metadata`` returning the merged metadata and a receipt
        (``first_seq == next_seq``: no message was written)."""
        return self._drive(self._ops.merge_metadata(self._sid(sid), updates, outbox))

    def write_delete(self, sid: str, *, floor_ms: int = 0) -> tuple[bool, int]:
        """Delete and leave a tombstone (see the module docstring): ``(existed, tombstone_ms)``.

        Copies of every generation created before the tombstone are refused
        by :meth:`restore`; a new generation is created at or after it.
        """
        return self._drive(self._ops.delete_tombstoned(self._sid(sid), floor_ms))

    def fence(self, sid: str) -> Fenced | None:
        """Freeze the session for reconciliation (writes then raise
        :class:`SessionFenced`); its generation and outbox, or ``None`` if missing."""
        return self._drive(self._ops.fence(self._sid(sid)))

    def unfence(self, sid: str, created_ms: int) -> None:
        """Lift the fence of generation ``created_ms`` (reconciliation found it current)."""
        self._drive(self._ops.unfence(self._sid(sid), created_ms))

    def outbox_records(self, sid: str) -> tuple[int, list[OutboxRecord]]:
        """The session's generation and its outbox records, oldest first."""
        return self._drive(self._ops.outbox_records(self._sid(sid)))

    def outbox_ack(self, sid: str, created_ms: int, versions: Sequence[int]) -> int:
        """Drop the outbox records of these versions of generation ``created_ms``
        (the archive holds them); how many records are left."""
        return self._drive(self._ops.outbox_ack(self._sid(sid), created_ms, versions))

    def outbox_sessions(self, limit: int = 1000) -> list[str]:
        """Sessions holding outbox records, the longest-waiting first."""
        return self._drive(self._ops.outbox_sessions(check_limit(limit)))

    def snapshot(
        self, sid: str, last: int | None = None, *, refresh: bool = False
    ) -> Snapshot | None:
        """The session's hot window (its newest ``last`` entries) with seqs and
        bookkeeping in one round trip, or ``None`` if missing. ``refresh``
        slides the expiry by the stored TTL in the same script. Spilled
        entries are not part of it."""
        return self._drive(self._ops.snapshot(self._sid(sid), last, refresh))

    def restore(self, snapshot: Snapshot) -> bool:
        """Write ``snapshot`` (a window another tier chose) only if the session is
        absent here; ``False`` when present or when its ``expires_ms`` has passed.

        Seqs, kinds, version, times, user, metadata, next/base seq and the
        absolute expiry are kept as given; nothing is trimmed. No invalidation
        is published: the logical state did not change. A copy of a generation
        created before the session's tombstone is refused.
        """
        return self._drive(self._ops.restore(snapshot)) == 1

    def promote(self, snapshot: Snapshot) -> int:
        """:meth:`restore`, also over a fenced copy of an older generation:
        1 written, 0 present, -1 refused (deleted generation, or expired)."""
        return self._drive(self._ops.restore(snapshot))

    def history_page(self, sid: str, before: int | None, limit: int) -> HistoryPart | None:
        """The newest ``limit`` messages with seq below ``before`` (any when
        ``None``), window and spill list together, oldest first, as
        ``(seq, message)`` with the generation and base seq; ``None`` if the
        session is missing (or fenced). One round trip."""
        return self._drive(self._ops.history_page(self._sid(sid), before, limit))

    def list_keys(
        self, user_id: str | None, limit: int, position: tuple[int, str] | None, order: Order
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` ``(updated_ms, session_id)`` of live sessions strictly
        after ``position`` in ``order``: the keyset behind :meth:`list`."""
        return self._drive(self._ops.list_keys(user_id, limit, position, order))

    def exists_many(self, sids: Sequence[str]) -> list[bool]:
        """Whether each session is live here, in one pipelined round trip."""
        return self._drive(self._ops.exists_many(sids))

    def drop(self, sid: str) -> bool:
        """Remove the session from this tier (as :meth:`delete`, publishing the
        invalidation): for copies known to be stale."""
        return self._drive(self._ops.delete(self._sid(sid)))

    # -- archival support ---------------------------------------------------------

    def spilled(self, sid: str, limit: int | None = None) -> list[Spilled]:
        """The oldest ``limit`` (all by default) spilled entries, oldest first.

        With ``spill=True`` these are the messages trims moved out of the hot
        window and the archive does not yet hold; ``[]`` when there are none.
        """
        return self._drive(self._ops.spilled(self._sid(sid), limit))

    def drain_spill(self, sid: str, upto_seq: int, *, created_ms: int | None = None) -> int:
        """Atomically remove the spilled entries with seq ``<= upto_seq``; how many.

        Pass the ``created_ms`` of the snapshot the entries were archived with
        so that a session deleted and re-created meanwhile (whose seqs start
        again at 0) loses nothing: then nothing is removed.
        """
        return self._drive(self._ops.drain_spill(self._sid(sid), upto_seq, created_ms))

    def evict(self, sid: str, *, created_ms: int, version: int) -> bool:
        """Compare-and-delete for archival: remove the session (spill included)
        only while it is still that generation; no invalidation is published
        (the archive holds the same state). ``True`` if removed."""
        return self._drive(self._ops.evict(self._sid(sid), created_ms, version))

    # -- maintenance ------------------------------------------------------------

    def purge_expired(self, *, batch_size: int = 1000) -> int:
        """Drop expired sessions from the indexes (and any keys left), ``batch_size`` per script.

        Reads and ``list`` skip expired sessions anyway and Redis expires their
        keys itself; this reclaims the index entries of sessions nobody lists.
        Returns how many were removed.
        """
        return self._drive(self._upkeep.purge_expired(batch_size))

    def stats(self) -> dict[str, Any]:
        """Indexed and expiring session counts and Redis memory use (one round trip).

        Also the circuit breaker's state and counters (``breaker``).
        """
        counts = self._drive(self._ops.stats())
        return {**counts, "used_memory": self._used_memory(), "breaker": self.breaker.stats()}

    def _used_memory(self) -> int:
        """``used_memory`` of the server, or summed over a cluster's primaries."""
        try:
            if self.cluster:
                return used_memory(self.client.info("memory", target_nodes=self.client.PRIMARIES))
            return used_memory(self.client.info("memory"))
        except REDIS_ERRORS as exc:
            raise translate(exc) from exc

    # -- maintenance, bucket by bucket (see tieredstore.maintenance) ---------------------

    @property
    def bucket_count(self) -> int:
        """B: the namespace's buckets, numbered ``0 .. B - 1``."""
        return self.keys.buckets

    def now_ms(self) -> int:
        """The Redis server's clock (unix ms)."""
        return self._drive(self._upkeep.now_ms())

    def claim_buckets(
        self, buckets: Sequence[int], task: str, holder: str, ttl_ms: int
    ) -> list[int]:
        """Take ``task``'s lease on each of ``buckets`` nobody holds, for
        ``ttl_ms``; the buckets taken (a crashed holder's lease just expires)."""
        return self._drive(self._upkeep.claim(buckets, task, holder, ttl_ms))

    def renew_bucket(self, bucket: int, task: str, holder: str, ttl_ms: int) -> bool:
        """Extend a lease this ``holder`` has; ``False`` if it lost it."""
        return self._drive(self._upkeep.renew(bucket, task, holder, ttl_ms))

    def release_buckets(self, buckets: Sequence[int], task: str, holder: str) -> None:
        """Give up the leases ``holder`` still has on ``buckets``."""
        self._drive(self._upkeep.release(buckets, task, holder))

    def lap_state(self, task: str) -> tuple[int, dict[int, int | None]]:
        """The lap a bucket-walking ``task`` is on and each bucket's place in it
        (the rank to go on from; ``None``: the bucket finished this lap)."""
        return self._drive(self._upkeep.lap_state(task))

    def set_place(self, bucket: int, task: str, lap: int, place: int | None) -> None:
        """Record ``bucket``'s place in ``lap`` (``None``: finished it)."""
        self._drive(self._upkeep.set_place(bucket, task, lap, place))

    def finish_lap(self, task: str, lap: int) -> int:
        """End ``lap`` of ``task`` once every bucket finished it; the lap now."""
        return self._drive(self._upkeep.finish_lap(task, lap))

    def count_expired(self, buckets: Sequence[int] | None = None) -> int:
        """Index entries past their expiry (in ``buckets``, default all)."""
        return self._drive(self._upkeep.count_expired(buckets))

    def count_idle(self, older_than_ms: int, buckets: Sequence[int] | None = None) -> int:
        """Sessions last active before ``older_than_ms`` (in ``buckets``, default all)."""
        return self._drive(self._upkeep.count_idle(buckets, older_than_ms))

    def count_indexed(self, buckets: Sequence[int] | None = None) -> int:
        return self._drive(self._upkeep.count_indexed(buckets))

    def idle_keys(
        self, bucket: int, older_than_ms: int, limit: int, position: tuple[int, str] | None
    ) -> list[tuple[int, str]]:
        """``(updated_ms, sid)`` of ``bucket``'s sessions idle since before
        ``older_than_ms``, oldest first, strictly after ``position``."""
        return self._drive(self._upkeep.idle_keys(bucket, older_than_ms, limit, position))

    def ranked(self, bucket: int, start: int, count: int) -> list[str]:
        """The sessions at ranks ``start ..`` of ``bucket``'s activity index."""
        return self._drive(self._upkeep.ranked(bucket, start, count))

    def capture_many(self, sids: Sequence[str]) -> list[Captured | None]:
        """Hash, window and spill list of sessions of one bucket, read atomically."""
        return self._drive(self._upkeep.capture_many(sids))

    def live_expiry(self, sids: list[str]) -> dict[str, int | None]:
        """The sessions among ``sids`` live here, with their expiry."""
        return self._drive(self._upkeep.live_expiry(sids))

    def window_sizes(self, sids: Sequence[str]) -> list[tuple[int, int]]:
        """``(window length, spill length)`` of each session."""
        return self._drive(self._upkeep.window_sizes(sids))

    def evict_many(self, bucket: int, captured: Sequence[Captured]) -> list[bool]:
        """:meth:`evict` for captured sessions of ``bucket``, in one script."""
        return self._drive(self._upkeep.evict_many(bucket, captured))

    def trim_many(self, plans: Sequence[tuple[Captured, int, int, int]]) -> list[bool]:
        """Trim/drain each ``(captured, lead, drop, drain_upto)`` if unchanged."""
        return self._drive(self._upkeep.trim_many(plans))

    def purge_batch(self, bucket: int, batch_size: int) -> int:
        """Bury up to ``batch_size`` expired sessions of ``bucket``; how many were due."""
        return self._drive(self._upkeep.purge_batch(bucket, batch_size))

    def sweep(
        self, bucket: int, start: int, count: int, dry_run: bool = False
    ) -> tuple[int, int, int, int]:
        """Check ``count`` index entries of ``bucket`` from rank ``start``
        against the sessions' keys: ``(scanned, gone, ttl fixed, expired)``."""
        return self._drive(self._upkeep.sweep(bucket, start, count, dry_run))

    # -- session locks (the backend of tieredstore.locking) ------------------------

    def lock_acquire(self, sid: str, token: str, ttl_ms: int) -> bool:
        return self._drive(self._ops.lock_acquire(sid, token, ttl_ms))

    def lock_release(self, sid: str, token: str) -> bool:
        return self._drive(self._ops.lock_release(sid, token))

    def lock_extend(self, sid: str, token: str, ttl_ms: int) -> bool:
        return self._drive(self._ops.lock_extend(sid, token, ttl_ms))

    def lock_held(self, sid: str) -> bool:
        return self._drive(self._ops.lock_held(sid))
