"""What the Redis plans send and receive: calls, and replies parsed into records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tieredstore.codec import (
    decode_json,
    decode_window,
    encode_json,
)
from tieredstore.core import EMPTY_BATCH, Batch
from tieredstore.errors import InvalidInput, SessionNotFound, VersionConflict
from tieredstore.model import FrozenDict, Message
from tieredstore.tiers.archive import ArchiveCopy
from tieredstore.tiers.transfer import SessionFenced, Snapshot, WriteReceipt

MAX_TTL_MS = 1000 * 365 * 86_400_000
"""The longest TTL RedisStore accepts (1000 years)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One script invocation: which script, its keys and its arguments."""

    script: str
    keys: list[str]
    args: list[str | bytes | int]


@dataclass(frozen=True, slots=True)
class Calls:
    """Script invocations sent together in one pipeline (one round trip per
    node); the reply is the list of their replies, in order."""

    calls: list[Call]


@dataclass(frozen=True, slots=True)
class Commands:
    """Plain commands sent together in one pipeline (one round trip); the reply
    is the list of their replies.

    ``atomic``: one ``MULTI``/``EXEC`` on one connection instead (Redis runs
    the commands with nothing in between, as it runs a script); the replies
    come as Redis sent them, unparsed, like a script's. Standalone Redis only.
    """

    commands: list[tuple[str | bytes | int, ...]]
    atomic: bool = False


class Spilled(NamedTuple):
    """One spilled entry: a message a trim moved out of the hot window."""

    seq: int
    kind: str
    timestamp_ms: int
    message: Message


def server_ms(time_reply: Sequence[Any]) -> int:
    """Unix milliseconds from a ``TIME`` reply (seconds, microseconds)."""
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


def live_hash(flat: Sequence[bytes], now_ms: int) -> dict[bytes, bytes] | None:
    """A session hash read as a flat list, or ``None`` if missing or expired at ``now_ms``."""
    fields = {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
    expires = fields.get(b"expires")
    if b"version" not in fields or (expires is not None and int(expires) <= now_ms):
        return None
    return fields


def opt(value: int | None) -> int:
    return -1 if value is None else value


def flag(value: bool) -> str:
    return "1" if value else "0"


def int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def ttl_arg(ttl_ms: int | None) -> int:
    # Lua numbers are doubles and Redis refuses absurd expiry times; reject
    # rather than let an overflowed expiry drop the session on the spot.
    if ttl_ms is not None and ttl_ms > MAX_TTL_MS:
        raise InvalidInput(f"ttl must be at most {MAX_TTL_MS // 1000} seconds")
    return opt(ttl_ms)


def check_status(sid: str, expected: int | None, reply: Any) -> bool:
    """``True`` for a written reply, ``False`` for ``absent``; raises for the rest."""
    status = reply[0]
    if status == b"ok":
        return True
    if status == b"absent":
        return False
    if status == b"conflict":
        assert expected is not None
        raise VersionConflict(sid, expected, int(reply[1]))
    if status == b"missing":
        raise SessionNotFound(sid)
    if status == b"fenced":
        raise SessionFenced(sid)
    raise AssertionError(f"unexpected script reply {reply!r}")  # pragma: no cover


def receipt_of(reply: Any) -> WriteReceipt:
    """A receipt from ``{'ok', version, first, next, created, updated, expires, ttl}``."""
    return WriteReceipt(
        version=int(reply[1]),
        first_seq=int(reply[2]),
        next_seq=int(reply[3]),
        created_ms=int(reply[4]),
        updated_ms=int(reply[5]),
        expires_ms=int_or_none(reply[6]),
        ttl_ms=int_or_none(reply[7]),
        pending=int(reply[8]) if len(reply) > 8 else 0,
    )


def found(sid: str, reply: Any) -> bool:
    """Whether a read script found the session; a fenced one raises :class:`SessionFenced`."""
    if reply[0] == 2:
        raise SessionFenced(sid)
    return bool(reply[0])


def outbox_body(batch: Batch, metadata: FrozenDict | None, user_id: str | None) -> bytes:
    """The JSON body of an outbox record for a save or an append (see :class:`OutboxRecord`)."""
    meta = encode_json(metadata) if metadata is not None else b"null"
    user = encode_json(user_id) if user_id is not None else b"null"
    return b"".join(
        (
            b'{"k":',
            encode_json(batch.kinds),
            b',"p":[',
            b",".join(batch.payloads),
            b'],"m":',
            meta,
            b',"u":',
            user,
            b"}",
        )
    )


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A write_through write kept in Redis until the archive has it.

    ``op`` is ``a`` (append), ``s`` (save) or ``m`` (metadata merge);
    ``receipt`` says where it landed; for ``a``/``s``, ``batch`` holds its
    messages and ``metadata``/``user_id`` a save's; for ``m``, ``metadata``
    is the merged metadata after the write.
    """

    op: str
    receipt: WriteReceipt
    batch: Batch
    metadata: FrozenDict | None
    user_id: str | None

    @classmethod
    def parse(cls, raw: bytes) -> OutboxRecord:
        head, _, body = raw.partition(b"\n")
        op, version, first, nxt, created, updated, expires, ttl = head.split(b" ")
        receipt = WriteReceipt(
            version=int(version),
            first_seq=int(first),
            next_seq=int(nxt),
            created_ms=int(created),
            updated_ms=int(updated),
            expires_ms=None if expires == b"-1" else int(expires),
            ttl_ms=None if ttl == b"-1" else int(ttl),
        )
        decoded = decode_json(body)
        if op == b"m":
            return cls("m", receipt, EMPTY_BATCH, FrozenDict(decoded), None)
        messages = tuple(Message.of(m) for m in decoded["p"])
        payloads = tuple(encode_json(m) for m in messages)
        batch = Batch(messages, payloads, decoded["k"], sum(map(len, payloads)))
        meta = decoded["m"]
        return cls(
            op.decode(),
            receipt,
            batch,
            FrozenDict(meta) if meta is not None else None,
            decoded["u"],
        )


@dataclass(frozen=True, slots=True)
class Fenced:
    """A session :meth:`RedisStore.fence` froze: its generation and outbox."""

    created_ms: int
    version: int
    next_seq: int
    records: list[OutboxRecord]


def messages_of(entries: Sequence[bytes]) -> list[Message]:
    return decode_window(entries).messages


def metadata_of(pairs: Sequence[bytes], offset: int = 0) -> FrozenDict:
    return FrozenDict(
        {pairs[i].decode(): decode_json(pairs[i + 1]) for i in range(offset, len(pairs) - 1, 2)}
    )


def snapshot_of(sid: str, entries: Sequence[bytes], flat: Sequence[bytes], count: int) -> Snapshot:
    fields: dict[bytes, bytes] = {}
    meta: dict[str, Any] = {}
    for i in range(0, len(flat) - 1, 2):
        name, value = flat[i], flat[i + 1]
        if name.startswith(b"m:"):
            meta[name[2:].decode()] = decode_json(value)
        else:
            fields[name] = value
    window = decode_window(entries)
    user = fields.get(b"user")
    return Snapshot(
        sid=sid,
        messages=tuple(window.messages),
        seqs=window.seqs,
        kinds=window.kinds,
        metadata=FrozenDict(meta),
        user_id=user.decode() if user is not None else None,
        created_ms=int(fields[b"created"]),
        updated_ms=int(fields[b"updated"]),
        version=int(fields[b"version"]),
        expires_ms=int_or_none(fields.get(b"expires")),
        ttl_ms=int_or_none(fields.get(b"ttl")),
        message_count=int(count),
        next_seq=int(fields.get(b"n", b"0")),
        nbytes=window.nbytes,
        base_seq=int(fields.get(b"b", b"0")),
    )


def by_seq(pair: tuple[int, bytes]) -> int:
    return pair[0]


def records_of(raw: Sequence[bytes]) -> list[OutboxRecord]:
    """Outbox records as a script returned them, oldest write first."""
    return sorted(map(OutboxRecord.parse, raw), key=lambda record: record.receipt.version)


Entry = tuple[int, str, int, bytes]
"""A hot-tier entry split up: ``(seq, kind, unix-ms, encoded message)``."""


def split_entries(raw: Sequence[bytes]) -> list[Entry]:
    """:func:`tieredstore.codec.split_entry` for many entries, payloads as ``bytes``."""
    out: list[Entry] = []
    for entry in raw:
        head, stamp, payload = entry.split(b":", 2)
        out.append((int(head[1:]), chr(head[0]), int(stamp), payload))
    return out


@dataclass(frozen=True, slots=True)
class Captured:
    """One hot session read atomically: its hash, window and spill list."""

    sid: str
    fields: dict[bytes, bytes]
    window: list[Entry]
    spill: list[Entry]

    @property
    def created_ms(self) -> int:
        return int(self.fields[b"created"])

    @property
    def version(self) -> int:
        return int(self.fields[b"version"])

    def copy(self, without: frozenset[int] = frozenset()) -> ArchiveCopy:
        """The session for :meth:`ArchiveStore.absorb_many` (minus seqs in ``without``)."""
        fields = self.fields
        entries = sorted(
            {e[0]: e for e in (*self.spill, *self.window) if e[0] not in without}.values()
        )
        meta = {name[2:].decode(): decode_json(value)
                for name, value in fields.items() if name.startswith(b"m:")}
        user = fields.get(b"user")
        expires, ttl = fields.get(b"expires"), fields.get(b"ttl")
        return ArchiveCopy(
            sid=self.sid,
            created_ms=self.created_ms,
            updated_ms=int(fields[b"updated"]),
            version=self.version,
            expires_ms=int(expires) if expires is not None else None,
            ttl_ms=int(ttl) if ttl is not None else None,
            next_seq=int(fields.get(b"n", b"0")),
            base_seq=int(fields.get(b"b", b"0")),
            metadata=FrozenDict(meta),
            user_id=user.decode() if user is not None else None,
            seqs=[e[0] for e in entries],
            kinds="".join(e[1] for e in entries),
            payloads=[e[3] for e in entries],
            stamps=[e[2] for e in entries],
        )


