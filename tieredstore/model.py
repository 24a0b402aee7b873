"""The data model: immutable messages, sessions and pages.

A :class:`Message` is any JSON object with a string ``role``. It is a ``dict``
(so ``json.dumps``, ``==`` against plain dicts and the provider SDKs all accept
it) that cannot be mutated, deeply: nested objects are :class:`FrozenDict`,
nested arrays :class:`FrozenList`. That is what lets a store hand the same
message objects to many readers without copying, and guarantees that nothing a
caller does to a message it got back can change stored data.
Use :meth:`Message.to_dict` for a mutable deep copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NoReturn

from tieredstore.errors import InvalidMessage

__all__ = [
    "MAX_JSON_DEPTH",
    "FrozenDict",
    "FrozenList",
    "Message",
    "MessageLike",
    "Page",
    "Session",
    "Tier",
    "freeze_json",
    "thaw_json",
]

Tier = Literal["memory", "redis", "archive"]

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
#: How deeply objects and arrays may nest in a message or in metadata (the
#: message object itself is level 1). The codec stops at 254 levels; this
#: leaves room for the records that embed a message or metadata (export).
MAX_JSON_DEPTH = 128


def _immutable(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(f"{type(self).__name__} is immutable; use to_dict() for a mutable copy")


class FrozenDict(dict[str, Any]):
    """A JSON object that cannot be mutated (a ``dict`` for every reader)."""

    __slots__ = ()
    __setitem__ = __delitem__ = _immutable
    clear = pop = popitem = setdefault = update = _immutable
    __ior__ = _immutable

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self

    def to_dict(self) -> dict[str, Any]:
        """A mutable deep copy made of plain ``dict`` and ``list``."""
        return thaw_json(self)  # type: ignore[no-any-return]


class FrozenList(list[Any]):
    """A JSON array that cannot be mutated (a ``list`` for every reader)."""

    __slots__ = ()
    __setitem__ = __delitem__ = _immutable
    append = extend = insert = pop = remove = reverse = sort = clear = _immutable
    __iadd__ = __imul__ = _immutable

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self),))

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenList:
        return self


class Message(FrozenDict):
    """One chat message: any JSON object with a string ``role``.

    ``Message(role="user", content="Hi")`` builds one; ``Message.of(mapping)``
    accepts a plain dict (OpenAI, Anthropic or any other format) and keeps every
    field unchanged. Unknown fields are kept too.
    """

    __slots__ = ()

    def __init__(self, role: str, content: Any = None, **fields: Any) -> None:
        fields = {"role": role, "content": content, **fields}
        dict.__init__(self, _validated_object(fields, "message"))
        _check_role(self)

    @classmethod
    def of(cls, value: MessageLike) -> Message:
        """Validate ``value`` (a ``Message`` or a mapping) and return it as a Message."""
        if type(value) is cls:
            return value
        if not isinstance(value, Mapping):
            raise InvalidMessage(f"a message must be a JSON object, got {type(value).__name__}")
        message = dict.__new__(cls)
        dict.__init__(message, _validated_object(value, "message"))
        _check_role(message)
        return message

    @classmethod
    def _trusted(cls, value: dict[str, Any]) -> Message:
        """Wrap decoded JSON that is already known to be valid (the read path)."""
        message = dict.__new__(cls)
        dict.__init__(message, value)
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                dict.__setitem__(message, key, freeze_json(item))
        return message

    @property
    def role(self) -> str:
        return self["role"]  # type: ignore[no-any-return]

    @property
    def content(self) -> Any:
        return self.get("content")

    @property
    def name(self) -> str | None:
        return self.get("name")

    @property
    def tool_calls(self) -> Any:
        return self.get("tool_calls")

    @property
    def tool_call_id(self) -> str | None:
        return self.get("tool_call_id")

    @property
    def metadata(self) -> Any:
        return self.get("metadata")

    def replace(self, **changes: Any) -> Message:
        """A new message with ``changes`` applied (``None`` values are kept as ``null``)."""
        return Message.of({**self, **changes})

    def __repr__(self) -> str:
        return f"Message({dict.__repr__(self)})"


MessageLike = Message | Mapping[str, Any]


def _check_role(message: Mapping[str, Any]) -> None:
    if not isinstance(message.get("role"), str):
        raise InvalidMessage("a message needs a string 'role'")


def _validated_object(value: Mapping[Any, Any], where: str, depth: int = 1) -> dict[str, Any]:
    if depth > MAX_JSON_DEPTH:
        _too_deep(where)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            if isinstance(key, str):
                key = str(key)
            else:
                raise InvalidMessage(f"{where}: object keys must be strings, got {key!r}")
        out[key] = _validated(item, where, depth)
    return out


def _validated(value: Any, where: str, depth: int) -> Any:
    """``value`` (inside a container at ``depth``) validated, frozen JSON."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if not _INT64_MIN <= value <= _UINT64_MAX:
            raise InvalidMessage(f"{where}: integer {value} does not fit in 64 bits")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise InvalidMessage(f"{where}: {value} is not a JSON number")
        return value
    if (kind is FrozenDict or kind is FrozenList) and _is_frozen_json(value, depth + 1):
        return value  # shared as is; anything odd inside is rebuilt (or rejected) below
    if isinstance(value, Mapping):
        return FrozenDict(_validated_object(value, where, depth + 1))
    if isinstance(value, list | tuple):
        if depth + 1 > MAX_JSON_DEPTH:
            _too_deep(where)
        return FrozenList([_validated(item, where, depth + 1) for item in value])
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _validated(int(value), where, depth)
    if isinstance(value, float):
        return _validated(float(value), where, depth)
    raise InvalidMessage(f"{where}: {type(value).__name__} is not JSON-serialisable")


def _is_frozen_json(value: FrozenDict | FrozenList, depth: int) -> bool:
    """Whether ``value`` (at ``depth``) holds only valid frozen JSON, so it can be shared."""
    if depth > MAX_JSON_DEPTH:
        return False
    if type(value) is FrozenDict:
        if not all(type(key) is str for key in value):
            return False
        items: Any = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not _INT64_MIN <= item <= _UINT64_MAX:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is FrozenDict or kind is FrozenList:
            if not _is_frozen_json(item, depth + 1):
                return False
        else:
            return False
    return True


def _too_deep(where: str) -> NoReturn:
    raise InvalidMessage(f"{where}: objects and arrays nest deeper than {MAX_JSON_DEPTH} levels")


def freeze_json(value: Any) -> Any:
    """Deeply freeze trusted, decoded JSON (no validation)."""
    kind = type(value)
    if kind is dict:
        return FrozenDict(
            {k: freeze_json(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
        )
    if kind is list:
        return FrozenList([freeze_json(v) if type(v) in _CONTAINERS else v for v in value])
    return value


_CONTAINERS = frozenset((dict, list))


def validate_json_object(value: Mapping[str, Any] | None, where: str) -> FrozenDict:
    """Validate and freeze a JSON object such as session metadata."""
    if value is None:
        return EMPTY_METADATA
    if not isinstance(value, Mapping):
        raise InvalidMessage(f"{where} must be a JSON object, got {type(value).__name__}")
    return FrozenDict(_validated_object(value, where))


def thaw_json(value: Any) -> Any:
    """A mutable deep copy of frozen (or plain) JSON."""
    if isinstance(value, dict):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw_json(v) for v in value]
    return value


EMPTY_METADATA = FrozenDict()


@dataclass(frozen=True, slots=True)
class Session:
    """A session as stored: its history, metadata and bookkeeping.

    ``version`` increases by one on every write. ``tier`` names the tier that
    served this read. ``message_count`` is the number of messages the store
    holds for the session (``len(messages)`` unless the read asked for fewer).
    ``seqs`` holds the seq of each message, in the same order: a message's
    number for life, which trimming leaves alone (so it has gaps where
    messages were dropped); empty from a store that does not number messages.
    """

    id: str
    messages: list[Message]
    metadata: FrozenDict
    user_id: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    expires_at: datetime | None
    message_count: int
    tier: Tier
    seqs: tuple[int, ...] = ()

    @property
    def first_seq(self) -> int | None:
        """The seq of ``messages[0]`` (``None`` without messages or seqs)."""
        return self.seqs[0] if self.seqs else None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of session ids, newest activity first unless asked otherwise.

    Pass ``next_cursor`` back to get the next page; it is ``None`` on the last.
    """

    ids: list[str]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)
