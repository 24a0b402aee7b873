"""LlamaIndex's own chat-store tests, run on ``TieredChatStore`` over real stores.

Ported with only the store swapped from llama-index-core's
``tests/storage/chat_store/test_simple_chat_store.py`` (``SimpleChatStore``)
and llama-index-storage-chat-store-redis's ``tests/test_chat_store_redis_chat_store.py``
and ``tests/test_delete_message.py`` (``RedisChatStore``; upstream runs the
latter on fakeredis). Left out: ``SimpleChatStore.persist`` (a file format of
its own). Where the two references disagree, the stricter one is followed
and it is said at the test.
"""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.storage.chat_store.base import BaseChatStore

from tests.conftest import Harness, LoopThread
from tieredstore.integrations.llama_index import TieredChatStore

SYNC = ["tiered-memory-redis-pg", "tiered-memory-sqlite", "redis", "archive-pg"]
ASYNC = ["async-tiered-memory-redis-pg", "async-redis"]
KEY = "redis_chat_store_tests"


def _chat_store(harness: Harness, **options: Any) -> TieredChatStore:
    made = harness.make()
    return TieredChatStore(getattr(made, "async_store", made), **options)


@pytest.fixture
def chat_store(harness: Harness) -> TieredChatStore:
    return _chat_store(harness)


def _user(content: str) -> ChatMessage:
    return ChatMessage(role="user", content=content)


def test_class() -> None:
    assert BaseChatStore.__name__ in [b.__name__ for b in TieredChatStore.__mro__]


# -- test_simple_chat_store.py ------------------------------------------------------


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_add_messages(chat_store: TieredChatStore) -> None:
    chat_store.add_message("user1", _user("hello"))
    chat_store.add_message("user1", _user("world"))
    chat_store.add_message("user2", _user("hello"))
    chat_store.add_message("user2", _user("world"))
    assert chat_store.get_messages("user1") == [_user("hello"), _user("world")]
    assert chat_store.get_messages("user2") == [_user("hello"), _user("world")]
    assert chat_store.get_keys() == ["user1", "user2"]
    chat_store.add_message("user1", _user("hello"), idx=0)
    assert chat_store.get_messages("user1") == [_user("hello"), _user("hello"), _user("world")]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_delete_chat_messages(chat_store: TieredChatStore) -> None:
    for key in ("user1", "user2"):
        chat_store.add_message(key, _user("hello"))
        chat_store.add_message(key, _user("world"))
    chat_store.delete_messages("user1")
    assert chat_store.get_messages("user1") == []
    assert chat_store.get_messages("user2") == [_user("hello"), _user("world")]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_delete_chat_message(chat_store: TieredChatStore) -> None:
    chat_store.add_message("user1", _user("hello"))
    chat_store.add_message("user1", _user("world"))
    chat_store.delete_last_message("user1")
    assert chat_store.get_messages("user1") == [_user("hello")]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_delete_chat_message_idx(chat_store: TieredChatStore) -> None:
    chat_store.add_message("user1", _user("hello"))
    chat_store.add_message("user1", _user("world"))
    chat_store.delete_message("user1", 0)
    assert chat_store.get_messages("user1") == [_user("world")]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_delete_chat_message_out_of_bounds(chat_store: TieredChatStore) -> None:
    chat_store.add_message("user1", _user("hello"))
    assert chat_store.delete_message("user1", -2) is None
    assert chat_store.get_messages("user1") == [_user("hello")]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_delete_last_chat_message_from_empty_history(chat_store: TieredChatStore) -> None:
    message = _user("hello")
    chat_store.add_message("user1", message)
    assert chat_store.delete_last_message("user1") == message
    assert chat_store.delete_last_message("user1") is None


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_non_ascii_content_round_trips(chat_store: TieredChatStore) -> None:
    # What upstream's persist test checks of the content, without SimpleChatStore's file.
    chat_store.add_message("user1", _user("ハロー héllo"))
    assert chat_store.get_messages("user1") == [_user("ハロー héllo")]


# -- RedisChatStore's tests ------------------------------------------------------------


def _two() -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.USER, content="test_user_message"),
        ChatMessage(role=MessageRole.SYSTEM, content="test_system_message"),
    ]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_add_message(chat_store: TieredChatStore) -> None:
    chat_store.add_message(KEY, ChatMessage(role=MessageRole.USER, content="test_user_message"))
    stored = chat_store.get_messages(KEY)
    assert len(stored) == 1
    assert stored[0].content == "test_user_message"
    assert stored[0].role == "user"


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_add_message_with_additional_kwargs(chat_store: TieredChatStore) -> None:
    chat_store.add_message(KEY, ChatMessage(
        role=MessageRole.USER, content="test_user_message",
        additional_kwargs={"metadata": {"foo": "bar", "count": 5}},
    ))
    stored = chat_store.get_messages(KEY)
    assert len(stored) == 1
    assert stored[0].content == "test_user_message" and stored[0].role == "user"
    assert stored[0].additional_kwargs["metadata"] == {"foo": "bar", "count": 5}


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_async_add_message(chat_store: TieredChatStore, loop_thread: LoopThread) -> None:
    async def scenario() -> list[ChatMessage]:
        await chat_store.async_add_message(KEY, ChatMessage(
            role=MessageRole.USER, content="async_test_user_message",
            additional_kwargs={"metadata": {"foo": "bar", "count": 5}},
        ))
        return await chat_store.aget_messages(KEY)

    stored = loop_thread.run(scenario())
    assert len(stored) == 1
    assert stored[0].content == "async_test_user_message" and stored[0].role == "user"
    assert stored[0].additional_kwargs["metadata"] == {"foo": "bar", "count": 5}


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_set_messages(chat_store: TieredChatStore) -> None:
    chat_store.set_messages(KEY, _two())
    stored = chat_store.get_messages(KEY)
    assert [(m.content, m.role) for m in stored] == [
        ("test_user_message", "user"), ("test_system_message", "system"),
    ]


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_aset_messages(chat_store: TieredChatStore, loop_thread: LoopThread) -> None:
    async def scenario() -> list[ChatMessage]:
        await chat_store.aset_messages(KEY, _two())
        return await chat_store.aget_messages(KEY)

    stored = loop_thread.run(scenario())
    assert [(m.content, m.role) for m in stored] == [
        ("test_user_message", "user"), ("test_system_message", "system"),
    ]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_delete_messages(chat_store: TieredChatStore) -> None:
    chat_store.set_messages(KEY, _two())
    assert len(chat_store.get_messages(KEY)) == 2
    chat_store.delete_messages(KEY)
    assert chat_store.get_messages(KEY) == []


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_adelete_messages(chat_store: TieredChatStore, loop_thread: LoopThread) -> None:
    async def scenario() -> tuple[int, list[ChatMessage]]:
        await chat_store.aset_messages(KEY, _two())
        before = len(await chat_store.aget_messages(KEY))
        await chat_store.adelete_messages(KEY)
        return before, await chat_store.aget_messages(KEY)

    assert loop_thread.run(scenario()) == (2, [])


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_delete_message(chat_store: TieredChatStore) -> None:
    chat_store.set_messages(KEY, _two())
    assert chat_store.get_messages(KEY)[0].content == "test_user_message"
    chat_store.delete_message(KEY, 0)
    stored = chat_store.get_messages(KEY)
    assert [(m.content, m.role) for m in stored] == [("test_system_message", "system")]


@pytest.mark.parametrize("harness", SYNC + ASYNC, indirect=True)
def test_adelete_message(chat_store: TieredChatStore, loop_thread: LoopThread) -> None:
    async def scenario() -> list[ChatMessage]:
        await chat_store.aset_messages(KEY, _two())
        await chat_store.adelete_message(KEY, 0)
        return await chat_store.aget_messages(KEY)

    stored = loop_thread.run(scenario())
    assert [(m.content, m.role) for m in stored] == [("test_system_message", "system")]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_delete_last_message(chat_store: TieredChatStore) -> None:
    chat_store.set_messages(KEY, _two())
    chat_store.delete_last_message(KEY)
    stored = chat_store.get_messages(KEY)
    assert [(m.content, m.role) for m in stored] == [("test_user_message", "user")]


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_get_keys(chat_store: TieredChatStore) -> None:
    chat_store.add_message(KEY, ChatMessage(role=MessageRole.USER, content="test_user_message"))
    assert chat_store.get_keys() == [KEY]


@pytest.mark.parametrize(
    ("harness", "use_async"),
    [("tiered-memory-redis-pg", False), ("tiered-memory-redis-pg", True),
     ("async-tiered-memory-redis-pg", True)],
    indirect=["harness"],
)
@pytest.mark.parametrize(
    ("contents", "idx", "expected"),
    [
        pytest.param(["A", "B", "C"], 0, ["B", "C"], id="first"),
        pytest.param(["A", "B", "C"], 1, ["A", "C"], id="middle"),
        pytest.param(["A", "B", "C"], 2, ["A", "B"], id="last"),
        pytest.param(["A"], 0, [], id="only-message"),
        pytest.param(["A", "B", "C"], -1, ["A", "B", "C"], id="negative-index"),
        pytest.param(["A", "B", "C"], 3, ["A", "B", "C"], id="out-of-range"),
        pytest.param([], 0, [], id="missing-key"),
        pytest.param(["A", "B", "A"], 2, ["A", "B"], id="duplicate-content"),
    ],
)
def test_delete_message_cases(
    harness: Harness,
    loop_thread: LoopThread,
    use_async: bool,
    contents: list[str],
    idx: int,
    expected: list[str],
) -> None:
    store = _chat_store(harness)
    key = "chat-history"
    messages = [
        ChatMessage(role=MessageRole.USER, content=content,
                    additional_kwargs={"metadata": {"source": "test"}})
        for content in contents
    ]
    if use_async:

        async def scenario() -> tuple[ChatMessage | None, list[ChatMessage]]:
            if messages:
                await store.aset_messages(key, messages)
            removed = await store.adelete_message(key, idx)
            return removed, await store.aget_messages(key)

        removed, remaining = loop_thread.run(scenario())
    else:
        if messages:
            store.set_messages(key, messages)
        removed = store.delete_message(key, idx)
        remaining = store.get_messages(key)
    # RedisChatStore returns the removed message's JSON; this store the message itself.
    if 0 <= idx < len(messages):
        assert removed == messages[idx]
    else:
        assert removed is None
    assert [message.content for message in remaining] == expected
    assert all(
        m.role == MessageRole.USER and m.additional_kwargs == {"metadata": {"source": "test"}}
        for m in remaining
    )
    # RedisChatStore also checks that its key is gone once empty; here an emptied
    # history stays an (empty) session, as in SimpleChatStore.
