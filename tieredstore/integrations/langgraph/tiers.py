"""Where each checkpoint operation goes: memory, Redis, the archive.

:class:`CheckpointTiers` holds every tier decision of the LangGraph saver,
on stored records (no LangGraph types), so the saver only converts.

* **Writes** go to Redis, one script each; with ``durability="write_through"``
  they are then committed to the archive before the call returns (a Redis
  flush loses nothing acknowledged). Without Redis the archive is the store.
* **Reads** ask Redis (one round trip; with a memory tier the checkpoint's
  record is not sent again when this process holds it). What Redis lacks —
  a thread archived whole, checkpoints beyond its hot window, or Redis being
  unreachable — is read from the archive; reading a cold thread's newest
  checkpoint copies it (with its writes) back into Redis.
* **Deletes** go to Redis first (which leaves a tombstone), then to the
  archive (which keeps one too), so no copy in flight brings a thread back.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from cachetools import LRUCache

from tieredstore.config import Limits
from tieredstore.errors import BackendUnavailable, InvalidInput
from tieredstore.integrations.langgraph.cold import ColdCheckpoints, matches
from tieredstore.integrations.langgraph.hot import HAVE, HotCheckpoints
from tieredstore.integrations.langgraph.records import (
    Found,
    StoredCheckpoint,
    StoredWrite,
    ThreadCopy,
    member,
    merge_writes,
    pack_checkpoint,
    unpack_checkpoint,
)

__all__ = ["DELTA_KEY", "CheckpointTiers", "Durability", "RecordCache"]

Durability = Literal["archive", "write_through"]

DELTA_KEY = "counters_since_delta_snapshot"
"""Metadata key of checkpoints of threads that use a ``DeltaChannel``."""

_ENTRY_OVERHEAD = 200


class RecordCache:
    """The memory tier: encoded checkpoint records this process wrote or read.

    Each entry names its thread's generation, so it never stands for another
    incarnation of the thread. A read still asks Redis which checkpoint is
    current (and for its pending writes); only the record itself, the whole
    state of the graph, is not sent again. Records are decoded on every read,
    so callers never share objects.
    """

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise InvalidInput(f"memory_max_bytes must be a positive integer, got {max_bytes!r}")
        self._records: LRUCache[tuple[str, str], tuple[int, bytes]] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda entry: len(entry[1]) + _ENTRY_OVERHEAD)
        self._newest: LRUCache[tuple[str, str], tuple[int, str]] = LRUCache(maxsize=4096)
        self._lock = threading.Lock()
        self.hits = 0

    def held(self, tid: str, checkpoint_ns: str,
             checkpoint_id: str | None) -> tuple[int, str] | None:
        """``(generation, checkpoint id)`` of the record to offer Redis for this read."""
        with self._lock:
            if checkpoint_id is None:
                return self._newest.get((tid, checkpoint_ns))
            entry = self._records.get((tid, member(checkpoint_ns, checkpoint_id)))
            return None if entry is None else (entry[0], checkpoint_id)

    def get(self, tid: str, created: int, checkpoint_ns: str, checkpoint_id: str) -> bytes | None:
        with self._lock:
            entry = self._records.get((tid, member(checkpoint_ns, checkpoint_id)))
            if entry is None or entry[0] != created:
                return None
            self.hits += 1
            return entry[1]

    def put(self, tid: str, created: int, checkpoint_ns: str, checkpoint_id: str,
            record: bytes, *, newest: bool) -> None:
        with self._lock:
            if len(record) + _ENTRY_OVERHEAD <= self._records.maxsize:
                self._records[(tid, member(checkpoint_ns, checkpoint_id))] = (created, record)
            if newest:
                self._newest[(tid, checkpoint_ns)] = (created, checkpoint_id)


class CheckpointTiers:
    """The checkpoint operations over the tiers a saver has (at least one)."""

    def __init__(
        self,
        hot: HotCheckpoints | None,
        cold: ColdCheckpoints | None,
        *,
        durability: Durability = "archive",
        ttl_ms: int | None = None,
        memory: RecordCache | None = None,
        limits: Limits | None = None,
    ) -> None:
        if hot is None and cold is None:
            raise InvalidInput("a checkpoint saver needs Redis, an archive, or both")
        if durability not in ("archive", "write_through"):
            raise InvalidInput(
                f"durability must be 'archive' or 'write_through', got {durability!r}")
        if memory is not None and hot is None:
            raise InvalidInput("the memory tier needs Redis (it asks Redis what is current)")
        self.hot = hot
        self.cold = cold
        self.durability = durability
        self.ttl_ms = ttl_ms
        self.memory = memory
        self.limits = limits or Limits()
        self._mirror = cold is not None and (hot is None or durability == "write_through")

    def _expires(self, now_ms: int) -> int | None:
        return None if self.ttl_ms is None else now_ms + self.ttl_ms

    # -- writes ------------------------------------------------------------------------

    def put(self, tid: str, checkpoint: StoredCheckpoint) -> None:
        record = pack_checkpoint(checkpoint, self.limits)
        if self.hot is None:
            assert self.cold is not None
            now = self.cold.now_ms()
            self.cold.absorb([ThreadCopy(tid, 0, now, self._expires(now), (checkpoint,), ())])
            return
        written = self.hot.put(tid, checkpoint, record, self.ttl_ms)
        if self.memory is not None:
            self.memory.put(tid, written.created_ms, checkpoint.checkpoint_ns,
                            checkpoint.checkpoint_id, record, newest=True)
        if self._mirror:
            assert self.cold is not None
            self.cold.mirror(ThreadCopy(tid, written.created_ms, checkpoint.created_ms,
                                        written.expires_ms, (checkpoint,), ()))

    def put_writes(self, tid: str, checkpoint_ns: str, checkpoint_id: str,
                   writes: Sequence[StoredWrite], now_ms: int) -> None:
        if not writes:
            return
        tagged = tuple((checkpoint_ns, checkpoint_id, w) for w in writes)
        if self.hot is None:
            assert self.cold is not None
            now = self.cold.now_ms()
            self.cold.absorb([ThreadCopy(tid, 0, now, self._expires(now), (), tagged)])
            return
        written = self.hot.put_writes(tid, checkpoint_ns, checkpoint_id, writes, self.ttl_ms)
        if self._mirror:
            assert self.cold is not None
            self.cold.mirror(ThreadCopy(tid, written.created_ms, now_ms, written.expires_ms, (),
                                        tagged))

    def delete(self, tid: str) -> None:
        """Remove the thread from every tier; Redis first, so its tombstone stands
        before the archive's rows go (a failure leaves the delete to be retried)."""
        tomb = None
        if self.hot is not None:
            _, tomb = self.hot.delete(tid)
        if self.cold is not None:
            self.cold.delete(tid, tomb)

    # -- reads -------------------------------------------------------------------------

    def get(self, tid: str, checkpoint_ns: str, checkpoint_id: str | None) -> Found | None:
        """One checkpoint with its writes (the namespace's newest without an id)."""
        return self._get(tid, checkpoint_ns, checkpoint_id, self.memory)

    def _get(self, tid: str, checkpoint_ns: str, checkpoint_id: str | None,
             memory: RecordCache | None) -> Found | None:
        hot_read = None
        if self.hot is not None:
            held = memory.held(tid, checkpoint_ns, checkpoint_id) if memory else None
            try:
                hot_read = self.hot.read(tid, checkpoint_ns, checkpoint_id, held)
            except BackendUnavailable:
                if self.cold is None:
                    raise
                return self._from_archive(tid, checkpoint_ns, checkpoint_id, promote=False)
            if hot_read is not None and hot_read.record is not None:
                cid = hot_read.checkpoint_id
                assert cid is not None
                record, tier = hot_read.record, "redis"
                if record == HAVE and memory is not None:
                    cached = memory.get(tid, hot_read.created_ms, checkpoint_ns, cid)
                    if cached is None:  # evicted since it was offered: ask again, in full
                        return self._get(tid, checkpoint_ns, checkpoint_id, None)
                    record, tier = cached, "memory"
                elif memory is not None:
                    memory.put(tid, hot_read.created_ms, checkpoint_ns, cid, record,
                               newest=checkpoint_id is None)
                return Found(tid, unpack_checkpoint(record, checkpoint_ns, cid),
                             hot_read.writes, hot_read.created_ms, tier)
        if self.cold is None:
            return None
        found = self._from_archive(tid, checkpoint_ns, checkpoint_id,
                                   promote=hot_read is None and checkpoint_id is None,
                                   hot=hot_read is not None)
        if found is not None and hot_read is not None:
            # The thread is hot but this checkpoint is archived: Redis may hold
            # writes made to it since.
            hot_writes = hot_read.writes
            if checkpoint_id is None:
                again = self._hot_writes(tid, checkpoint_ns, found.checkpoint.checkpoint_id)
                hot_writes = again if again is not None else ()
            if hot_writes:
                found = Found(tid, found.checkpoint, merge_writes(found.writes, hot_writes),
                              found.created_ms, found.tier)
        return found

    def _hot_writes(self, tid: str, checkpoint_ns: str,
                    checkpoint_id: str) -> tuple[StoredWrite, ...] | None:
        assert self.hot is not None
        try:
            again = self.hot.read(tid, checkpoint_ns, checkpoint_id)
        except BackendUnavailable:
            return None
        return again.writes if again is not None else None

    def _from_archive(self, tid: str, checkpoint_ns: str, checkpoint_id: str | None, *,
                      promote: bool, hot: bool = False) -> Found | None:
        assert self.cold is not None
        read = self.cold.read(tid, checkpoint_ns, checkpoint_id, hot=hot)
        if read is None or read.found is None:
            return None
        found = read.found
        if promote and self.hot is not None:
            record = pack_checkpoint(found.checkpoint, self.limits)
            try:
                promoted = self.hot.promote(tid, found, read.expires_ms, record)
            except BackendUnavailable:
                promoted = 0
            if promoted == 1 and self.memory is not None:
                cp = found.checkpoint
                self.memory.put(tid, found.created_ms, cp.checkpoint_ns, cp.checkpoint_id,
                                record, newest=True)
        return found

    def listing(self, tid: str | None, checkpoint_ns: str | None, before: str | None,
                limit: int | None, wanted: Mapping[str, Any] | None) -> list[Found]:
        """Checkpoints newest first by id, from Redis and the archive (Redis's copy of a
        checkpoint wins), of one thread or of all (``tid=None``: every thread)."""
        if tid is None:
            return self._list_all(checkpoint_ns, before, limit, wanted)
        hot_list = None
        if self.hot is not None:
            try:
                hot_list = self.hot.listing(tid, checkpoint_ns, before,
                                            None if wanted else limit)
            except BackendUnavailable:
                if self.cold is None:
                    raise
        found: dict[tuple[str, str], Found] = {}
        if hot_list is not None:
            for each in hot_list.found:
                if matches(each.checkpoint.metadata, wanted):
                    found[(each.checkpoint.checkpoint_ns, each.checkpoint.checkpoint_id)] = each
        if self.cold is not None:
            orphans = hot_list.orphans if hot_list is not None else {}
            for each in self.cold.listing(tid, checkpoint_ns, before, limit, wanted,
                                          hot=hot_list is not None):
                key = (each.checkpoint.checkpoint_ns, each.checkpoint.checkpoint_id)
                if key in found:
                    continue
                extra = orphans.get(key)
                if extra:
                    each = Found(tid, each.checkpoint, merge_writes(each.writes, extra),
                                 each.created_ms, each.tier)
                found[key] = each
        ordered = sorted(found.values(), key=lambda f: f.checkpoint.checkpoint_id, reverse=True)
        return ordered if limit is None else ordered[:limit]

    def _list_all(self, checkpoint_ns: str | None, before: str | None, limit: int | None,
                  wanted: Mapping[str, Any] | None) -> list[Found]:
        tids: set[str] = set()
        if self.hot is not None:
            tids.update(self.hot.threads())
        if self.cold is not None:
            tids.update(self.cold.thread_ids())
        found = [f for t in sorted(tids) for f in self.listing(t, checkpoint_ns, before, limit,
                                                             wanted)]
        found.sort(key=lambda f: f.checkpoint.checkpoint_id, reverse=True)
        return found if limit is None else found[:limit]

    # -- whole threads -----------------------------------------------------------------

    def copy(self, source: str, target: str, now_ms: int) -> None:
        """Copy every checkpoint and write of ``source`` into ``target`` (ids kept)."""
        items = sorted(self.listing(source, None, None, None, None),
                       key=lambda f: f.checkpoint.checkpoint_id)
        if not items:
            return
        checkpoints = tuple(f.checkpoint for f in items)
        writes = tuple((f.checkpoint.checkpoint_ns, f.checkpoint.checkpoint_id, w)
                       for f in items for w in f.writes)
        if self.hot is None:
            assert self.cold is not None
            now = self.cold.now_ms()
            self.cold.absorb([ThreadCopy(target, 0, now, self._expires(now), checkpoints,
                                         writes)])
            return
        written = self.hot.restore(target, items, self.ttl_ms, self.limits)
        if self._mirror and written is not None:
            assert self.cold is not None
            self.cold.absorb([ThreadCopy(target, written.created_ms, now_ms, written.expires_ms,
                                         checkpoints, writes)])

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        """Delete every checkpoint (with its writes) whose metadata names one of
        ``run_ids``, in every thread and tier. Redis has no index by run: each
        hot thread is read, so this costs in proportion to the hot tier."""
        wanted = set(run_ids)
        if not wanted:
            return
        doomed: dict[str, set[str]] = {}
        archived = self.cold.runs(sorted(wanted)) if self.cold is not None else []
        for tid, ns, cid in archived:
            doomed.setdefault(tid, set()).add(member(ns, cid))
        if self.hot is not None:
            for tid in self.hot.threads():
                listed = self.hot.listing(tid, None, None, None)
                for each in listed.found if listed is not None else ():
                    if orjson.loads(each.checkpoint.metadata).get("run_id") in wanted:
                        doomed.setdefault(tid, set()).add(each.checkpoint.member)
            for tid, members in doomed.items():
                self.hot.drop(tid, sorted(members))
        if self.cold is not None:
            self.cold.drop(archived)

    def prune(self, tids: Sequence[str], strategy: str) -> None:
        """``"delete"``: delete each thread. ``"keep_latest"``: keep each namespace's
        newest checkpoint (with its writes), drop older ones in every tier; threads
        using a ``DeltaChannel`` are refused (their newest state is rebuilt from
        older checkpoints), before anything is pruned."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy: {strategy!r}")
        if strategy == "delete":
            for tid in tids:
                self.delete(tid)
            return
        plans: list[tuple[str, dict[str, str]]] = []
        for tid in tids:
            keep: dict[str, str] = {}
            for each in self.listing(tid, None, None, None, None):
                cp = each.checkpoint
                if _uses_delta(cp.metadata):
                    raise NotImplementedError(
                        f"keep_latest cannot prune thread {tid!r}: it uses a DeltaChannel")
                if cp.checkpoint_id > keep.get(cp.checkpoint_ns, ""):
                    keep[cp.checkpoint_ns] = cp.checkpoint_id
            plans.append((tid, keep))
        for tid, keep in plans:
            if not keep:
                continue
            if self.hot is not None:
                self.hot.prune(tid, keep)
            if self.cold is not None:
                self.cold.prune(tid, keep)



def _uses_delta(metadata: bytes) -> bool:
    if DELTA_KEY.encode() not in metadata:
        return False
    decoded = orjson.loads(metadata)
    return isinstance(decoded, dict) and DELTA_KEY in decoded
