"""Sans-I/O plans of the Redis tier: generators that yield calls and receive replies.

A plan yields :class:`Call` (one script), :class:`Calls` (scripts pipelined)
or :class:`Commands` (plain commands pipelined) and gets the reply sent
back; the sync and async shells drive the very same plans.

User indexes: a write script must be given the index key of every user it
touches, but which user a session belongs to is known for sure only inside
the script. The plans pass the users they expect (the session's user as
last seen by this process, and any user the call names); a script that
needs another one writes nothing and replies ``{'users', ...}``, and the
plan calls again with those added (:meth:`RedisOps.with_users`).
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, TypeVar

from tieredstore.codec import (
    decode_cursor,
    decode_message,
    encode_cursor,
    encode_entry,
    encode_json,
    entry_payload,
    entry_seq,
    split_entry,
)
from tieredstore.config import Limits
from tieredstore.core import Batch, Order, check_before, check_limit, check_session_id
from tieredstore.errors import BackendUnavailable, InvalidInput, SessionExists, SessionNotFound
from tieredstore.model import FrozenDict, Message, Page, Session
from tieredstore.policy import leading_system, plan_trim
from tieredstore.tiers.redis.keys import RedisKeys
from tieredstore.tiers.redis.records import (
    Call,
    Calls,
    Commands,
    Fenced,
    OutboxRecord,
    Spilled,
    by_seq,
    check_status,
    flag,
    found,
    int_or_none,
    live_hash,
    messages_of,
    metadata_of,
    opt,
    outbox_body,
    receipt_of,
    records_of,
    server_ms,
    snapshot_of,
    ttl_arg,
)
from tieredstore.tiers.transfer import DEFAULT_TOMBSTONE_TTL, HistoryPart, Snapshot, WriteReceipt

__all__ = ["Plan", "RedisOps"]

T = TypeVar("T")
Plan = Generator["Call | Calls | Commands", Any, T]

LIST_SCAN_BUDGET = 1000
_OWNERS_KEPT = 65_536
_USER_ROUNDS = 8


def demanded(reply: Any) -> list[str] | None:
    """The users a script asked to be declared, or ``None`` for any other reply."""
    if isinstance(reply, list) and reply and reply[0] == b"users":
        return [user.decode() for user in reply[1:]]
    return None


def with_users(
    script: str,
    keys: list[str],
    args: list[str | bytes | int],
    user_key: Callable[[str], str],
    users: Iterable[str | None],
    names_at: int,
) -> Plan[tuple[Any, set[str]]]:
    """Call ``script`` with the user indexes it needs appended to ``keys``
    (their names at ``args[names_at]``), starting from ``users``.

    Returns the reply and the users the script asked for (beyond ``users``).
    """
    names = {user for user in users if user}
    asked: set[str] = set()
    for _ in range(_USER_ROUNDS):
        ordered = sorted(names)
        args[names_at] = " ".join(ordered)
        reply = yield Call(script, keys + [user_key(user) for user in ordered], args)
        wanted = demanded(reply)
        if wanted is None:
            return reply, asked
        asked.update(wanted)
        names.update(wanted)
    raise BackendUnavailable("redis", "the session's owner kept changing; try again")


class RedisOps:
    """Plans for every operation of :class:`RedisStore`.

    ``channel`` is the invalidation channel write scripts publish on (``""``:
    they don't); ``sharded`` makes them SPUBLISH to their bucket's channel
    (a cluster) instead of PUBLISH to ``channel``. ``spill`` keeps trimmed
    entries in the spill list.
    """

    def __init__(
        self,
        keys: RedisKeys,
        *,
        max_messages: int | None,
        sliding_ttl: bool,
        channel: str = "",
        sharded: bool = False,
        spill: bool = False,
        default_ttl_ms: int | None = None,
        limits: Limits | None = None,
        tombstone_ms: int = int(DEFAULT_TOMBSTONE_TTL * 1000),
    ) -> None:
        self.keys = keys
        self.tombstone_ms = tombstone_ms
        self.limits = limits or Limits()
        self.max_messages = max_messages
        self.sliding_ttl = sliding_ttl
        self.channel = channel
        self.sharded = sharded
        self.spill = spill
        self.default_ttl_ms = default_ttl_ms
        self._owners: dict[str, str] = {}

    # -- helpers ------------------------------------------------------------------

    def announce(self, sid: str) -> str:
        """The ``chan`` argument of a write script for ``sid``."""
        if not self.channel:
            return ""
        if self.sharded:
            return f"SPUBLISH {self.keys.tag(sid)}inval"
        return f"PUBLISH {self.channel}"

    def owner_hint(self, sid: str) -> str | None:
        return self._owners.get(sid) or None

    def note_owner(self, sid: str, user: str | None) -> None:
        if len(self._owners) >= _OWNERS_KEPT:
            self._owners.clear()
        self._owners[sid] = user or ""

    def _session_write(
        self, script: str, sid: str, keys: list[str], args: list[str | bytes | int],
        user: str | None = None,
    ) -> Plan[Any]:
        k = self.keys
        reply, asked = yield from with_users(
            script, keys, args, lambda u: k.user_of(sid, u), (self.owner_hint(sid), user), 1
        )
        if user is not None:
            self.note_owner(sid, user)
        elif len(asked) == 1:  # the session's owner, which the hint missed
            self.note_owner(sid, next(iter(asked)))
        return reply

    # -- writes -------------------------------------------------------------------

    def save(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> Plan[WriteReceipt | None]:
        kinds, payloads = batch.kinds, batch.payloads
        lead, drop = plan_trim(kinds, self.max_messages)
        kept = kinds[:lead] + kinds[lead + drop :]
        if drop and not self.spill:
            payloads = payloads[:lead] + payloads[lead + drop :]
        args: list[str | bytes | int] = [
            sid,
            "",
            opt(expected_version),
            ttl_arg(ttl_ms),
            user_id or "",
            -1 if metadata is None else len(metadata),
            leading_system(kept),
            kinds,
            flag(create),
            self.announce(sid),
            lead,
            drop,
            flag(self.spill),
            outbox_body(batch, metadata, user_id) if outbox else b"",
        ]
        if metadata is not None:
            for key, value in metadata.items():
                args.append(key)
                args.append(encode_json(value))
        args.extend(payloads)
        reply = yield from self._session_write("save", sid, self.keys.writes(sid), args, user_id)
        return receipt_of(reply) if check_status(sid, expected_version, reply) else None

    def append(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        expected_version: int | None,
        create: bool = True,
        outbox: bool = False,
    ) -> Plan[WriteReceipt | None]:
        args: list[str | bytes | int] = [
            sid,
            "",
            opt(expected_version),
            ttl_arg(ttl_ms),
            opt(self.max_messages),
            batch.kinds,
            flag(create),
            self.announce(sid),
            flag(self.spill),
            outbox_body(batch, None, None) if outbox else b"",
            # Names this call: a client's retry after a lost reply does not append twice.
            secrets.token_hex(8),
            *batch.payloads,
        ]
        reply = yield from self._session_write("append", sid, self.keys.writes(sid), args)
        return receipt_of(reply) if check_status(sid, expected_version, reply) else None

    def save_version(
        self,
        sid: str,
        batch: Batch,
        *,
        ttl_ms: int | None,
        metadata: FrozenDict | None,
        user_id: str | None,
        expected_version: int | None,
    ) -> Plan[int]:
        """:meth:`save` returning only the new version (the ``_save`` primitive)."""
        receipt = yield from self.save(
            sid,
            batch,
            ttl_ms=ttl_ms,
            metadata=metadata,
            user_id=user_id,
            expected_version=expected_version,
        )
        assert receipt is not None
        return receipt.version

    def append_version(
        self, sid: str, batch: Batch, *, ttl_ms: int | None, expected_version: int | None
    ) -> Plan[int]:
        """:meth:`append` returning only the new version (the ``_append`` primitive)."""
        receipt = yield from self.append(
            sid, batch, ttl_ms=ttl_ms, expected_version=expected_version
        )
        assert receipt is not None
        return receipt.version

    def merged_metadata(self, sid: str, updates: FrozenDict) -> Plan[FrozenDict]:
        """:meth:`merge_metadata` returning only the merged metadata."""
        merged, _ = yield from self.merge_metadata(sid, updates)
        return merged

    def merge_metadata(
        self, sid: str, updates: FrozenDict, outbox: bool = False
    ) -> Plan[tuple[FrozenDict, WriteReceipt]]:
        k = self.keys
        t = k.tag(sid)
        args: list[str | bytes | int] = [sid, "", self.announce(sid), flag(outbox)]
        for key, value in updates.items():
            args.append(key)
            args.append(b"" if value is None else encode_json(value))
        keys = [k.meta(sid), k.outbox(sid), t + "obx", t + "idx"]
        reply = yield from self._session_write("merge", sid, keys, args)
        check_status(sid, None, reply)
        # {'ok', version, created, updated, expires, ttl, n, pending, key, json, ...}
        n = int(reply[6])
        receipt = WriteReceipt(
            version=int(reply[1]),
            first_seq=n,
            next_seq=n,
            created_ms=int(reply[2]),
            updated_ms=int(reply[3]),
            expires_ms=int_or_none(reply[4]),
            ttl_ms=int_or_none(reply[5]),
            pending=int(reply[7]),
        )
        return metadata_of(reply, 8), receipt

    def delete(self, sid: str) -> Plan[bool]:
        existed, _ = yield from self.delete_tombstoned(sid, 0)
        return existed

    def delete_tombstoned(self, sid: str, floor_ms: int) -> Plan[tuple[bool, int]]:
        """Delete, leaving a tombstone no earlier than ``floor_ms``: ``(existed, tombstone)``."""
        args: list[str | bytes | int] = [
            sid, "", self.announce(sid), self.tombstone_ms, floor_ms
        ]
        reply = yield from self._session_write("delete", sid, self.keys.writes(sid), args)
        self._owners.pop(sid, None)
        return bool(reply[0]), int(reply[1])

    def fence(self, sid: str) -> Plan[Fenced | None]:
        reply = yield Call("fence", [self.keys.meta(sid), self.keys.outbox(sid)], [])
        if not reply[0]:
            return None
        return Fenced(int(reply[1]), int(reply[2]), int(reply[3]), records_of(reply[4:]))

    def unfence(self, sid: str, created_ms: int) -> Plan[None]:
        yield Call("unfence", [self.keys.meta(sid)], [created_ms])

    def outbox_records(self, sid: str) -> Plan[tuple[int, list[OutboxRecord]]]:
        """``(created_ms, records oldest first)`` of the session's outbox (``(0, [])``: none)."""
        k = self.keys
        reply = yield Call("outbox", [k.meta(sid), k.outbox(sid), k.tag(sid) + "obx"], [sid])
        if not reply:
            return 0, []
        return int(reply[0]), records_of(reply[2:])

    def outbox_ack(self, sid: str, created_ms: int, versions: Sequence[int]) -> Plan[int]:
        k = self.keys
        reply = yield Call(
            "ack", [k.meta(sid), k.outbox(sid), k.tag(sid) + "obx"], [sid, created_ms, *versions]
        )
        return int(reply)

    def outbox_sessions(self, limit: int) -> Plan[list[str]]:
        """Up to ``limit`` sessions holding outbox records, oldest record first."""
        k = self.keys
        replies = yield Commands(
            [("ZRANGE", k.obx(b), 0, limit - 1, "WITHSCORES") for b in range(k.buckets)]
        )
        # redis-py answers ZRANGE ... WITHSCORES as (member, score) pairs
        waiting = [(float(score), sid) for reply in replies for sid, score in reply]
        return [sid.decode() for _, sid in heapq.nsmallest(limit, waiting)]

    def evict(self, sid: str, created_ms: int, version: int) -> Plan[bool]:
        k = self.keys
        b = k.bucket(sid)
        keys = [k.idx(b), k.exp(b), k.own(b), *k.session(sid), k.outbox(sid)]
        args: list[str | bytes | int] = ["", 1, sid, str(created_ms), str(version)]
        reply, _ = yield from with_users(
            "evict", keys, args, lambda u: k.user(b, u), (self.owner_hint(sid),), 0
        )
        return bool(reply[0])

    def fork(self, src: str, dst: str, *, ttl_ms: int | None) -> Plan[int]:
        k = self.keys
        m, h, x = k.session(src)
        # One script reads the source (a pipeline is not atomic: a write between
        # its commands would give a hash and a window of different versions).
        reply = yield Call("capture", [h, m, x], [])
        _, _, flat, window, spilled = reply
        o = live_hash(flat, server_ms(reply[:2]))
        if o is None:
            raise SessionNotFound(src)
        expires = o.get(b"expires")
        meta = [(name[2:], value) for name, value in o.items() if name.startswith(b"m:")]
        user = o.get(b"user", b"").decode()
        dt = k.tag(dst)
        keys = [*k.session(dst), k.tombstone(dst), dt + "idx", dt + "exp", dt + "own"]
        args: list[str | bytes | int] = [
            dst,
            "",
            ttl_arg(ttl_ms or self.default_ttl_ms),
            self.announce(dst),
            o.get(b"lead", b"0"),
            o.get(b"n", b"0"),
            o.get(b"b", b"0"),
            o.get(b"ttl", b""),
            expires or b"",
            user,
            len(meta),
            len(window),
        ]
        for name, value in meta:
            args += [name, value]
        args += [*window, *spilled]
        reply = yield from self._session_write("fork", dst, keys, args, user or None)
        if reply[0] == b"exists":
            raise SessionExists(dst)
        return int(reply[1])

    def restore(self, snapshot: Snapshot) -> Plan[int]:
        """1 written, 0 present here, -1 refused (a deleted generation, or expired)."""
        sid = check_session_id(snapshot.sid, self.limits)
        count = len(snapshot.messages)
        if len(snapshot.seqs) != count or len(snapshot.kinds) != count:
            raise InvalidInput("snapshot messages, seqs and kinds differ in length")
        if snapshot.ttl_ms is not None:
            ttl_arg(snapshot.ttl_ms)
        args: list[str | bytes | int] = [
            sid,
            "",
            snapshot.version,
            snapshot.created_ms,
            snapshot.updated_ms,
            opt(snapshot.expires_ms),
            opt(snapshot.ttl_ms),
            snapshot.user_id or "",
            snapshot.next_seq,
            snapshot.base_seq,
            leading_system(snapshot.kinds),
            len(snapshot.metadata),
            self.announce(sid),
        ]
        for key, value in snapshot.metadata.items():
            args.append(key)
            args.append(encode_json(value))
        # Snapshots carry no per-message write times: stamp them with `updated`.
        stamp = snapshot.updated_ms
        args.extend(
            encode_entry(kind, seq, stamp, encode_json(message))
            for kind, seq, message in zip(
                snapshot.kinds, snapshot.seqs, snapshot.messages, strict=True
            )
        )
        reply = yield from self._session_write(
            "restore", sid, self.keys.writes(sid), args, snapshot.user_id
        )
        return int(reply)

    def drain_spill(self, sid: str, upto_seq: int, created_ms: int | None) -> Plan[int]:
        reply = yield Call(
            "drain",
            [self.keys.meta(sid), self.keys.spill(sid)],
            [upto_seq, opt(created_ms)],
        )
        return int(reply)

    # -- reads --------------------------------------------------------------------

    def _read(self, sid: str, mode: str, last: int | None, sliding: bool = False) -> Plan[Any]:
        """The read script's reply (see ``read.lua``) for ``mode``.

        A read that extends no TTL needs no script on standalone Redis: the same
        commands in one ``MULTI``/``EXEC`` are as atomic and cost the server far
        less (the script copies the whole list into Lua and back).
        """
        k = self.keys
        t = k.tag(sid)
        if not sliding and not self.sharded:
            return (yield from self._read_transaction(f"{t}m:{sid}", f"{t}h:{sid}", mode, last))
        reply = yield Call(
            "read",
            [f"{t}m:{sid}", f"{t}h:{sid}", t + "exp", f"{t}x:{sid}"],
            [sid, mode, opt(last), flag(sliding)],
        )
        return reply

    def _read_transaction(self, m: str, h: str, mode: str, last: int | None) -> Plan[Any]:
        """``read.lua`` without sliding, as one transaction; the same reply."""
        commands: list[tuple[str | bytes | int, ...]] = [("TIME",)]
        if mode == "get":
            commands.append(("HGETALL", h))
        else:
            commands.append(("HMGET", h, "version", "expires", "ttl", "f"))
        if mode in ("load", "get") and last != 0:
            commands.append(("LRANGE", m, 0, -1) if last is None else ("LRANGE", m, -last, -1))
        if mode in ("get", "count"):
            commands.append(("LLEN", m))
        replies = yield Commands(commands, atomic=True)
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        if mode == "get":
            flat = replies[1]
            if isinstance(flat, dict):  # RESP3 replies with a map
                flat = [item for pair in flat.items() for item in pair]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            version, expires = fields.get(b"version"), fields.get(b"expires")
            fence = fields.get(b"f")
        else:
            flat = None
            version, expires, _, fence = replies[1]
        if version is None or (expires is not None and int(expires) <= now_ms):
            return [0]
        if fence is not None:
            return [2]
        if mode == "exists":
            return [1]
        if mode == "count":
            return [1, replies[2]]
        entries = replies[2] if last != 0 else []
        if mode == "load":
            return [1, entries]
        return [1, entries, flat, replies[-1]]

    def load(self, sid: str, last: int | None) -> Plan[list[Message]]:
        reply = yield from self._read(sid, "load", last, self.sliding_ttl)
        if not found(sid, reply):
            raise SessionNotFound(sid)
        return messages_of(reply[1])

    def snapshot(self, sid: str, last: int | None, refresh: bool) -> Plan[Snapshot | None]:
        if last is not None and last < 0:
            raise InvalidInput(f"last must be a non-negative integer, got {last!r}")
        reply = yield from self._read(sid, "get", last, refresh)
        if not found(sid, reply):
            return None
        snap = snapshot_of(sid, reply[1], reply[2], reply[3])
        self.note_owner(sid, snap.user_id)
        return snap

    def get(self, sid: str, last: int | None) -> Plan[Session]:
        snap = yield from self.snapshot(sid, last, self.sliding_ttl)
        if snap is None:
            raise SessionNotFound(sid)
        return snap.session("redis")

    def count(self, sid: str) -> Plan[int]:
        reply = yield from self._read(sid, "count", None)
        if not found(sid, reply):
            raise SessionNotFound(sid)
        return int(reply[1])

    def exists(self, sid: str) -> Plan[bool]:
        reply = yield from self._read(sid, "exists", None)
        return found(sid, reply)

    def exists_many(self, sids: Sequence[str]) -> Plan[list[bool]]:
        sids = [check_session_id(sid, self.limits) for sid in sids]
        if not sids:
            return []
        live = yield from self.live_expiry(sids)
        return [sid in live for sid in sids]

    def live_expiry(self, sids: Sequence[str]) -> Plan[dict[str, int | None]]:
        """The sessions among ``sids`` live here, with their expiry (one round trip)."""
        commands: list[tuple[str | bytes | int, ...]] = [("TIME",)]
        commands += [("HMGET", self.keys.meta(sid), "version", "expires") for sid in sids]
        replies = yield Commands(commands)
        now = server_ms(replies[0])
        live: dict[str, int | None] = {}
        for sid, (version, expires) in zip(sids, replies[1:], strict=True):
            if version is not None and (expires is None or int(expires) > now):
                live[sid] = int(expires) if expires is not None else None
        return live

    def history_page(self, sid: str, before: int | None, limit: int) -> Plan[HistoryPart | None]:
        check_limit(limit, maximum=100_000)
        before = check_before(before)
        k = self.keys
        reply = yield Call(
            "history", [k.messages(sid), k.meta(sid), k.spill(sid)], [opt(before), limit]
        )
        if not reply[0]:
            return None
        entries = sorted(((entry_seq(e), e) for e in (*reply[1], *reply[2])), key=by_seq)
        pairs = [(seq, decode_message(entry_payload(e))) for seq, e in entries[-limit:]]
        return HistoryPart(int(reply[3]), int(reply[4]), pairs)

    def spilled(self, sid: str, limit: int | None) -> Plan[list[Spilled]]:
        if limit is not None:
            check_limit(limit, maximum=1_000_000)
        stop = -1 if limit is None else limit - 1
        replies = yield Commands([("LRANGE", self.keys.spill(sid), 0, stop)])
        out: list[Spilled] = []
        for entry in replies[0]:
            kind, seq, stamp, payload = split_entry(entry)
            out.append(Spilled(seq, kind, stamp, decode_message(payload)))
        return out

    def list_keys(
        self, user_id: str | None, limit: int, position: tuple[int, str] | None, order: Order
    ) -> Plan[list[tuple[int, str]]]:
        """Up to ``limit`` ``(updated_ms, sid)`` of live sessions strictly after
        ``position``: each bucket's keyset from the same cursor, merged."""
        check_limit(limit, maximum=100_001)
        k = self.keys
        resume: dict[int, tuple[int, str] | None] = dict.fromkeys(range(k.buckets), position)
        found_in: dict[int, list[tuple[int, str]]] = {b: [] for b in range(k.buckets)}
        active = list(range(k.buckets))
        while active:
            calls = []
            for b in active:
                wanted = limit - len(found_in[b])
                zset = k.idx(b) if user_id is None else k.user(b, user_id)
                at = resume[b]
                args: list[str | bytes | int] = [
                    wanted - 1,  # the script returns up to this + 1
                    order,
                    *(("1", at[0], at[1]) if at else ("0", 0, "")),
                    flag(user_id is not None),
                    wanted + LIST_SCAN_BUDGET,
                ]
                calls.append(Call("list", [zset, k.idx(b), k.exp(b)], args))
            replies = yield Calls(calls)
            still = []
            for b, reply in zip(active, replies, strict=True):
                got = found_in[b]
                for i in range(3, len(reply) - 1, 2):
                    got.append((int(float(reply[i + 1])), reply[i].decode()))
                if not (reply[0] or reply[1] is None or len(got) >= limit):
                    resume[b] = (int(float(reply[1])), reply[2].decode())
                    still.append(b)
            active = still
        merged = [item for items in found_in.values() for item in items]
        merged.sort(key=_keyset, reverse=order == "desc")
        return merged[:limit]

    def list(self, user_id: str | None, limit: int, cursor: str | None, order: Order) -> Plan[Page]:
        position = decode_cursor(cursor) if cursor is not None else None
        found_keys = yield from self.list_keys(user_id, limit + 1, position, order)
        if len(found_keys) > limit:
            return Page(
                [sid for _, sid in found_keys[:limit]], encode_cursor(*found_keys[limit - 1])
            )
        return Page([sid for _, sid in found_keys], None)

    def stats(self) -> Plan[dict[str, int]]:
        k = self.keys
        commands: list[tuple[str | bytes | int, ...]] = []
        for b in range(k.buckets):
            commands += [("ZCARD", k.idx(b)), ("ZCARD", k.exp(b))]
        replies = yield Commands(commands)
        return {
            "indexed_sessions": sum(int(r) for r in replies[0::2]),
            "expiring_sessions": sum(int(r) for r in replies[1::2]),
            "buckets": k.buckets,
        }

    # -- session locks (see tieredstore.locking) -----------------------------------

    def lock_acquire(self, sid: str, token: str, ttl_ms: int) -> Plan[bool]:
        replies = yield Commands([("SET", self.keys.lock(sid), token, "NX", "PX", ttl_ms)])
        return bool(replies[0])

    def lock_release(self, sid: str, token: str) -> Plan[bool]:
        reply = yield Call("lock_release", [self.keys.lock(sid)], [token])
        return bool(reply)

    def lock_extend(self, sid: str, token: str, ttl_ms: int) -> Plan[bool]:
        reply = yield Call("lock_extend", [self.keys.lock(sid)], [token, ttl_ms])
        return bool(reply)

    def lock_held(self, sid: str) -> Plan[bool]:
        replies = yield Commands([("EXISTS", self.keys.lock(sid))])
        return bool(replies[0])


def _keyset(item: tuple[int, str]) -> tuple[int, bytes]:
    """The order of sorted-set members: score, then member byte-wise."""
    return item[0], item[1].encode("utf-8", "surrogatepass")
