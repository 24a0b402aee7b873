"""langchain-core's own chat-history tests, run on ``TieredChatMessageHistory``.

Ported from langchain-core 1.8's ``tests/unit_tests/runnables/test_history.py``
(``RunnableWithMessageHistory``) and ``tests/unit_tests/chat_history/
test_chat_history.py`` with ``InMemoryChatMessageHistory`` swapped for
``TieredChatMessageHistory`` on real stores. Upstream compares its dict of
``InMemoryChatMessageHistory`` objects; here the same messages are read back
from the store. Async tests run on the test loop thread, against sync stores
(their calls in worker threads) and async ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.base import RunnableBinding, RunnableLambda
from langchain_core.runnables.config import RunnableConfig
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.runnables.utils import ConfigurableFieldSpec, Input, Output
from langchain_core.tracers import Run
from langchain_core.tracers.root_listeners import (
    AsyncListener,
    AsyncRootListenersTracer,
    RootListenersTracer,
)

from tests.conftest import Harness, LoopThread
from tieredstore.integrations.langchain import TieredChatMessageHistory

pytestmark = pytest.mark.filterwarnings(
    "ignore:RunnableWithMessageHistory is deprecated:DeprecationWarning"
)

SYNC = ["tiered-memory-redis-pg", "tiered-memory-sqlite", "redis"]
ASYNC = ["async-tiered-memory-redis-pg", "async-redis"]


class Histories:
    """The session histories of one store, as upstream's ``_get_get_session_history``."""

    def __init__(self, harness: Harness, loop: LoopThread) -> None:
        made = harness.make()
        self.store = getattr(made, "async_store", made)
        self.loop = loop

    def __call__(self, session_id: str, **_kwargs: Any) -> TieredChatMessageHistory:
        return TieredChatMessageHistory(self.store, session_id)

    def stored(self, session_id: str) -> list[BaseMessage]:
        """What the store holds for ``session_id``, read like a client would."""
        history = self(session_id)
        return list(self.loop.run(history.aget_messages()))

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run(coro)


@pytest.fixture
def histories(harness: Harness, loop_thread: LoopThread) -> Histories:
    return Histories(harness, loop_thread)


def _said(messages: Sequence[BaseMessage]) -> str:
    return "you said: " + "\n".join(
        str(m.content) for m in messages if isinstance(m, HumanMessage)
    )


def _said_with_input(params: dict[str, Any]) -> str:
    return "you said: " + "\n".join(
        [str(m.content) for m in params["history"] if isinstance(m, HumanMessage)]
        + [params["input"]]
    )


# -- chat_history/test_chat_history.py ------------------------------------------------


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_history_initialization_async(histories: Histories) -> None:
    messages = [HumanMessage(content="Hello")]

    async def scenario() -> None:
        history = histories("init")
        await history.aadd_messages(messages)
        assert await history.aget_messages() == messages
        other_history = histories("other")
        await other_history.aadd_messages([HumanMessage(content="World")])
        assert await history.aget_messages() == messages
        await history.aclear()
        assert await history.aget_messages() == []
        assert await other_history.aget_messages() == [HumanMessage(content="World")]

    histories.run(scenario())


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_add_message_and_add_messages(histories: Histories) -> None:
    history = histories("add")
    history.add_message(HumanMessage(content="Hello"))
    assert history.messages == [HumanMessage(content="Hello")]
    history.add_message(HumanMessage(content="World"))
    history.add_messages([HumanMessage(content="Hello"), HumanMessage(content="World")])
    assert history.messages == [HumanMessage(content=c) for c in
                                ("Hello", "World", "Hello", "World")]


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_async_interface(histories: Histories) -> None:
    history = histories("async-interface")

    async def scenario() -> None:
        await history.aadd_messages([HumanMessage(content="Hello"), HumanMessage(content="World")])
        assert await history.aget_messages() == [
            HumanMessage(content="Hello"), HumanMessage(content="World"),
        ]
        await history.aadd_messages([HumanMessage(content="!")])
        assert await history.aget_messages() == [
            HumanMessage(content="Hello"), HumanMessage(content="World"), HumanMessage(content="!"),
        ]
        await history.aclear()
        assert await history.aget_messages() == []

    histories.run(scenario())


# -- runnables/test_history.py: sync -----------------------------------------------------


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_interfaces(histories: Histories) -> None:
    history = histories("interfaces")
    history.add_message(SystemMessage(content="system"))
    history.add_message(HumanMessage(content="human 1"))
    history.add_message(AIMessage(content="ai"))
    assert str(history) == "System: system\nHuman: human 1\nAI: ai"


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_input_messages(histories: Histories) -> None:
    runnable = RunnableLambda[Any, str](_said)
    with_history = RunnableWithMessageHistory(runnable, histories)
    config: RunnableConfig = {"configurable": {"session_id": "1"}}
    assert with_history.invoke([HumanMessage(content="hello")], config) == "you said: hello"
    output = with_history.invoke([HumanMessage(content="good bye")], config)
    assert output == "you said: hello\ngood bye"
    output = [*with_history.stream([HumanMessage(content="hi again")], config)]
    assert output == ["you said: hello\ngood bye\nhi again"]
    assert histories.stored("1") == [
        HumanMessage(content="hello"),
        AIMessage(content="you said: hello"),
        HumanMessage(content="good bye"),
        AIMessage(content="you said: hello\ngood bye"),
        HumanMessage(content="hi again"),
        AIMessage(content="you said: hello\ngood bye\nhi again"),
    ]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_input_dict(histories: Histories) -> None:
    runnable = RunnableLambda[Any, str](lambda params: _said(params["messages"]))
    with_history = RunnableWithMessageHistory(
        runnable, histories, input_messages_key="messages"
    )
    config: RunnableConfig = {"configurable": {"session_id": "2"}}
    output = with_history.invoke({"messages": [HumanMessage(content="hello")]}, config)
    assert output == "you said: hello"
    output = with_history.invoke({"messages": [HumanMessage(content="good bye")]}, config)
    assert output == "you said: hello\ngood bye"


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_input_dict_with_history_key(histories: Histories) -> None:
    runnable = RunnableLambda[Any, str](_said_with_input)
    with_history = RunnableWithMessageHistory(
        runnable, histories, input_messages_key="input", history_messages_key="history"
    )
    config: RunnableConfig = {"configurable": {"session_id": "3"}}
    assert with_history.invoke({"input": "hello"}, config) == "you said: hello"
    assert with_history.invoke({"input": "good bye"}, config) == "you said: hello\ngood bye"


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_output_message(histories: Histories) -> None:
    runnable = RunnableLambda[Any, AIMessage](
        lambda params: AIMessage(content=_said_with_input(params))
    )
    with_history = RunnableWithMessageHistory(
        runnable, histories, input_messages_key="input", history_messages_key="history"
    )
    config: RunnableConfig = {"configurable": {"session_id": "4"}}
    assert with_history.invoke({"input": "hello"}, config) == AIMessage(content="you said: hello")
    output = with_history.invoke({"input": "good bye"}, config)
    assert output == AIMessage(content="you said: hello\ngood bye")


class LengthChatModel(BaseChatModel):
    """A fake chat model that returns the length of the messages passed in."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(
            generations=[ChatGeneration(message=AIMessage(content=str(len(messages))))]
        )

    @property
    def _llm_type(self) -> str:
        return "length-fake-chat-model"


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_input_messages_output_message(histories: Histories) -> None:
    with_history = RunnableWithMessageHistory(LengthChatModel(), histories)
    config: RunnableConfig = {"configurable": {"session_id": "5"}}
    assert with_history.invoke([HumanMessage(content="hi")], config).content == "1"
    assert with_history.invoke([HumanMessage(content="hi")], config).content == "3"


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_output_messages(histories: Histories) -> None:
    runnable = RunnableLambda[Any, list[AIMessage]](
        lambda params: [AIMessage(content=_said_with_input(params))]
    )
    with_history = RunnableWithMessageHistory(
        runnable, histories, input_messages_key="input", history_messages_key="history"
    )
    config: RunnableConfig = {"configurable": {"session_id": "6"}}
    assert with_history.invoke({"input": "hello"}, config) == [AIMessage(content="you said: hello")]
    output = with_history.invoke({"input": "good bye"}, config)
    assert output == [AIMessage(content="you said: hello\ngood bye")]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_output_dict(histories: Histories) -> None:
    runnable = RunnableLambda[Any, dict[str, list[AIMessage]]](
        lambda params: {"output": [AIMessage(content=_said_with_input(params))]}
    )
    with_history = RunnableWithMessageHistory(
        runnable, histories, input_messages_key="input", history_messages_key="history",
        output_messages_key="output",
    )
    config: RunnableConfig = {"configurable": {"session_id": "7"}}
    output = with_history.invoke({"input": "hello"}, config)
    assert output == {"output": [AIMessage(content="you said: hello")]}
    output = with_history.invoke({"input": "good bye"}, config)
    assert output == {"output": [AIMessage(content="you said: hello\ngood bye")]}


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
@pytest.mark.parametrize(
    "keys",
    [
        {"input_messages_key": "input", "history_messages_key": "history",
         "output_messages_key": "output"},
        {"output_messages_key": "output"},
    ],
)
def test_schemas_match_the_in_memory_history(histories: Histories, keys: dict[str, str]) -> None:
    # Upstream pins these schemas; the history class must not change them.
    runnable = RunnableLambda[Any, Any](lambda params: {"output": [AIMessage(content="x")]})
    tiered = RunnableWithMessageHistory(runnable, histories, **keys)  # type: ignore[arg-type]
    reference = RunnableWithMessageHistory(
        runnable, lambda session_id: InMemoryChatMessageHistory(), **keys  # type: ignore[arg-type]
    )
    assert (tiered.get_input_schema().model_json_schema()
            == reference.get_input_schema().model_json_schema())
    assert (tiered.get_output_schema().model_json_schema()
            == reference.get_output_schema().model_json_schema())


def _custom_config_runnable(
    histories: Histories,
) -> tuple[RunnableWithMessageHistory, Callable[[str, str], list[BaseMessage]]]:
    def fake_llm(params: dict[str, Any]) -> list[BaseMessage]:
        return [AIMessage(content=_said(params["messages"]))]

    def get_session_history(user_id: str, conversation_id: str) -> TieredChatMessageHistory:
        return histories(f"{user_id}.{conversation_id}")

    with_message_history = RunnableWithMessageHistory(
        RunnableLambda(fake_llm),
        get_session_history=get_session_history,
        input_messages_key="messages",
        history_messages_key="history",
        history_factory_config=[
            ConfigurableFieldSpec(id="user_id", annotation=str, name="User ID",
                                  description="Unique identifier for the user.", default="",
                                  is_shared=True),
            ConfigurableFieldSpec(id="conversation_id", annotation=str, name="Conversation ID",
                                  description="Unique identifier for the conversation.",
                                  default=None, is_shared=True),
        ],
    )
    return with_message_history, lambda user, conv: histories.stored(f"{user}.{conv}")


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_using_custom_config_specs(histories: Histories) -> None:
    runnable, stored = _custom_config_runnable(histories)
    user1 = {"configurable": {"user_id": "user1", "conversation_id": "1"}}
    result = runnable.invoke({"messages": [HumanMessage(content="hello")]}, user1)  # type: ignore[arg-type]
    assert result == [AIMessage(content="you said: hello")]
    assert stored("user1", "1") == [HumanMessage(content="hello"),
                                    AIMessage(content="you said: hello")]
    result = runnable.invoke({"messages": [HumanMessage(content="goodbye")]}, user1)  # type: ignore[arg-type]
    assert result == [AIMessage(content="you said: goodbye")]
    assert stored("user1", "1") == [
        HumanMessage(content="hello"), AIMessage(content="you said: hello"),
        HumanMessage(content="goodbye"), AIMessage(content="you said: goodbye"),
    ]
    user2 = {"configurable": {"user_id": "user2", "conversation_id": "1"}}
    result = runnable.invoke({"messages": [HumanMessage(content="meow")]}, user2)  # type: ignore[arg-type]
    assert result == [AIMessage(content="you said: meow")]
    assert stored("user2", "1") == [HumanMessage(content="meow"),
                                    AIMessage(content="you said: meow")]
    assert len(stored("user1", "1")) == 4


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_ignore_session_id(histories: Histories) -> None:
    def fake_llm(messages: list[BaseMessage]) -> list[BaseMessage]:
        return [AIMessage(content=_said(messages))]

    history = histories("no-session-id")
    with_message_history = RunnableWithMessageHistory(RunnableLambda(fake_llm), lambda: history)
    with_message_history.invoke("hello")
    with_message_history.invoke("hello again")
    assert len(history.messages) == 4


class _RunnableLambdaWithRaiseError(RunnableLambda[Input, Output]):
    def with_listeners(
        self,
        *,
        on_start: Callable[[Run], None] | Callable[[Run, RunnableConfig], None] | None = None,
        on_end: Callable[[Run], None] | Callable[[Run, RunnableConfig], None] | None = None,
        on_error: Callable[[Run], None] | Callable[[Run, RunnableConfig], None] | None = None,
    ) -> Runnable[Input, Output]:
        def create_tracer(config: RunnableConfig) -> RunnableConfig:
            tracer = RootListenersTracer(
                config=config, on_start=on_start, on_end=on_end, on_error=on_error
            )
            tracer.raise_error = True
            return {"callbacks": [tracer]}

        return RunnableBinding(bound=self, config_factories=[create_tracer])

    def with_alisteners(
        self,
        *,
        on_start: AsyncListener | None = None,
        on_end: AsyncListener | None = None,
        on_error: AsyncListener | None = None,
    ) -> Runnable[Input, Output]:
        def create_tracer(config: RunnableConfig) -> RunnableConfig:
            tracer = AsyncRootListenersTracer(
                config=config, on_start=on_start, on_end=on_end, on_error=on_error
            )
            tracer.raise_error = True
            return {"callbacks": [tracer]}

        return RunnableBinding(bound=self, config_factories=[create_tracer])


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_get_output_messages_no_value_error(histories: Histories) -> None:
    runnable = _RunnableLambdaWithRaiseError[Any, str](_said)
    with_history = RunnableWithMessageHistory(runnable, histories)
    config: RunnableConfig = {
        "configurable": {"session_id": "1", "message_history": histories("1")}
    }
    with_history.bound.invoke([HumanMessage(content="hello")], config)
    assert len(histories.stored("1")) == 2


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_get_output_messages_with_value_error(histories: Histories) -> None:
    config: RunnableConfig = {
        "configurable": {"session_id": "1", "message_history": histories("1")}
    }
    for illegal in (False, 123):
        runnable = _RunnableLambdaWithRaiseError[Any, Any](lambda _, v=illegal: v)
        with_history = RunnableWithMessageHistory(runnable, histories)
        expected = ("Expected str, BaseMessage, list[BaseMessage], or tuple[BaseMessage]."
                    f" Got {illegal}.")
        with pytest.raises(ValueError, match=re.escape(expected)):
            with_history.bound.invoke([HumanMessage(content="hello")], config)
    assert histories.stored("1") == []


# -- runnables/test_history.py: async ----------------------------------------------------


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_input_messages_async(histories: Histories) -> None:
    with_history = RunnableWithMessageHistory(RunnableLambda[Any, str](_said), histories)
    config = {"session_id": "1_async"}

    async def scenario() -> None:
        output = await with_history.ainvoke([HumanMessage(content="hello")], config)  # type: ignore[arg-type]
        assert output == "you said: hello"
        output = await with_history.ainvoke([HumanMessage(content="good bye")], config)  # type: ignore[arg-type]
        assert output == "you said: hello\ngood bye"
        chunks = [c async for c in with_history.astream(
            [HumanMessage(content="hi again")], config)]  # type: ignore[arg-type]
        assert chunks == ["you said: hello\ngood bye\nhi again"]

    histories.run(scenario())
    assert histories.stored("1_async") == [
        HumanMessage(content="hello"),
        AIMessage(content="you said: hello"),
        HumanMessage(content="good bye"),
        AIMessage(content="you said: hello\ngood bye"),
        HumanMessage(content="hi again"),
        AIMessage(content="you said: hello\ngood bye\nhi again"),
    ]


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_input_dict_async(histories: Histories) -> None:
    runnable = RunnableLambda[Any, str](lambda params: _said(params["messages"]))
    with_history = RunnableWithMessageHistory(runnable, histories, input_messages_key="messages")
    config: RunnableConfig = {"configurable": {"session_id": "2_async"}}

    async def scenario() -> None:
        output = await with_history.ainvoke({"messages": [HumanMessage(content="hello")]}, config)
        assert output == "you said: hello"
        output = await with_history.ainvoke(
            {"messages": [HumanMessage(content="good bye")]}, config)
        assert output == "you said: hello\ngood bye"

    histories.run(scenario())


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
@pytest.mark.parametrize("shape", ["str", "message", "messages", "dict"])
def test_outputs_with_history_key_async(histories: Histories, shape: str) -> None:
    """Upstream's four ``*_with_history_key_async``/``output_*_async`` tests in one."""
    wrap: dict[str, Callable[[str], Any]] = {
        "str": lambda text: text,
        "message": lambda text: AIMessage(content=text),
        "messages": lambda text: [AIMessage(content=text)],
        "dict": lambda text: {"output": [AIMessage(content=text)]},
    }
    runnable = RunnableLambda[Any, Any](lambda params: wrap[shape](_said_with_input(params)))
    extra = {"output_messages_key": "output"} if shape == "dict" else {}
    with_history = RunnableWithMessageHistory(
        runnable, histories, input_messages_key="input", history_messages_key="history", **extra
    )
    config: RunnableConfig = {"configurable": {"session_id": f"{shape}_async"}}

    async def scenario() -> None:
        assert await with_history.ainvoke({"input": "hello"}, config) == wrap[shape](
            "you said: hello")
        assert await with_history.ainvoke({"input": "good bye"}, config) == wrap[shape](
            "you said: hello\ngood bye")

    histories.run(scenario())
    assert [type(m) for m in histories.stored(f"{shape}_async")] == [
        HumanMessage, AIMessage, HumanMessage, AIMessage,
    ]


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_input_messages_output_message_async(histories: Histories) -> None:
    with_history = RunnableWithMessageHistory(LengthChatModel(), histories)
    config: RunnableConfig = {"configurable": {"session_id": "5_async"}}

    async def scenario() -> None:
        assert (await with_history.ainvoke([HumanMessage(content="hi")], config)).content == "1"
        assert (await with_history.ainvoke([HumanMessage(content="hi")], config)).content == "3"

    histories.run(scenario())


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_using_custom_config_specs_async(histories: Histories) -> None:
    runnable, stored = _custom_config_runnable(histories)
    user1 = {"configurable": {"user_id": "user1_async", "conversation_id": "1_async"}}
    user2 = {"configurable": {"user_id": "user2_async", "conversation_id": "1_async"}}

    async def scenario() -> None:
        result = await runnable.ainvoke({"messages": [HumanMessage(content="hello")]}, user1)  # type: ignore[arg-type]
        assert result == [AIMessage(content="you said: hello")]
        result = await runnable.ainvoke({"messages": [HumanMessage(content="goodbye")]}, user1)  # type: ignore[arg-type]
        assert result == [AIMessage(content="you said: goodbye")]
        result = await runnable.ainvoke({"messages": [HumanMessage(content="meow")]}, user2)  # type: ignore[arg-type]
        assert result == [AIMessage(content="you said: meow")]

    histories.run(scenario())
    assert stored("user1_async", "1_async") == [
        HumanMessage(content="hello"), AIMessage(content="you said: hello"),
        HumanMessage(content="goodbye"), AIMessage(content="you said: goodbye"),
    ]
    assert stored("user2_async", "1_async") == [
        HumanMessage(content="meow"), AIMessage(content="you said: meow"),
    ]
