"""The LangChain and OpenAI Agents adapters, against the real packages and real stores.

Models are stubs that make no network call; everything else (LangChain's
``RunnableWithMessageHistory``, the Agents SDK ``Runner`` with a function
tool) is the real thing. Async stores live on the test loop thread
(``conftest.LoopThread``); ``harness.make()`` returns them behind a
``SyncFacade``, whose ``async_store`` is the store itself.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import Agent, ModelSettings, Runner, function_tool, set_tracing_disabled
from agents.items import ModelResponse
from agents.memory import Session as AgentsSession
from agents.models.interface import Model
from agents.usage import Usage
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseReasoningItem,
)
from openai.types.responses.response_reasoning_item import Summary

from tests.conftest import Harness, LoopThread
from tieredstore.integrations.langchain import TieredChatMessageHistory
from tieredstore.integrations.openai_agents import TieredSession

set_tracing_disabled(True)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SYNC = ["tiered-memory-redis-pg", "tiered-memory-sqlite", "redis"]
ASYNC = ["async-tiered-memory-redis-pg", "async-tiered-memory-sqlite", "async-redis"]


def real(store: Any) -> Any:
    """The store itself (async stores come wrapped in a SyncFacade)."""
    return getattr(store, "async_store", store)


# -- LangChain ------------------------------------------------------------------------

LC_CONVERSATION: list[BaseMessage] = [
    SystemMessage(content="You are a weather bot."),
    HumanMessage(
        content=[
            {"type": "text", "text": "Weather in Paris? And what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
        id="h-1",
    ),
    AIMessage(
        content="",
        tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}],
        additional_kwargs={"refusal": None, "provider": {"seed": [1, 2.5, True]}},
        response_metadata={"model_name": "stub-1", "finish_reason": "tool_calls"},
        usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
        id="run-1",
    ),
    ToolMessage(
        content='{"temp_c": 21}', tool_call_id="call_1", artifact={"raw": [21]}, name="get_weather"
    ),
    AIMessage(content="Sunny, 21 °C.", id="run-2"),
    ChatMessage(role="critic", content="Concise enough."),
]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_langchain_history_round_trips_sync(harness: Harness) -> None:
    store = harness.make()
    history = TieredChatMessageHistory(store, "lc-1")
    assert history.messages == []
    history.add_messages(LC_CONVERSATION[:3])
    history.add_messages(LC_CONVERSATION[3:])
    loaded = history.messages
    assert loaded == LC_CONVERSATION
    assert [type(m) for m in loaded] == [type(m) for m in LC_CONVERSATION]
    assert loaded[2].tool_calls == LC_CONVERSATION[2].tool_calls  # type: ignore[attr-defined]
    assert loaded[2].additional_kwargs == LC_CONVERSATION[2].additional_kwargs
    stored = store.load("lc-1")
    assert [m["role"] for m in stored] == [
        "system", "user", "assistant", "tool", "assistant", "critic"
    ]  # fmt: skip
    assert TieredChatMessageHistory(store, "lc-1", last=2).messages == LC_CONVERSATION[-2:]
    history.clear()
    assert history.messages == []


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_langchain_history_round_trips_async(harness: Harness, loop_thread: LoopThread) -> None:
    store = real(harness.make())
    history = TieredChatMessageHistory(store, "lc-2")

    async def scenario() -> None:
        assert await history.aget_messages() == []
        await history.aadd_messages(LC_CONVERSATION)
        assert await history.aget_messages() == LC_CONVERSATION
        await history.aclear()
        assert await history.aget_messages() == []

    loop_thread.run(scenario())


@pytest.mark.parametrize("harness", ["async-memory"], indirect=True)
def test_langchain_sync_methods_need_a_sync_store(harness: Harness) -> None:
    history = TieredChatMessageHistory(real(harness.make()), "lc")
    with pytest.raises(TypeError, match="async store"):
        history.add_messages([HumanMessage(content="hi")])


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_langchain_reads_openai_format_written_by_others(harness: Harness) -> None:
    store = harness.make()
    store.save(
        "shared",
        [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "-3"},
        ],
    )
    user, call, result = TieredChatMessageHistory(store, "shared").messages
    assert isinstance(user, HumanMessage) and user.content == "Weather in Oslo?"
    assert isinstance(call, AIMessage)
    assert call.tool_calls[0]["name"] == "get_weather"
    assert call.tool_calls[0]["args"] == {"city": "Oslo"}
    assert isinstance(result, ToolMessage) and result.tool_call_id == "call_9"


class StubChatModel(BaseChatModel):
    """Answers from a script and records every prompt it was given; no network."""

    script: list[AIMessage]
    prompts: list[list[BaseMessage]] = []

    @property
    def _llm_type(self) -> str:
        return "stub"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.prompts.append(list(messages))
        reply = self.script[(len(self.prompts) - 1) % len(self.script)]
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _chain(store: Any) -> tuple[RunnableWithMessageHistory, StubChatModel]:
    model = StubChatModel(
        script=[
            AIMessage(
                content="",
                tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_7"}],
                additional_kwargs={"refusal": None},
                id="stub-1",
            ),
            AIMessage(content="It is sunny.", id="stub-2"),
        ],
        prompts=[],
    )
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are terse."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chain = RunnableWithMessageHistory(
            prompt | model,  # type: ignore[arg-type]
            lambda session_id: TieredChatMessageHistory(store, session_id),
            input_messages_key="question",
            history_messages_key="history",
        )
    return chain, model


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_langchain_runnable_with_history(harness: Harness) -> None:
    store = harness.make()
    chain, model = _chain(store)
    config = {"configurable": {"session_id": "chat-1"}}
    first = chain.invoke({"question": "Weather in Paris?"}, config=config)  # type: ignore[arg-type]
    assert first.tool_calls[0]["name"] == "get_weather"
    second = chain.invoke({"question": "And now?"}, config=config)  # type: ignore[arg-type]
    assert second.content == "It is sunny."
    # The second prompt carried the first turn, tool call intact, from the store.
    replayed = model.prompts[1]
    assert [type(m).__name__ for m in replayed] == [
        "SystemMessage", "HumanMessage", "AIMessage", "HumanMessage"
    ]  # fmt: skip
    assert replayed[2].tool_calls == first.tool_calls  # type: ignore[attr-defined]
    assert len(store.load("chat-1")) == 4


@pytest.mark.parametrize("harness", ["async-tiered-memory-redis-pg"], indirect=True)
def test_langchain_runnable_with_history_async(harness: Harness, loop_thread: LoopThread) -> None:
    store = real(harness.make())
    chain, model = _chain(store)
    config = {"configurable": {"session_id": "chat-2"}}

    async def scenario() -> None:
        await chain.ainvoke({"question": "Weather?"}, config=config)  # type: ignore[arg-type]
        answer = await chain.ainvoke({"question": "Now?"}, config=config)  # type: ignore[arg-type]
        assert answer.content == "It is sunny."
        assert len(await store.load("chat-2")) == 4

    loop_thread.run(scenario())
    assert len(model.prompts[1]) == 4


# -- OpenAI Agents SDK -------------------------------------------------------------

AGENT_ITEMS: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Need the weather tool."}],
        "encrypted_content": "gAAAA-opaque",
    },
    {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
        "status": "completed",
    },
    {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'},
    {
        "id": "ws_1",
        "type": "web_search_call",
        "status": "completed",
        "action": {"type": "search", "query": "Paris weather"},
    },
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Sunny, 21 °C.", "annotations": []}],
    },
]


@pytest.mark.parametrize("harness", ASYNC + SYNC, indirect=True)
def test_agents_session_keeps_every_item_type(harness: Harness, loop_thread: LoopThread) -> None:
    store = real(harness.make())
    session = TieredSession(store, "agent-1")
    assert isinstance(session, AgentsSession)

    async def scenario() -> None:
        assert await session.get_items() == []
        assert await session.pop_item() is None
        await session.add_items(AGENT_ITEMS[:3])
        await session.add_items(AGENT_ITEMS[3:])
        items = await session.get_items()
        assert items == AGENT_ITEMS
        assert [list(i) for i in items] == [list(i) for i in AGENT_ITEMS]  # key order too
        assert await session.get_items(limit=2) == AGENT_ITEMS[-2:]
        assert await session.pop_item() == AGENT_ITEMS[-1]
        assert await session.get_items() == AGENT_ITEMS[:-1]
        await session.clear_session()
        assert await session.get_items() == []

    loop_thread.run(scenario())


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_agents_items_are_stored_as_chat_messages(harness: Harness) -> None:
    store = harness.make(max_messages=3)
    session = TieredSession(store, "trimmed")
    import asyncio

    asyncio.run(session.add_items(AGENT_ITEMS))
    stored = store.load("trimmed")
    # A function_call_output is a tool result: it never survives without its call.
    assert [m["role"] for m in stored] == ["assistant", "assistant"]
    assert asyncio.run(session.get_items()) == AGENT_ITEMS[-2:]


class StubModel(Model):
    """A scripted Responses-API model: a reasoning item and a tool call, then an answer."""

    def __init__(self) -> None:
        self.inputs: list[list[Any]] = []

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[Any],
        model_settings: ModelSettings,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: Any,
        **kwargs: Any,
    ) -> ModelResponse:
        items = [input] if isinstance(input, str) else list(input)
        self.inputs.append(json.loads(json.dumps(items, default=str)))
        n = len(self.inputs)
        if items and isinstance(items[-1], dict) and items[-1].get("role") == "user":
            output: list[Any] = [
                ResponseReasoningItem(
                    id=f"rs_{n}",
                    type="reasoning",
                    summary=[Summary(type="summary_text", text="Call the tool.")],
                ),
                ResponseFunctionToolCall(
                    id=f"fc_{n}",
                    call_id=f"call_{n}",
                    type="function_call",
                    name="get_weather",
                    arguments='{"city": "Paris"}',
                    status="completed",
                ),
            ]
        else:
            output = [
                ResponseOutputMessage(
                    id=f"msg_{n}",
                    type="message",
                    role="assistant",
                    status="completed",
                    content=[
                        ResponseOutputText(type="output_text", text="Sunny, 21 °C.", annotations=[])
                    ],
                )
            ]
        return ModelResponse(output=output, usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return json.dumps({"city": city, "temp_c": 21})


@pytest.mark.parametrize(
    "harness", ["async-tiered-memory-redis-pg", "tiered-memory-redis-pg"], indirect=True
)
def test_agents_runner_with_a_tiered_session(harness: Harness, loop_thread: LoopThread) -> None:
    store = real(harness.make())
    model = StubModel()
    agent = Agent(name="weather", instructions="Be brief.", model=model, tools=[get_weather])
    session = TieredSession(store, "run-1")

    async def scenario() -> list[Any]:
        first = await Runner.run(agent, "Weather in Paris?", session=session)
        assert first.final_output == "Sunny, 21 °C."
        second = await Runner.run(agent, "And tomorrow?", session=session)
        assert second.final_output == "Sunny, 21 °C."
        return await session.get_items()

    items = loop_thread.run(scenario())
    kinds = [item.get("type", "message") for item in items]
    assert kinds == [
        "message", "reasoning", "function_call", "function_call_output", "message",
    ] * 2  # fmt: skip
    call, output = items[2], items[3]
    assert call["call_id"] == output["call_id"] and call["name"] == "get_weather"
    assert json.loads(output["output"]) == {"city": "Paris", "temp_c": 21}
    # The second run's first model call saw the whole first run, from the store.
    replayed = model.inputs[2]
    assert [i.get("type", "message") for i in replayed[:5]] == kinds[:5]
    assert replayed[5] == {"role": "user", "content": "And tomorrow?"}
