"""The conversations every contestant stores: OpenAI chat messages, built from a seed.

A conversation alternates user turns and assistant turns; about 30% of the
assistant turns call one or two tools, each call followed by its ``tool``
message, then the assistant's answer. Content is a few hundred bytes of
words drawn from a fixed vocabulary, so every run stores the same bytes.
"""

from __future__ import annotations

import json
import random
from typing import Any

ChatMessage = dict[str, Any]

TOOL_SHARE = 0.3
"""The share of assistant messages that are tool calls (each tool turn has two)."""
_TOOL_TURN = TOOL_SHARE / (1 - TOOL_SHARE)
_WORDS = (
    "the", "order", "shipment", "invoice", "customer", "account", "refund", "policy",
    "delivery", "tracking", "number", "warehouse", "status", "update", "request", "billing",
    "address", "payment", "card", "balance", "product", "return", "window", "label",
    "carrier", "estimate", "schedule", "support", "ticket", "priority", "escalation",
    "manager", "note", "summary", "detail", "reason", "issue", "resolved", "pending",
    "approved", "please", "thanks", "could", "would", "should", "check", "confirm",
    "review", "available", "today", "tomorrow",
)
_TOOLS = ("lookup_order", "search_kb", "get_weather", "create_ticket", "refund_status")


def _text(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words).capitalize() + "."


def _tool_turn(rng: random.Random, turn: int) -> list[ChatMessage]:
    calls = []
    results = []
    for index in range(rng.choice((1, 1, 2))):
        call_id = f"call_{turn:05d}_{index}"
        arguments = {"query": _text(rng, 20, 60), "limit": rng.randint(1, 20)}
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": rng.choice(_TOOLS), "arguments": json.dumps(arguments)},
            }
        )
        results.append(
            {
                "role": "tool",
                "tool_call_id": call_id,
                "content": json.dumps({"result": _text(rng, 100, 500), "ok": True}),
            }
        )
    return [{"role": "assistant", "content": None, "tool_calls": calls}, *results]


def conversation(n: int, seed: int = 7) -> list[ChatMessage]:
    """The first ``n`` messages of the conversation of ``seed``."""
    rng = random.Random(seed)
    out: list[ChatMessage] = []
    turn = 0
    while len(out) < n:
        out.append({"role": "user", "content": _text(rng, 40, 400)})
        if rng.random() < _TOOL_TURN:
            out.extend(_tool_turn(rng, turn))
        out.append({"role": "assistant", "content": _text(rng, 100, 800)})
        turn += 1
    return out[:n]


def encoded_size(messages: list[ChatMessage]) -> float:
    """Mean JSON size of ``messages`` in bytes."""
    return sum(len(json.dumps(m)) for m in messages) / max(len(messages), 1)
