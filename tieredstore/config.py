"""Limits and settings shared by every store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

from tieredstore.errors import InvalidInput

__all__ = ["Limits", "env_number"]

T = TypeVar("T", int, float)
D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits enforced before anything is written.

    ``max_message_bytes`` bounds one encoded message, ``max_messages_per_call``
    the messages in one ``save``/``append``, ``max_call_bytes`` their total
    encoded size, and ``max_metadata_bytes`` a session's encoded metadata.
    """

    max_message_bytes: int = 4 * 2**20
    max_messages_per_call: int = 10_000
    max_call_bytes: int = 64 * 2**20
    max_metadata_bytes: int = 64 * 2**10
    max_session_id_length: int = 256

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"Limits.{spec.name} must be a positive integer, got {value!r}")


DEFAULT_BUCKETS = 16
"""Redis buckets per namespace unless a store is told otherwise (see
:mod:`tieredstore.tiers.redis.keys`)."""


def env_number(env: Mapping[str, str], name: str, kind: type[T], default: D) -> T | D:
    """The ``TIEREDSTORE_*`` variable ``name`` as an ``int`` or a ``float``; ``default`` unset.

    A value that does not parse raises :class:`InvalidInput` naming the
    variable, so an operator sees which setting is wrong.
    """
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise InvalidInput(f"{name} must be {noun}, got {raw!r}") from None
