"""The Redis tier of LangGraph checkpoints: one script per write, one round trip per read.

:class:`HotCheckpoints` runs the ``checkpoint_*`` scripts
(``tieredstore/tiers/redis/scripts``) through a :class:`RedisStore`, so it
shares that store's client, timeouts, circuit breaker, error translation
and bucket layout check. Keys are those of :mod:`.keys`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from tieredstore.config import Limits
from tieredstore.integrations.langgraph.keys import CheckpointKeys
from tieredstore.integrations.langgraph.records import (
    SEP,
    Found,
    StoredCheckpoint,
    StoredWrite,
    ThreadCopy,
    member,
    pack_checkpoint,
    pack_write,
    split_member,
    unpack_checkpoint,
    unpack_write,
)
from tieredstore.tiers.redis import RedisStore
from tieredstore.tiers.redis.records import Call, Calls, Commands

__all__ = ["HAVE", "Captured", "HotCheckpoints", "HotList", "HotRead", "Written"]

HAVE = b"="
"""A read's record when it is the one the caller said it holds."""


@dataclass(frozen=True, slots=True)
class HotRead:
    """A read of one checkpoint: ``checkpoint_id`` ``None`` when Redis has none of
    the namespace; ``record`` ``None`` when Redis lacks it (the writes it has
    are still given), :data:`HAVE` when it is the caller's."""

    created_ms: int
    checkpoint_id: str | None
    record: bytes | None
    writes: tuple[StoredWrite, ...]


@dataclass(frozen=True, slots=True)
class HotList:
    """A thread's checkpoints in Redis, and writes of checkpoints Redis lacks."""

    created_ms: int
    found: list[Found]
    orphans: dict[tuple[str, str], tuple[StoredWrite, ...]]


@dataclass(frozen=True, slots=True)
class Captured:
    """What archival read of a thread, and what evicting it compares against."""

    copy: ThreadCopy
    ver: bytes
    changes: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Written:
    """After a write: the thread's generation (creation, unix ms) and expiry."""

    created_ms: int
    expires_ms: int | None


def _written(reply: Sequence[Any]) -> Written:
    return Written(int(reply[0]), int(reply[2]) if reply[2] else None)


def _one(call: Call | Calls | Commands) -> Generator[Any, Any, Any]:
    reply = yield call
    return reply


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _writes(flat: Sequence[Any], at: int, count: int) -> tuple[tuple[StoredWrite, ...], int]:
    """``count`` (suffix, record) pairs from ``flat[at:]``; the writes and where they end."""
    out = []
    for i in range(count):
        suffix, record = flat[at + 2 * i], flat[at + 2 * i + 1]
        if record:
            out.append(unpack_write(record, _text(suffix)))
    return tuple(out), at + 2 * count


class HotCheckpoints:
    """Checkpoints of LangGraph threads in Redis (see :mod:`.keys` for the layout)."""

    def __init__(self, redis: RedisStore, *, window: int) -> None:
        self.redis = redis
        self.keys = CheckpointKeys(redis.keys)
        self.window = window
        self.tombstone_ms = redis._ops.tombstone_ms

    def _run(self, call: Call | Calls | Commands) -> Any:
        return self.redis._drive(_one(call))

    # -- writes ----------------------------------------------------------------------

    def put(self, tid: str, checkpoint: StoredCheckpoint, record: bytes,
            ttl_ms: int | None) -> Written:
        """Store one checkpoint: the thread's generation and expiry after it."""
        return _written(self._run(Call("checkpoint_put", self.keys.thread(tid), [
            tid, checkpoint.checkpoint_ns, checkpoint.member, record, ttl_ms or 0, self.window])))

    def put_writes(self, tid: str, checkpoint_ns: str, checkpoint_id: str,
                   writes: Sequence[StoredWrite], ttl_ms: int | None) -> Written:
        """Store pending writes of one checkpoint: the thread's generation and expiry."""
        return _written(self._run(self._writes_call(tid, checkpoint_ns, checkpoint_id, writes,
                                                    ttl_ms)))

    def _writes_call(self, tid: str, checkpoint_ns: str, checkpoint_id: str,
                     writes: Sequence[StoredWrite], ttl_ms: int | None) -> Call:
        args: list[str | bytes | int] = [tid, member(checkpoint_ns, checkpoint_id), ttl_ms or 0,
                                         len(writes)]
        for write in writes:
            args += [write.suffix, pack_write(write), "1" if write.idx < 0 else "0"]
        return Call("checkpoint_writes", self.keys.thread(tid), args)

    def restore(self, tid: str, found: Sequence[Found], ttl_ms: int | None,
                limits: Limits) -> Written | None:
        """Store many checkpoints with their writes (a copied thread), one pipeline."""
        calls: list[Call] = []
        keys = self.keys.thread(tid)
        for each in found:
            cp = each.checkpoint
            calls.append(Call("checkpoint_put", keys, [
                tid, cp.checkpoint_ns, cp.member, pack_checkpoint(cp, limits), ttl_ms or 0,
                self.window]))
            if each.writes:
                calls.append(self._writes_call(tid, cp.checkpoint_ns, cp.checkpoint_id,
                                               each.writes, ttl_ms))
        if not calls:
            return None
        return _written(self._run(Calls(calls))[-1])

    def delete(self, tid: str) -> tuple[bool, int]:
        """Remove the thread, leaving its tombstone: ``(existed, tombstone unix ms)``."""
        existed, tomb = self._run(Call("checkpoint_delete", self.keys.thread(tid),
                                       [tid, self.tombstone_ms]))
        return bool(existed), int(tomb)

    def promote(self, tid: str, found: Found, expires_ms: int | None, record: bytes) -> int:
        """Copy an archived checkpoint into a thread absent here: 1 done, 0 the thread is
        here (or expired), -1 refused by the thread's tombstone."""
        cp = found.checkpoint
        args: list[str | bytes | int] = [tid, found.created_ms, expires_ms or 0, cp.member,
                                         record, len(found.writes)]
        for write in found.writes:
            args += [write.suffix, pack_write(write)]
        return int(self._run(Call("checkpoint_promote", self.keys.thread(tid), args)))

    def prune(self, tid: str, keep: dict[str, str]) -> int:
        """Drop the checkpoints of each namespace older than ``keep[ns]``; how many went."""
        args: list[str | bytes | int] = [len(keep)]
        for ns, cid in keep.items():
            args += [ns, cid]
        return int(self._run(Call("checkpoint_prune", self.keys.thread(tid), args)))

    def drop(self, tid: str, members: Sequence[str]) -> int:
        """Remove these checkpoints (``<ns>\\0<id>`` members) with their writes."""
        if not members:
            return 0
        return int(self._run(Call("checkpoint_drop", self.keys.thread(tid),
                                  [len(members), *members])))

    # -- reads -----------------------------------------------------------------------

    def read(self, tid: str, checkpoint_ns: str, checkpoint_id: str | None,
             have: tuple[int, str] | None = None) -> HotRead | None:
        """One checkpoint (the namespace's newest without an id); ``None``: no thread here.

        ``have``: ``(generation, checkpoint id)`` of a record the caller holds, which
        is then not sent again (:data:`HAVE` instead).
        """
        held_created, held = have if have is not None else (0, "")
        reply = self._run(Call("checkpoint_read", self.keys.thread(tid)[:4],
                               [checkpoint_ns, checkpoint_id or "", held, held_created]))
        if not reply:
            return None
        created, cid, record, count = reply[:4]
        writes, _ = _writes(reply, 4, int(count))
        if not cid:
            return HotRead(int(created), None, None, ())
        return HotRead(int(created), _text(cid), bytes(record) if record else None, writes)

    def listing(self, tid: str, checkpoint_ns: str | None, before: str | None,
                limit: int | None) -> HotList | None:
        """The thread's checkpoints here (one namespace, or all with ``None``), newest
        first in each namespace; ``None`` when the thread is not here."""
        reply = self._run(Call("checkpoint_list", self.keys.thread(tid)[:4], [
            "1" if checkpoint_ns is None else "0", checkpoint_ns or "", before or "",
            limit or 0]))
        if not reply:
            return None
        created = int(reply[0])
        at, found = 2, []
        for _ in range(int(reply[1])):
            ns, cid = split_member(_text(reply[at]))
            record, count = reply[at + 1], int(reply[at + 2])
            writes, at = _writes(reply, at + 3, count)
            if record:
                found.append(Found(tid, unpack_checkpoint(record, ns, cid), writes, created,
                                   "redis"))
        orphans: dict[tuple[str, str], list[StoredWrite]] = {}
        for i in range(int(reply[at])):
            wm, record = _text(reply[at + 1 + 2 * i]), reply[at + 2 + 2 * i]
            ns, rest = wm.split(SEP, 1)
            cid, suffix = rest.split(SEP, 1)
            if record:
                orphans.setdefault((ns, cid), []).append(unpack_write(record, suffix))
        return HotList(created, found, {k: tuple(v) for k, v in orphans.items()})

    # -- maintenance -------------------------------------------------------------------

    def now_ms(self) -> int:
        return self.redis.now_ms()

    def idle(self, bucket: int, cutoff_ms: int, limit: int) -> list[str]:
        """Threads of ``bucket`` not written since ``cutoff_ms``, least recent first."""
        (ids,) = self._run(Commands([("ZRANGEBYSCORE", self.keys.index(bucket), "-inf",
                                      cutoff_ms, "LIMIT", 0, limit)]))
        return [_text(i) for i in ids]

    def over_window(self, bucket: int, limit: int) -> list[str]:
        """Threads of ``bucket`` with a namespace over the hot window."""
        (ids,) = self._run(Commands([("ZRANGE", self.keys.full(bucket), 0, limit - 1)]))
        return [_text(i) for i in ids]

    def threads(self) -> list[str]:
        """Every thread here, bucket by bucket (``list()`` without a thread)."""
        replies = self._run(Commands([("ZRANGE", self.keys.index(b), 0, -1)
                                      for b in range(self.keys.buckets)]))
        return [_text(i) for ids in replies for i in ids]

    def live(self, tids: Sequence[str]) -> list[bool]:
        """Whether each thread is here (retention and expiry spare those)."""
        if not tids:
            return []
        replies = self._run(Commands([("EXISTS", self.keys.head(t)) for t in tids]))
        return [bool(r) for r in replies]

    def capture_many(self, tids: Sequence[str], mode: str) -> list[Captured | None]:
        """For archival, one pipeline: each thread whole (``mode="all"``) or its part
        beyond the hot window (``"surplus"``); ``None`` for threads gone."""
        if not tids:
            return []
        replies = self._run(Calls([Call("checkpoint_capture", self.keys.thread(t),
                                        [t, mode, self.window]) for t in tids]))
        return [self._captured(t, r) for t, r in zip(tids, replies, strict=True)]

    @staticmethod
    def _captured(tid: str, reply: Sequence[Any]) -> Captured | None:
        if not reply:
            return None
        created, ver, updated, expires, n = reply[:5]
        at = 5
        checkpoints, writes, changes = [], [], []
        for _ in range(int(n)):
            ns, cid = split_member(_text(reply[at]))
            record, change, count = reply[at + 1], reply[at + 2], int(reply[at + 3])
            if record:
                checkpoints.append(unpack_checkpoint(record, ns, cid))
            found, at = _writes(reply, at + 4, count)
            writes += [(ns, cid, w) for w in found]
            changes.append((member(ns, cid), bytes(change)))
        copy = ThreadCopy(tid, int(created), int(updated), int(expires) if expires else None,
                          tuple(checkpoints), tuple(writes))
        return Captured(copy, bytes(ver), tuple(changes))

    def evict_many(self, captured: Sequence[Captured], mode: str) -> list[bool]:
        """Compare-and-delete what the archive now holds; per thread, whether all of it
        went (a thread written meanwhile keeps what changed, for a later run)."""
        if not captured:
            return []
        calls = []
        for cap in captured:
            tid = cap.copy.thread_id
            args: list[str | bytes | int] = [tid, mode, cap.copy.created_ms, cap.ver,
                                             len(cap.changes)]
            for m, change in cap.changes:
                args += [m, change]
            calls.append(Call("checkpoint_evict", self.keys.thread(tid), args))
        replies = self._run(Calls(calls))
        return [all(int(x) for x in reply) for reply in replies]
