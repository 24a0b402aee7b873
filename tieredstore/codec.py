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
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter, methodcaller
from typing import Any

import orjson

from tieredstore.errors import InvalidInput, InvalidMessage
from tieredstore.model import FrozenDict, Message, freeze_json

__all__ = [
    "decode_cursor",
    "decode_entry",
    "decode_json",
    "decode_message",
    "decode_messages",
    "decode_window",
    "encode_cursor",
    "encode_entry",
    "encode_json",
    "encode_message",
    "entry_payload",
    "entry_seq",
    "split_entry",
]


QUOTE_BYTES = 21
"""What each ``"`` of an encoded message adds to its size once decoded: every
string is an object of its own, and so is each object or array nesting them
(fitted on chat messages, tool calls included; it errs on the large side)."""


def resident_nbytes(payload: bytes) -> int:
    """An estimate of the memory an encoded message takes once decoded, beyond
    a fixed overhead per message (see :data:`QUOTE_BYTES`)."""
    return len(payload) + QUOTE_BYTES * payload.count(b'"')


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


_split_entry = methodcaller("split", b":", 2)
_head = itemgetter(0)
_payload = itemgetter(2)


class Window:
    """Hot-tier entries decoded at once (see :func:`decode_window`)."""

    __slots__ = ("_heads", "messages", "nbytes")  # nbytes: see resident_nbytes

    def __init__(self, messages: list[Message], heads: list[bytes], nbytes: int) -> None:
        self.messages = messages
        self._heads = heads  # b"<kind><seq>" of each entry
        self.nbytes = nbytes

    @property
    def kinds(self) -> str:
        return bytes(map(_head, self._heads)).decode("ascii")

    @property
    def seqs(self) -> tuple[int, ...]:
        """Each entry's seq. Seqs only grow along a list, so a window whose ends
        are ``len - 1`` apart holds every seq between them: only two are parsed."""
        heads = self._heads
        if not heads:
            return ()
        first, last = int(heads[0][1:]), int(heads[-1][1:])
        if last - first == len(heads) - 1:
            return tuple(range(first, last + 1))
        return tuple(int(head[1:]) for head in heads)


_PASS = 256
"""Entries decoded per pass: a pass over a few hundred stays in the CPU's
caches, one over a whole long history (megabytes) does not."""


def decode_window(entries: Sequence[bytes]) -> Window:
    """Decode a list of hot-tier entries with one JSON parse per few hundred
    of them (see :func:`decode_messages`)."""
    if len(entries) <= _PASS:
        return _decode_pass(entries)
    messages: list[Message] = []
    heads: list[bytes] = []
    nbytes = 0
    for first in range(0, len(entries), _PASS):
        part = _decode_pass(entries[first : first + _PASS])
        messages += part.messages
        heads += part._heads
        nbytes += part.nbytes
    return Window(messages, heads, nbytes)


def _decode_pass(entries: Sequence[bytes]) -> Window:
    if not entries:
        return Window([], [], 0)
    parts = list(map(_split_entry, entries))
    payloads = list(map(_payload, parts))
    joined = b"[" + b",".join(payloads) + b"]"
    messages = _decoded(payloads, joined)
    nbytes = resident_nbytes(joined) - len(payloads) - 1  # less the brackets and commas
    return Window(messages, list(map(_head, parts)), nbytes)


def decode_messages(payloads: Sequence[bytes]) -> list[Message]:
    """Decode stored messages (trusted: validated when written) with one JSON
    parse per few hundred of them.

    The payloads are joined into one JSON array (each is a whole encoded
    object, so the array holds exactly one value per payload) and the
    messages are built without a Python call per message; only a message
    whose payload may nest an object or an array is then frozen field by field.
    """
    messages: list[Message] = []
    for first in range(0, len(payloads), _PASS):
        part = payloads[first : first + _PASS]
        messages += _decoded(part, b"[" + b",".join(part) + b"]")
    return messages


def _decoded(payloads: Sequence[bytes], joined: bytes) -> list[Message]:
    values = orjson.loads(joined)
    if len(values) != len(payloads):
        raise InvalidMessage(f"{len(payloads)} stored messages decoded to {len(values)} values")
    messages: list[Message] = list(map(dict.__new__, repeat(Message, len(values))))
    deque(map(dict.update, messages, values), maxlen=0)
    if joined.count(b"{") != len(values) or joined.find(b"[", 1, len(joined) - 1) != -1:
        for message, value, payload in zip(messages, values, payloads, strict=True):
            if payload.find(b"[") != -1 or payload.find(b"{", 1) != -1:
                for key, item in value.items():
                    if type(item) is dict or type(item) is list:
                        dict.__setitem__(message, key, freeze_json(item))
    return messages


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
