"""What the archive tier exchanges with other tiers, as records.

:class:`ArchiveCopy` (a session handed over for ``absorb_many``),
:class:`PreparedCopies` (those copies with their rows built ahead) and
:class:`Reconciled` (what ``reconcile`` decided for the Redis copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from tieredstore.codec import encode_json
from tieredstore.core import Batch
from tieredstore.model import FrozenDict, Message
from tieredstore.policy import message_kind

if TYPE_CHECKING:
    from tieredstore.tiers.transfer import Snapshot


@dataclass(frozen=True, slots=True)
class ArchiveCopy:
    """One session as another tier hands it to :meth:`ArchiveStore.absorb_many`.

    The bookkeeping of that tier's copy plus messages by seq, oldest first:
    ``payloads`` are the encoded messages (stored byte for byte), ``messages``
    the same decoded (any mapping; for role and search text; ``None``: decoded
    from ``payloads`` when needed), ``stamps`` their write times in ms
    (``None``: ``updated_ms``). Messages below ``base_seq`` are ignored (a
    save replaced them).
    """

    sid: str
    created_ms: int
    updated_ms: int
    version: int
    expires_ms: int | None
    ttl_ms: int | None
    next_seq: int
    base_seq: int
    metadata: FrozenDict
    user_id: str | None
    seqs: Sequence[int]
    kinds: str
    payloads: Sequence[bytes]
    messages: Sequence[Mapping[str, Any]] | None = None
    stamps: Sequence[int] | None = None

    @classmethod
    def of(cls, snapshot: Snapshot, spilled: Iterable[tuple[int, Message]] = ()) -> ArchiveCopy:
        """A snapshot plus the older messages its tier spilled (``(seq, message)``)."""
        pairs = {seq: message for seq, message in spilled}
        pairs.update(zip(snapshot.seqs, snapshot.messages, strict=True))
        seqs = sorted(seq for seq in pairs if seq >= snapshot.base_seq)
        messages = [pairs[seq] for seq in seqs]
        return cls(
            sid=snapshot.sid,
            created_ms=snapshot.created_ms,
            updated_ms=snapshot.updated_ms,
            version=snapshot.version,
            expires_ms=snapshot.expires_ms,
            ttl_ms=snapshot.ttl_ms,
            next_seq=snapshot.next_seq,
            base_seq=snapshot.base_seq,
            metadata=snapshot.metadata,
            user_id=snapshot.user_id,
            seqs=seqs,
            kinds="".join(message_kind(m) for m in messages),
            payloads=[encode_json(m) for m in messages],
            messages=messages,
        )

    def decoded(self) -> Sequence[Mapping[str, Any]]:
        if self.messages is not None:
            return self.messages
        return [orjson.loads(payload) for payload in self.payloads]

    def batch(self) -> Batch:
        """The messages as a :class:`Batch` (they were validated when first written)."""
        messages: Any = tuple(self.decoded())
        return Batch(messages, tuple(self.payloads), self.kinds, sum(map(len, self.payloads)))


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What :meth:`ArchiveStore.reconcile` decided for the Redis copy.

    ``action``: ``none`` (nothing to do), ``unfence`` (the Redis copy is
    current: lift its fence), ``drop`` (it is a deleted generation: delete it
    with ``tombstone_ms``), ``promote`` (the archive holds the session's one
    history, at ``version``: copy it over the fenced Redis copy).
    """

    action: str
    tombstone_ms: int = 0
    version: int = 0


@dataclass(frozen=True, slots=True)
class PreparedCopies:
    """Copies for :meth:`ArchiveStore.absorb_many` with their rows already built.

    Building rows (decoding each message for its role and search text) is CPU
    work without I/O, so :meth:`ArchiveStore.prepare` can run in another
    thread while an earlier batch is being written.
    """

    namespace: str
    copies: Sequence[ArchiveCopy]
    sessions: Sequence[tuple[Any, ...]]
    """Per copy: the new session row's values, in ``_ABSORB_COLUMNS`` order."""
    messages: Sequence[Sequence[tuple[Any, ...]]]
    """Per copy: its message rows for ``COPY`` (PostgreSQL only; else empty)."""
