"""Trim policy: which messages a bounded history drops.

Each message has a one-letter *kind*:

* ``s`` — a system (or developer) instruction,
* ``t`` — a tool result (OpenAI ``tool``/``function`` roles, or an Anthropic
  message carrying a ``tool_result`` block),
* ``m`` — anything else.

Trimming to ``max_messages`` keeps the *leading* system messages, drops the
oldest of the rest, and then keeps dropping while the oldest survivor is a
tool result: a tool result always follows the assistant message whose call
produced it, so once that message is gone its results go too. A tool result
is thus never kept without its call. The Redis trim script implements the
same rule over the kind byte of each entry (see :mod:`tieredstore.tiers.redis`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "KIND_OTHER",
    "KIND_SYSTEM",
    "KIND_TOOL_RESULT",
    "leading_system",
    "message_kind",
    "plan_trim",
    "plan_trim_bytes",
]

KIND_SYSTEM = "s"
KIND_TOOL_RESULT = "t"
KIND_OTHER = "m"

_SYSTEM_ROLES = frozenset({"system", "developer"})
_TOOL_ROLES = frozenset({"tool", "function", "ipython"})


def message_kind(message: Mapping[str, Any]) -> str:
    role = message.get("role")
    if role in _SYSTEM_ROLES:
        return KIND_SYSTEM
    if role in _TOOL_ROLES:
        return KIND_TOOL_RESULT
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "tool_result":
                return KIND_TOOL_RESULT
    return KIND_OTHER


def leading_system(kinds: Sequence[str]) -> int:
    """How many messages at the start of the history are system messages."""
    count = 0
    for kind in kinds:
        if kind != KIND_SYSTEM:
            break
        count += 1
    return count


def plan_trim(
    kinds: Sequence[str], max_messages: int | None, lead: int | None = None
) -> tuple[int, int]:
    """Return ``(lead, drop)``: keep ``kinds[:lead]``, drop ``kinds[lead:lead + drop]``.

    At least the newest message survives the count rule (before the tool-result
    rule), so a history made only of system messages is left alone.
    """
    if lead is None:
        lead = leading_system(kinds)
    if max_messages is None:
        return lead, 0
    rest = len(kinds) - lead
    keep = max(max_messages - lead, 1)
    drop = max(rest - keep, 0)
    if drop == 0:
        return lead, 0
    while lead + drop < len(kinds) and kinds[lead + drop] == KIND_TOOL_RESULT:
        drop += 1
    return lead, drop


def plan_trim_bytes(
    kinds: Sequence[str],
    sizes: Sequence[int],
    max_messages: int | None,
    max_bytes: int | None,
    lead: int | None = None,
) -> tuple[int, int]:
    """:func:`plan_trim` under a byte budget too: ``(lead, drop)`` as there.

    ``sizes`` are the encoded sizes of the messages; after the count rule the
    oldest of the rest keep going until the history fits ``max_bytes`` (the
    leading system messages and the newest message always stay), then the
    tool-result rule applies as before, so no tool result outlives its call.
    """
    lead, drop = plan_trim(kinds, max_messages, lead)
    if max_bytes is None:
        return lead, drop
    count = len(kinds)
    total = sum(sizes) - sum(sizes[lead : lead + drop])
    while total > max_bytes and lead + drop < count - 1:
        total -= sizes[lead + drop]
        drop += 1
    while lead + drop < count and kinds[lead + drop] == KIND_TOOL_RESULT:
        drop += 1
    return lead, drop
