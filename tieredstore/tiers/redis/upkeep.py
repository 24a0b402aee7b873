"""Plans of the maintenance work on the Redis tier, bucket by bucket.

Buckets are the unit of maintenance: every plan here works inside one
bucket (one hash slot), so each script is atomic there, and workers that
hold different buckets (:meth:`UpkeepOps.claim`) never meet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from tieredstore.core import check_limit
from tieredstore.tiers.redis.keys import RedisKeys
from tieredstore.tiers.redis.plans import Plan, RedisOps, with_users
from tieredstore.tiers.redis.records import (
    Call,
    Calls,
    Captured,
    Commands,
    live_hash,
    server_ms,
    split_entries,
)

__all__ = ["SCRIPT_CHUNK", "UpkeepOps"]

T = TypeVar("T")

SCRIPT_CHUNK = 100
"""Sessions one maintenance script handles at most: a batch is split into
scripts this big (pipelined where they are independent), so no script holds
Redis for long whatever the batch size."""


def _chunks(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i : i + SCRIPT_CHUNK] for i in range(0, len(items), SCRIPT_CHUNK)]


class UpkeepOps:
    """What the maintenance tasks need from Redis, as plans over :class:`RedisOps`."""

    def __init__(self, ops: RedisOps) -> None:
        self.ops = ops
        self.keys: RedisKeys = ops.keys

    def now_ms(self) -> Plan[int]:
        replies = yield Commands([("TIME",)])
        return server_ms(replies[0])

    # -- leases and cursors ---------------------------------------------------------

    def claim(self, buckets: Sequence[int], task: str, holder: str, ttl_ms: int) -> Plan[list[int]]:
        """Take the lease of ``task`` on each bucket that nobody holds; the ones taken."""
        k = self.keys
        replies = yield Commands(
            [("SET", k.lease(b, task), holder, "NX", "PX", ttl_ms) for b in buckets]
        )
        return [b for b, taken in zip(buckets, replies, strict=True) if taken]

    def renew(self, bucket: int, task: str, holder: str, ttl_ms: int) -> Plan[bool]:
        reply = yield Call("lock_extend", [self.keys.lease(bucket, task)], [holder, ttl_ms])
        return bool(reply)

    def release(self, buckets: Sequence[int], task: str, holder: str) -> Plan[None]:
        if buckets:
            yield Calls(
                [Call("lock_release", [self.keys.lease(b, task)], [holder]) for b in buckets]
            )

    def lap_state(self, task: str) -> Plan[tuple[int, dict[int, int | None]]]:
        """The lap ``task`` is on, and where each bucket stands in it: the rank to
        go on from, or ``None`` when the bucket finished this lap (buckets not yet
        started in this lap are left out)."""
        k = self.keys
        replies = yield Commands(
            [("GET", k.lap(task)), *(("GET", k.cursor(b, task)) for b in range(k.buckets))]
        )
        lap = int(replies[0] or 1)
        places: dict[int, int | None] = {}
        for bucket, raw in enumerate(replies[1:]):
            if raw:
                at_lap, _, place = raw.decode().partition(" ")
                if int(at_lap) == lap:
                    places[bucket] = None if place == "done" else int(place)
        return lap, places

    def set_place(self, bucket: int, task: str, lap: int, place: int | None) -> Plan[None]:
        value = f"{lap} {'done' if place is None else place}"
        yield Commands([("SET", self.keys.cursor(bucket, task), value)])

    def finish_lap(self, task: str, lap: int) -> Plan[int]:
        reply = yield Call("lap", [self.keys.lap(task)], [lap])
        return int(reply)

    # -- counting -------------------------------------------------------------------

    def _all(self, buckets: Sequence[int] | None) -> Sequence[int]:
        return range(self.keys.buckets) if buckets is None else buckets

    def count_expired(self, buckets: Sequence[int] | None) -> Plan[int]:
        now = yield from self.now_ms()
        replies = yield Commands(
            [("ZCOUNT", self.keys.exp(b), "-inf", now) for b in self._all(buckets)]
        )
        return sum(int(r) for r in replies)

    def count_idle(self, buckets: Sequence[int] | None, older_than_ms: int) -> Plan[int]:
        replies = yield Commands(
            [("ZCOUNT", self.keys.idx(b), "-inf", f"({older_than_ms}") for b in self._all(buckets)]
        )
        return sum(int(r) for r in replies)

    def count_indexed(self, buckets: Sequence[int] | None) -> Plan[int]:
        replies = yield Commands([("ZCARD", self.keys.idx(b)) for b in self._all(buckets)])
        return sum(int(r) for r in replies)

    # -- reading sessions -----------------------------------------------------------

    def idle_keys(
        self, bucket: int, older_than_ms: int, limit: int, position: tuple[int, str] | None
    ) -> Plan[list[tuple[int, str]]]:
        """``(updated_ms, sid)`` of the bucket's sessions last written before
        ``older_than_ms``, oldest first, strictly after ``position``."""
        args: list[str | bytes | int] = [
            older_than_ms, limit, *(("1", *position) if position else ("0", 0, ""))
        ]
        reply = yield Call("idle", [self.keys.idx(bucket)], args)
        return [(int(float(reply[i + 1])), reply[i].decode()) for i in range(0, len(reply), 2)]

    def ranked(self, bucket: int, start: int, count: int) -> Plan[list[str]]:
        replies = yield Commands([("ZRANGE", self.keys.idx(bucket), start, start + count - 1)])
        return [sid.decode() for sid in replies[0]]

    def capture_many(self, sids: Sequence[str]) -> Plan[list[Captured | None]]:
        """Hash, window and spill list of each session (all of one bucket), read
        in one script; ``None`` for a session that is missing or expired."""
        if not sids:
            return []
        k = self.keys
        calls = []
        for chunk in _chunks(sids):
            keys: list[str] = []
            for sid in chunk:
                m, h, x = k.session(sid)
                keys += [h, m, x]
            calls.append(Call("capture", keys, []))
        replies = yield Calls(calls)
        out: list[Captured | None] = []
        for chunk, reply in zip(_chunks(sids), replies, strict=True):
            now = server_ms(reply[:2])
            for i, sid in enumerate(chunk):
                flat, window, spill = reply[2 + 3 * i : 5 + 3 * i]
                fields = live_hash(flat, now)
                out.append(None if fields is None else Captured(
                    sid, fields, split_entries(window), split_entries(spill)))
        return out

    def live_expiry(self, sids: list[str]) -> Plan[dict[str, int | None]]:
        """The sessions among ``sids`` live in Redis, with their expiry there."""
        return (yield from self.ops.live_expiry(sids))

    def window_sizes(self, sids: Sequence[str]) -> Plan[list[tuple[int, int]]]:
        """``(window length, spill length)`` of each session, in one round trip."""
        commands: list[tuple[str | bytes | int, ...]] = []
        for sid in sids:
            m, _, x = self.keys.session(sid)
            commands += [("LLEN", m), ("LLEN", x)]
        replies = yield Commands(commands)
        return [(int(replies[2 * i]), int(replies[2 * i + 1])) for i in range(len(sids))]

    # -- changing sessions ------------------------------------------------------------

    def evict_many(self, bucket: int, captured: Sequence[Captured]) -> Plan[list[bool]]:
        """Compare-and-delete each captured session (all of ``bucket``), a script
        per :data:`SCRIPT_CHUNK` sessions."""
        k = self.keys
        out: list[bool] = []
        for chunk in _chunks(captured):
            keys = [k.idx(bucket), k.exp(bucket), k.own(bucket)]
            args: list[str | bytes | int] = ["", len(chunk)]
            owners: set[str | None] = set()
            for cap in chunk:
                keys += [*k.session(cap.sid), k.outbox(cap.sid)]
                args += [cap.sid, str(cap.created_ms), str(cap.version)]
                user = cap.fields.get(b"user")
                owners.add(user.decode() if user is not None else None)
            reply, _ = yield from with_users(
                "evict", keys, args, lambda u: k.user(bucket, u), owners, 0
            )
            out += [bool(flag) for flag in reply]
        return out

    def trim_many(self, plans: Sequence[tuple[Captured, int, int, int]]) -> Plan[list[bool]]:
        """For each ``(captured, lead, drop, drain_upto)``: trim the window and drain
        the spill list, only if the session is still the captured generation."""
        if not plans:
            return []
        calls = [
            Call(
                "trim_if",
                self.keys.session(cap.sid),
                [str(cap.created_ms), str(cap.version), lead, drop, upto,
                 self.ops.announce(cap.sid), cap.sid],
            )
            for cap, lead, drop, upto in plans
        ]
        replies = yield Calls(calls)
        return [bool(reply) for reply in replies]

    def _candidates(self, bucket: int, *peek: str | int) -> Plan[tuple[list[str], set[str]]]:
        k = self.keys
        zset = k.exp(bucket) if peek[0] == "due" else k.idx(bucket)
        reply = yield Call("peek", [zset, k.own(bucket)], list(peek))
        sids = [reply[i].decode() for i in range(0, len(reply), 2)]
        owners = {reply[i].decode() for i in range(1, len(reply), 2) if reply[i]}
        return sids, owners

    def _bucket_call(
        self, script: str, bucket: int, sids: Sequence[str], owners: set[str], *head: str | int
    ) -> Plan[object]:
        k = self.keys
        keys = [k.idx(bucket), k.exp(bucket), k.own(bucket)]
        for sid in sids:
            keys += k.session(sid)
        args: list[str | bytes | int] = ["", len(sids), *head, *sids]
        reply, _ = yield from with_users(
            script, keys, args, lambda u: k.user(bucket, u), owners, 0
        )
        return reply

    def purge_batch(self, bucket: int, batch_size: int) -> Plan[int]:
        """Bury up to ``batch_size`` expired sessions of ``bucket``; how many were due."""
        check_limit(batch_size, "batch_size")
        sids, owners = yield from self._candidates(bucket, "due", batch_size)
        for chunk in _chunks(sids):
            yield from self._bucket_call("purge", bucket, chunk, owners)
        return len(sids)

    def sweep(
        self, bucket: int, start: int, count: int, dry_run: bool
    ) -> Plan[tuple[int, int, int, int]]:
        """Check ``count`` index entries of ``bucket`` from rank ``start``:
        ``(scanned, gone, ttl fixed, expired)``."""
        sids, owners = yield from self._candidates(bucket, "rank", start, count)
        gone = fixed = dead = 0
        for chunk in _chunks(sids):
            reply = yield from self._bucket_call(
                "sweep", bucket, chunk, owners, "1" if dry_run else "0"
            )
            assert isinstance(reply, list)
            gone, fixed, dead = gone + int(reply[0]), fixed + int(reply[1]), dead + int(reply[2])
        return len(sids), gone, fixed, dead

    def purge_expired(self, batch_size: int) -> Plan[int]:
        """Bury every expired session of every bucket, ``batch_size`` per script."""
        total = 0
        for bucket in range(self.keys.buckets):
            while True:
                done = yield from self.purge_batch(bucket, batch_size)
                total += done
                if done < batch_size:
                    break
        return total
