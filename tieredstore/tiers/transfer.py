"""What tiers hand each other: write receipts and session snapshots.

Sequence numbers (``seq``) identify a message within its session for life:
they only grow (a ``save`` starts its messages after the last seq ever used),
so a copy of a session in another tier can be brought up to date by seq
alone, in any order, idempotently. ``TieredStore`` relies on that to mirror
writes into the archive and to page through a history split across tiers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tieredstore.core import MAX_TTL_MS, from_ms
from tieredstore.errors import InvalidInput, TieredStoreError
from tieredstore.model import FrozenDict, Message, Session, Tier

__all__ = ["HistoryPart", "SessionFenced", "Snapshot", "WriteReceipt", "tombstone_ms"]

DEFAULT_TOMBSTONE_TTL = 86_400.0
"""How long a delete's tombstone outlives it (seconds), in Redis and the archive."""


def tombstone_ms(seconds: object) -> int:
    """A ``tombstone_ttl`` option in milliseconds, checked (0: keep no tombstone)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise InvalidInput(f"tombstone_ttl must be a non-negative number, got {seconds!r}")
    if seconds * 1000 > MAX_TTL_MS:
        raise InvalidInput(f"tombstone_ttl must be at most {MAX_TTL_MS // 1000} seconds")
    return int(seconds * 1000)


class SessionFenced(TieredStoreError):
    """A tier's copy of the session is fenced: the archive accepted writes while
    Redis was unreachable, and the Redis copy must be reconciled before use.

    ``TieredStore`` handles it (it reconciles and retries); it never reaches
    callers of the public API.
    """

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} is being reconciled")
        self.session_id = session_id


@dataclass(frozen=True, slots=True)
class WriteReceipt:
    """The outcome of one write: the new version and where its messages landed.

    ``first_seq`` is the seq of the first message the call wrote and
    ``next_seq`` the seq the next message will get; for a ``save``,
    ``first_seq`` is also the new start of the history (older seqs are gone).
    """

    version: int
    first_seq: int
    next_seq: int
    created_ms: int
    updated_ms: int
    expires_ms: int | None
    ttl_ms: int | None
    pending: int = 0
    """Outbox records the session holds after this write (write_through)."""


@dataclass(frozen=True, slots=True)
class HistoryPart:
    """One tier's part of a history page: the generation and history start it
    belongs to, and ``(seq, message)`` pairs, oldest first."""

    created_ms: int
    base_seq: int
    pairs: list[tuple[int, Message]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A session as one tier holds it, complete enough to copy to another tier.

    ``messages``/``seqs`` may be only the newest part of the history (a hot
    window, or what a ``last=`` read asked for); ``message_count`` is how many
    messages the tier holds in all and ``next_seq`` the seq of the next one.
    ``nbytes`` is the encoded size of ``messages``; ``base_seq`` the first seq
    of the current history (the last ``save`` replaced everything before it).
    """

    sid: str
    messages: tuple[Message, ...]
    seqs: tuple[int, ...]
    kinds: str
    metadata: FrozenDict
    user_id: str | None
    created_ms: int
    updated_ms: int
    version: int
    expires_ms: int | None
    ttl_ms: int | None
    message_count: int
    next_seq: int
    nbytes: int = 0
    base_seq: int = 0

    @property
    def complete(self) -> bool:
        """Whether ``messages`` is everything the tier holds for the session."""
        return len(self.messages) == self.message_count

    def session(self, tier: Tier, last: int | None = None) -> Session:
        messages, seqs = list(self.messages), self.seqs
        if last is not None:
            messages, seqs = (messages[-last:], seqs[-last:]) if last else ([], ())
        return Session(
            id=self.sid,
            messages=messages,
            metadata=self.metadata,
            user_id=self.user_id,
            created_at=from_ms(self.created_ms),  # type: ignore[arg-type]
            updated_at=from_ms(self.updated_ms),  # type: ignore[arg-type]
            version=self.version,
            expires_at=from_ms(self.expires_ms),
            message_count=self.message_count,
            tier=tier,
            seqs=seqs,
        )
