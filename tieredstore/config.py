"""Limits and settings shared by every store."""

from __future__ import annotations

from dataclasses import dataclass, fields

from tieredstore.errors import InvalidInput

__all__ = ["Limits"]


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
