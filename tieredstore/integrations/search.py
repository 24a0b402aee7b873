"""Full-text search over one session's archived messages, for the adapters.

The archive's search (:class:`tieredstore.query.ArchiveQuery`) finds the hits;
each hit's message is then read back through the store's own history
(``TieredStore.history`` or the archive's ``history_page``), which keeps only
messages of the session's current history: a hit on an archive row that a
later ``save`` or ``delete`` replaced, and the worker has not rewritten yet,
is dropped rather than returned.

Only what the archive holds is searched (see the README, "Archival
queries"): with ``durability="write_through"`` every acknowledged message,
with ``"archive"`` those the worker has archived, and on an archive store
(or the embedded default) everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tieredstore.core import check_limit
from tieredstore.errors import ConfigurationError, SessionNotFound
from tieredstore.integrations import async_target
from tieredstore.model import Message
from tieredstore.plans import Op, Plan
from tieredstore.query_results import SearchHit

__all__ = ["SessionSearch"]

#: Hits whose seqs lie this close together are read back in one history page.
_SPAN = 256
#: The most hits one archive query page returns.
_PAGE = 1000


class SessionSearch:
    """Searches one store's archive, one session at a time.

    ``store`` is a tiered store with an archive, or an archive store, sync or
    async; any other store raises :class:`ConfigurationError` here (there is
    nothing to search), so adapters build this on first use.
    """

    def __init__(self, store: Any) -> None:
        from tieredstore.tiered_shell import TieredShell
        from tieredstore.tiers.archive import ArchiveStore, AsyncArchiveStore

        self.tiered = isinstance(store, TieredShell)
        archive = store.archive if self.tiered else store
        #: Whether :attr:`query` is an :class:`AsyncArchiveQuery` (else a sync one).
        self.asynchronous = isinstance(archive, AsyncArchiveStore)
        if isinstance(archive, AsyncArchiveStore):
            from tieredstore.query_async import AsyncArchiveQuery

            self.query: Any = AsyncArchiveQuery(archive)
        elif isinstance(archive, ArchiveStore):
            from tieredstore.query import ArchiveQuery

            self.query = ArchiveQuery(archive)
        else:
            raise ConfigurationError(
                "archive",
                f"searching needs a store with an archive; {type(store).__name__} has none "
                "(use a TieredStore with a database_url, or an ArchiveStore)",
            )

    def async_query(self) -> Any:
        """:attr:`query` as async code calls it (a sync one runs in worker threads)."""
        return self.query if self.asynchronous else async_target(self.query)

    def hits(self, session_id: str, text: str, limit: int) -> Plan[list[tuple[SearchHit, Message]]]:
        """The newest ``limit`` hits of ``text`` in the session, with their messages.

        A plan over the targets ``"query"`` (:attr:`query`) and ``"store"``.
        """
        limit = check_limit(limit)
        found: list[tuple[SearchHit, Message]] = []
        cursor: str | None = None
        while len(found) < limit:
            page = yield Op(
                "query",
                "search",
                (text,),
                {"session_ids": [session_id], "limit": min(limit, _PAGE), "cursor": cursor},
            )
            if page.hits:
                messages = yield from self._messages(session_id, [h.seq for h in page.hits])
                for hit in page.hits:
                    message = messages.get(hit.seq)
                    if message is not None:  # else no longer part of the history
                        found.append((hit, message))
            cursor = page.next_cursor
            if cursor is None:
                break
        return found[:limit]

    def _messages(self, session_id: str, seqs: Sequence[int]) -> Plan[dict[int, Message]]:
        """The current history's messages at ``seqs`` (missing ones left out)."""
        out: dict[int, Message] = {}
        wanted = set(seqs)
        for low, high in _spans(sorted(wanted)):
            before, limit = high + 1, high - low + 1
            try:
                if self.tiered:
                    page = yield Op(
                        "store", "history", (session_id,), {"before": before, "limit": limit}
                    )
                    pairs = list(zip(page.seqs, page.messages, strict=True))
                else:
                    part = yield Op("store", "history_page", (session_id, before, limit))
                    pairs = part.pairs if part is not None else []
            except SessionNotFound:
                return {}
            out.update((seq, message) for seq, message in pairs if seq in wanted)
        return out


def _spans(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ``seqs`` cut into ``(low, high)`` runs no wider than :data:`_SPAN`."""
    spans: list[tuple[int, int]] = []
    for seq in seqs:
        if spans and seq - spans[-1][0] < _SPAN:
            spans[-1] = (spans[-1][0], seq)
        else:
            spans.append((seq, seq))
    return spans
