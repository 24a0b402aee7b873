"""What README examples call "your own code": scripted models and a tool, no network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def llm(messages: Sequence[Any]) -> dict[str, str]:
    """A model call: answers every prompt with the same short reply."""
    return {"role": "assistant", "content": f"(a reply to {len(messages)} messages)"}


def names() -> dict[str, Any]:
    """The stand-ins, by the names the README uses."""
    from langchain_core.messages import AIMessage

    from tests.test_integrations import StubChatModel, StubModel, get_weather

    return {
        "llm": llm,
        "question": "Weather in Paris?",
        "chat_model": StubChatModel(script=[AIMessage(content="Sunny, 21 °C.")]),
        "agent_model": StubModel(),
        "get_weather": get_weather,
    }
