"""The I/O-free core every store shares: validation, prepared writes, TTLs.

Stores call these before touching a backend, so bad input is rejected before
anything is written, with the same error from every tier.
"""

from __future__ import annotations

import math
import numbers
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tieredstore.codec import encode_json, resident_nbytes
from tieredstore.config import Limits
from tieredstore.errors import InvalidInput, InvalidMessage, InvalidSessionId, PayloadTooLarge
from tieredstore.model import FrozenDict, Message, MessageLike, validate_json_object
from tieredstore.policy import message_kind

__all__ = [
    "Batch",
    "Clock",
    "Order",
    "TTLLike",
    "check_before",
    "check_last",
    "check_limit",
    "check_order",
    "check_positive_int",
    "check_session_id",
    "check_user_id",
    "from_ms",
    "prepare_batch",
    "prepare_metadata",
    "resolve_ttl_ms",
    "to_ms",
]

Clock = Callable[[], float]
MAX_TTL_MS = 1000 * 365 * 86_400_000
#: ``last`` values above this read the whole history (no history is longer).
MAX_LAST = 2**31 - 1
#: ``before`` values above this are past every seq a session can reach.
MAX_SEQ = 2**53
TTLLike = timedelta | int | float
Order = Literal["desc", "asc"]

# No whitespace, no control characters, nothing that is special in Redis key
# patterns or hash tags ({ } [ ] * ? \), no lone surrogates (they have no
# UTF-8 encoding, so no server could store them), at most the configured length.
_UNSAFE_ID_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f{}\[\]*?\\\u2028\u2029\ufeff\ud800-\udfff]")


def check_session_id(session_id: object, limits: Limits, what: str = "session id") -> str:
    if not isinstance(session_id, str):
        raise InvalidSessionId(f"{what} must be a string, got {type(session_id).__name__}")
    if not session_id:
        raise InvalidSessionId(f"{what} must not be empty")
    if len(session_id) > limits.max_session_id_length:
        raise InvalidSessionId(
            f"{what} is {len(session_id)} characters; the limit is {limits.max_session_id_length}"
        )
    bad = _UNSAFE_ID_CHARS.search(session_id)
    if bad:
        char = bad.group()
        why = " (a lone surrogate: not UTF-8)" if "\ud800" <= char <= "\udfff" else ""
        raise InvalidSessionId(f"{what} {session_id!r} holds an unsafe character {char!r}{why}")
    return session_id


def check_user_id(user_id: object, limits: Limits) -> str | None:
    if user_id is None:
        return None
    return check_session_id(user_id, limits, what="user id")


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages validated, frozen and encoded once, ready for any tier.

    ``nbytes`` estimates the memory the messages take (see
    :func:`~tieredstore.codec.resident_nbytes`), for the memory tier's bound.
    """

    messages: tuple[Message, ...]
    payloads: tuple[bytes, ...]
    kinds: str
    nbytes: int

    def __len__(self) -> int:
        return len(self.messages)


EMPTY_BATCH = Batch((), (), "", 0)


def prepare_batch(messages: Iterable[MessageLike], limits: Limits) -> Batch:
    if isinstance(messages, Mapping | str | bytes) or not isinstance(messages, Iterable):
        raise InvalidMessage("messages must be a sequence of messages, not a single value")
    frozen: list[Message] = []
    payloads: list[bytes] = []
    kinds: list[str] = []
    total = resident = 0
    for index, raw in enumerate(messages):
        if len(frozen) >= limits.max_messages_per_call:
            raise PayloadTooLarge(f"more than {limits.max_messages_per_call} messages in one call")
        try:
            message = Message.of(raw)
        except InvalidMessage as exc:
            raise InvalidMessage(f"message {index}: {exc}") from None
        payload = encode_json(message)
        if len(payload) > limits.max_message_bytes:
            raise PayloadTooLarge(
                f"message {index} is {len(payload)} bytes; the limit is {limits.max_message_bytes}"
            )
        total += len(payload)
        resident += resident_nbytes(payload)
        if total > limits.max_call_bytes:
            raise PayloadTooLarge(f"the call exceeds {limits.max_call_bytes} bytes")
        frozen.append(message)
        payloads.append(payload)
        kinds.append(message_kind(message))
    return Batch(tuple(frozen), tuple(payloads), "".join(kinds), resident)


def prepare_metadata(metadata: Mapping[str, Any] | None, limits: Limits) -> FrozenDict | None:
    """Validate session metadata (a JSON object); ``None`` stays ``None``."""
    if metadata is None:
        return None
    frozen = validate_json_object(metadata, "metadata")
    _check_no_nul(frozen)
    size = len(encode_json(frozen))
    if size > limits.max_metadata_bytes:
        raise PayloadTooLarge(f"metadata is {size} bytes; the limit is {limits.max_metadata_bytes}")
    return frozen


def _check_no_nul(value: Any) -> None:
    # PostgreSQL JSONB cannot hold U+0000; reject it in every store alike.
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidMessage("metadata strings must not contain U+0000")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_no_nul(key)
            _check_no_nul(item)
    elif isinstance(value, list):
        for item in value:
            _check_no_nul(item)


def merge_metadata(current: Mapping[str, Any], updates: Mapping[str, Any]) -> FrozenDict:
    """Top-level JSON merge patch (RFC 7386): ``None`` removes a key."""
    merged = dict(current)
    for key, value in updates.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return FrozenDict(merged)


def resolve_ttl_ms(ttl: TTLLike | None, default: TTLLike | None) -> int | None:
    """The TTL of one write in milliseconds, or ``None`` to leave expiry alone.

    A TTL is a :class:`~datetime.timedelta` or a number of seconds (not a
    bool), positive, finite and at most :data:`MAX_TTL_MS`.
    """
    chosen = ttl if ttl is not None else default
    if chosen is None:
        return None
    if isinstance(chosen, timedelta):
        seconds = chosen.total_seconds()
    elif isinstance(chosen, numbers.Real) and not isinstance(chosen, bool):
        try:
            seconds = float(chosen)
        except (OverflowError, ValueError, TypeError):
            seconds = math.inf
    else:
        raise InvalidInput(
            f"ttl must be a timedelta or a number of seconds, got {type(chosen).__name__}"
        )
    if not seconds > 0:
        raise InvalidInput(f"ttl must be positive, got {chosen!r}")
    if not seconds * 1000 <= MAX_TTL_MS:
        raise InvalidInput(f"ttl must be at most {MAX_TTL_MS // 1000} seconds, got {chosen!r}")
    return max(int(seconds * 1000), 1)


def check_limit(value: object, name: str = "limit", maximum: int = 10_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"{name} must be an integer between 1 and {maximum}, got {value!r}")
    return value


def check_positive_int(value: object, name: str) -> int:
    """A size or count setting: an ``int`` (not a bool) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
    return value


def check_last(last: object) -> int | None:
    """``last`` of a read: ``None`` (everything) or an int >= 0; huge values mean everything."""
    if last is None:
        return None
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        raise InvalidInput(f"last must be a non-negative integer, got {last!r}")
    return min(last, MAX_LAST)


def check_before(before: object) -> int | None:
    """``before`` of a history page: ``None`` (the newest) or a seq (an int >= 0)."""
    if before is None:
        return None
    if isinstance(before, bool) or not isinstance(before, int) or before < 0:
        raise InvalidInput(f"before must be a non-negative integer (a seq), got {before!r}")
    return min(before, MAX_SEQ)


def check_expected_version(expected: object) -> int | None:
    if expected is None:
        return None
    if isinstance(expected, bool) or not isinstance(expected, int) or not 0 <= expected < 2**63:
        raise InvalidInput(
            f"expected_version must be an integer from 0 to 2**63 - 1, got {expected!r}"
        )
    return expected


def check_order(order: object) -> Order:
    if order not in ("desc", "asc"):
        raise InvalidInput(f"order must be 'desc' or 'asc', got {order!r}")
    return order


def to_ms(moment: float) -> int:
    return int(moment * 1000)


def from_ms(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC)


def system_clock() -> float:
    return time.time()
