"""The one codec every tier uses: orjson, plus the compact hot-tier entry format.

A hot-tier entry is ``<kind><seq>:<unix-ms>:<json>``: one byte of message kind
(see :mod:`tieredstore.policy`, so the Redis trim script need not decode JSON),
the message's sequence number within its session (see
:mod:`tieredstore.tiers.transfer`), the write time in milliseconds, then the
message exactly as encoded. Carrying the seq in the entry keeps it attached to
its message whatever a trim removes around it.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from tieredstore.errors import InvalidInput, InvalidMessage
from tieredstore.model import FrozenDict, Message, freeze_json

__all__ = [
    "decode_cursor",
    "decode_entry",
    "decode_json",
    "decode_message",
    "encode_cursor",
    "encode_entry",
    "encode_json",
    "encode_message",
    "entry_payload",
    "entry_seq",
    "split_entry",
]


def encode_json(value: Any) -> bytes:
    """Encode validated JSON; raises :class:`InvalidMessage` for what JSON can't hold."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidMessage(f"not JSON-serialisable: {exc}") from exc


def decode_json(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode stored JSON into frozen values."""
    return freeze_json(orjson.loads(data))


def decode_object(data: bytes | bytearray | memoryview | str) -> FrozenDict:
    value = decode_json(data)
    if not isinstance(value, FrozenDict):
        raise InvalidMessage("stored value is not a JSON object")
    return value


encode_message = encode_json


def decode_message(data: bytes | bytearray | memoryview | str) -> Message:
    """Decode one stored message (trusted: it was validated when written)."""
    return Message._trusted(orjson.loads(data))


def encode_entry(kind: str, seq: int, timestamp_ms: int, payload: bytes) -> bytes:
    return b"%b%d:%d:%b" % (kind.encode("ascii"), seq, timestamp_ms, payload)


def entry_prefix(kind: str, seq: int, timestamp_ms: int) -> bytes:
    return b"%b%d:%d:" % (kind.encode("ascii"), seq, timestamp_ms)


def split_entry(entry: bytes) -> tuple[str, int, int, memoryview]:
    """Split a hot-tier entry into (kind, seq, unix-ms, encoded message) without decoding."""
    first = entry.index(b":", 1)
    second = entry.index(b":", first + 1)
    return (
        chr(entry[0]),
        int(entry[1:first]),
        int(entry[first + 1 : second]),
        memoryview(entry)[second + 1 :],
    )


def decode_entry(entry: bytes) -> tuple[str, int, int, Message]:
    """Split a hot-tier entry into (kind, seq, unix-ms, message)."""
    kind, seq, timestamp_ms, payload = split_entry(entry)
    return kind, seq, timestamp_ms, decode_message(payload)


def entry_seq(entry: bytes) -> int:
    """The seq of a hot-tier entry."""
    return int(entry[1 : entry.index(b":", 1)])


def entry_payload(entry: bytes) -> memoryview:
    """The encoded message inside an entry, without copying it."""
    return memoryview(entry)[entry.index(b":", entry.index(b":", 1) + 1) + 1 :]


def encode_cursor(score: int, member: str) -> str:
    raw = f"{score}:{member}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Parse a cursor made by :func:`encode_cursor`; raises :class:`InvalidInput`.

    The score must fit in 64 bits and the member hold no NUL, as in every
    cursor a store hands out, so a forged one cannot reach a server as junk.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
        score, member = raw.split(":", 1)
        position = int(score), member
    except (ValueError, UnicodeError) as exc:
        raise InvalidInput(f"malformed cursor: {cursor!r}") from exc
    if not -(2**63) <= position[0] < 2**63 or "\x00" in member:
        raise InvalidInput(f"malformed cursor: {cursor!r}")
    return position
