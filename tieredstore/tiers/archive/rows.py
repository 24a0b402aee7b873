"""Messages into rows and back: search text, ``unnest`` arrays, trims, metadata, batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from tieredstore.codec import encode_json
from tieredstore.core import Batch
from tieredstore.model import EMPTY_METADATA, FrozenDict, freeze_json
from tieredstore.policy import plan_trim

if TYPE_CHECKING:
    from tieredstore.tiers.transfer import Snapshot


def _content_text(message: Mapping[str, Any]) -> str | None:
    """The plain text of a message's content (for search), NULs removed."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        if not parts:
            return None
        text = "\n".join(parts)
    else:
        return None
    return _no_nul(text)


#: How an encoded payload spells U+0000, which PostgreSQL's JSONB cannot hold.
_NUL_ESCAPE = b"\\u0000"


def _stored_text(message: Mapping[str, Any], payload: bytes) -> str | None:
    """``content_text`` of a PostgreSQL row: the search text only when the payload can't give it.

    The search index reads the text out of the payload as JSONB, which
    rejects an escaped U+0000; such rows (and only they) store their text.
    The others store ``""``: a byte, where a NULL would cost the row a null
    bitmap.
    """
    return _content_text(message) if _NUL_ESCAPE in payload else ""


def _no_nul(text: str) -> str:
    return text.replace("\x00", "") if "\x00" in text else text


def _arrays(batch: Batch, keep: Sequence[int], idx: Sequence[int]) -> dict[str, list[Any]]:
    """Column arrays of ``batch.messages[i] for i in keep`` (for PostgreSQL ``unnest``)."""
    messages = batch.messages
    return {
        "idx": list(idx),
        "roles": [_no_nul(messages[i]["role"]) for i in keep],
        "kinds": [batch.kinds[i] for i in keep],
        "payloads": [batch.payloads[i] for i in keep],
        "texts": [_stored_text(messages[i], batch.payloads[i]) for i in keep],
    }


def _trim(kinds: str, max_messages: int | None) -> tuple[int, int, str]:
    """``plan_trim`` plus the kinds that survive: ``(lead, drop, kept_kinds)``."""
    lead, drop = plan_trim(kinds, max_messages)
    if not drop:
        return lead, 0, kinds
    return lead, drop, kinds[:lead] + kinds[lead + drop :]


def _kept(n: int, lead: int, drop: int) -> list[int]:
    """Indices ``0..n-1`` without the dropped run ``lead .. lead + drop - 1``."""
    return [*range(min(lead, n)), *range(lead + drop, n)] if drop else list(range(n))


def _frozen(metadata: Any) -> FrozenDict:
    if isinstance(metadata, FrozenDict):
        return metadata
    if isinstance(metadata, str | bytes):  # a driver that hands JSON back as text
        metadata = orjson.loads(metadata)
    if not metadata:
        return EMPTY_METADATA
    frozen = freeze_json(metadata)
    assert isinstance(frozen, FrozenDict)
    return frozen


def _snapshot_batch(snapshot: Snapshot) -> Batch:
    """A snapshot's messages re-encoded as a :class:`Batch` (they were valid when written)."""
    payloads = tuple(encode_json(message) for message in snapshot.messages)
    return Batch(snapshot.messages, payloads, snapshot.kinds, sum(map(len, payloads)))


def _subset(batch: Batch, keep: Sequence[int]) -> Batch:
    payloads = tuple(batch.payloads[i] for i in keep)
    return Batch(
        tuple(batch.messages[i] for i in keep),
        payloads,
        "".join(batch.kinds[i] for i in keep),
        sum(map(len, payloads)),
    )
