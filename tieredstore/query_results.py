"""The records :mod:`tieredstore.query` returns: search hits, session summaries, reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "EraseReport",
    "ImportReport",
    "SearchHit",
    "SearchPage",
    "SessionPage",
    "SessionSummary",
]


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One matching message: where it is, when, and a snippet with matches marked."""

    session_id: str
    seq: int
    created_ms: int
    role: str
    user_id: str | None
    snippet: str

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created_ms / 1000, UTC)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of hits; pass ``next_cursor`` back for the next (``None``: the last)."""

    hits: list[SearchHit]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """An archived session without its messages."""

    session_id: str
    user_id: str | None
    message_count: int
    first_activity_ms: int
    last_activity_ms: int
    metadata: dict[str, Any]
    version: int
    expires_ms: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[SessionSummary]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[SessionSummary]:
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self.sessions)


@dataclass(slots=True)
class ImportReport:
    sessions: int = 0
    messages: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sessions": self.sessions, "messages": self.messages}


@dataclass(slots=True)
class EraseReport:
    """What :func:`erase` removed, per tier (memory counts this process's cache)."""

    user_id: str
    session_ids: list[str] = field(default_factory=list)
    memory_sessions: int = 0
    redis_sessions: int = 0
    archive_sessions: int = 0
    archive_messages: int = 0
    redis_skipped: list[str] = field(default_factory=list)
    """Ids Redis cannot hold (refused by today's validation): not asked there."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
