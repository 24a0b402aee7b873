"""langchain-redis's own ``RedisChatMessageHistory`` tests, run on ``TieredChatMessageHistory``.

Ported from langchain-redis's ``tests/integration_tests/test_chat_message_history.py``
with only the construction swapped: ``RedisChatMessageHistory(session_id=...,
redis_url=...)`` became ``TieredChatMessageHistory.from_url(session_id,
redis_url=..., database_url=...)`` on the run's Redis and PostgreSQL. Tests of
langchain-redis's own internals (RedisVL index names, key prefixes, the JSON
layout of its keys, ``delete()`` of the index) are left out; where a result
differs by design it is said at the test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from tests.conftest import REDIS_URL
from tieredstore.integrations.langchain import TieredChatMessageHistory

Factory = Callable[..., TieredChatMessageHistory]


@pytest.fixture
def make_history(pg_url: str, redis_prefix: str) -> Iterator[Factory]:
    """``from_url`` on the run's servers, in a namespace of the test's own."""
    namespace = f"lcr-{uuid.uuid4().hex[:10]}"
    made: list[TieredChatMessageHistory] = []

    def make(session_id: Any, **options: Any) -> TieredChatMessageHistory:
        history = TieredChatMessageHistory.from_url(
            session_id, redis_url=REDIS_URL, database_url=pg_url, namespace=namespace,
            prefix=redis_prefix, **options,
        )
        made.append(history)
        return history

    yield make
    for history in made:
        history.close()


@pytest.fixture
def chat_history(make_history: Factory) -> TieredChatMessageHistory:
    history = make_history(f"test_session_{uuid.uuid4().hex}")
    history.clear()
    return history


def test_add_and_retrieve_messages(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content="Hello, AI!"))
    chat_history.add_message(AIMessage(content="Hello, human!"))
    messages = chat_history.messages
    assert len(messages) == 2
    assert isinstance(messages[0], HumanMessage)
    assert isinstance(messages[1], AIMessage)
    assert messages[0].content == "Hello, AI!"
    assert messages[1].content == "Hello, human!"


def test_clear_messages(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content="Test message"))
    assert len(chat_history.messages) == 1
    chat_history.clear()
    assert len(chat_history.messages) == 0


def test_add_multiple_messages(chat_history: TieredChatMessageHistory) -> None:
    for message in [HumanMessage(content="Message 1"), AIMessage(content="Response 1"),
                    HumanMessage(content="Message 2")]:
        chat_history.add_message(message)
    assert len(chat_history.messages) == 3
    assert [m.content for m in chat_history.messages] == ["Message 1", "Response 1", "Message 2"]


def test_search_messages(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content="Hello, how are you?"))
    chat_history.add_message(AIMessage(content="I'm doing well, thank you!"))
    chat_history.add_message(HumanMessage(content="What's the weather like today?"))
    results = chat_history.search_messages("weather")
    assert len(results) == 1
    assert "weather" in results[0]["content"]
    all_messages = chat_history.messages
    assert [m.content for m in all_messages] == [
        "Hello, how are you?", "I'm doing well, thank you!", "What's the weather like today?",
    ]


def test_length(chat_history: TieredChatMessageHistory) -> None:
    for i in range(5):
        chat_history.add_message(HumanMessage(content=f"Message {i}"))
    assert len(chat_history) == 5


def test_ttl(make_history: Factory) -> None:
    chat_history = make_history(f"ttl_test_{uuid.uuid4().hex}", ttl=1)
    chat_history.add_message(HumanMessage(content="This message will expire"))
    assert len(chat_history.messages) == 1
    # langchain-redis checks its key's TTL; here the session's expiry.
    expires_at = chat_history.store.get(chat_history.id).expires_at
    assert expires_at is not None
    deadline = time.monotonic() + 15
    while chat_history.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    assert chat_history.messages == []
    assert len(chat_history) == 0
    assert not chat_history.store.exists(chat_history.id)


def test_multiple_sessions(make_history: Factory) -> None:
    history1 = make_history(f"ttl_test_{uuid.uuid4().hex}")
    history2 = make_history(f"ttl_test_{uuid.uuid4().hex}")
    history1.add_message(HumanMessage(content="Message for session 1"))
    history2.add_message(HumanMessage(content="Message for session 2"))
    assert len(history1.messages) == 1
    assert len(history2.messages) == 1
    assert history1.messages[0].content != history2.messages[0].content
    history1.clear()
    history2.clear()


@pytest.mark.parametrize("message_type", [HumanMessage, AIMessage, SystemMessage])
def test_different_message_types(
    chat_history: TieredChatMessageHistory, message_type: type[BaseMessage]
) -> None:
    chat_history.add_message(message_type(content="Test content"))
    retrieved = chat_history.messages[-1]
    assert isinstance(retrieved, message_type)
    assert retrieved.content == "Test content"


def test_large_number_of_messages(chat_history: TieredChatMessageHistory) -> None:
    large_number = 1000
    for i in range(large_number):
        chat_history.add_message(HumanMessage(content=f"Message {i}"))
    retrieved = chat_history.messages
    assert [m.content for m in retrieved] == [f"Message {i}" for i in range(large_number)]


def test_empty_messages(chat_history: TieredChatMessageHistory) -> None:
    assert len(chat_history.messages) == 0


def test_search_non_existent_message(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content="Hello, how are you?"))
    assert len(chat_history.search_messages("nonexistent")) == 0


def test_add_message_to_existing_session(make_history: Factory) -> None:
    session_id = f"existing_session_{uuid.uuid4().hex}"
    history1 = make_history(session_id)
    history1.add_message(HumanMessage(content="First message"))
    history2 = make_history(session_id)
    history2.add_message(HumanMessage(content="Second message"))
    assert len(history1.messages) == 2
    assert len(history2.messages) == 2


def test_chat_history_with_preconfigured_client(make_history: Factory) -> None:
    # langchain-redis takes a redis client; here a store, which is what holds the clients.
    store = make_history("owner").store
    history = TieredChatMessageHistory(store, f"test_session_{uuid.uuid4().hex}")
    history.add_message(HumanMessage(content="Hello, AI!"))
    history.add_message(AIMessage(content="Hello, human!"))
    messages = history.messages
    assert [type(m) for m in messages] == [HumanMessage, AIMessage]
    assert [m.content for m in messages] == ["Hello, AI!", "Hello, human!"]
    history.clear()


def test_session_id_with_special_characters(make_history: Factory) -> None:
    history = make_history("550e8400-e29b-41d4-a716-446655440000")
    history.add_message(HumanMessage(content="Hello with UUID session!"))
    history.add_message(AIMessage(content="Hello back!"))
    assert [m.content for m in history.messages] == ["Hello with UUID session!", "Hello back!"]
    search_results = history.search_messages("UUID")
    assert len(search_results) == 1
    assert "UUID" in search_results[0]["content"]
    assert len(history) == 2
    history.clear()
    assert len(history.messages) == 0


def test_timestamp_sorting(chat_history: TieredChatMessageHistory) -> None:
    contents = ["First message", "Second message", "Third message", "Fourth message"]
    for i, content in enumerate(contents):
        chat_history.add_message((HumanMessage, AIMessage)[i % 2](content=content))
    messages = chat_history.messages
    assert [m.content for m in messages] == contents
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, HumanMessage, AIMessage]


def test_session_sensitive_clear(make_history: Factory) -> None:
    history1 = make_history(f"session1_{uuid.uuid4().hex}")
    history2 = make_history(f"session2_{uuid.uuid4().hex}")
    history1.add_message(HumanMessage(content="Session 1 message 1"))
    history1.add_message(AIMessage(content="Session 1 message 2"))
    history2.add_message(HumanMessage(content="Session 2 message 1"))
    history2.add_message(AIMessage(content="Session 2 message 2"))
    assert len(history1.messages) == 2
    assert len(history2.messages) == 2
    history1.clear()
    assert len(history1.messages) == 0
    assert [m.content for m in history2.messages] == [
        "Session 2 message 1", "Session 2 message 2",
    ]


def test_empty_session_id(make_history: Factory) -> None:
    with pytest.raises(ValueError):
        make_history("")


def test_none_session_id(make_history: Factory) -> None:
    with pytest.raises(ValueError):
        make_history(None)


def test_unicode_session_id(make_history: Factory) -> None:
    history = make_history(f"session_测试_🚀_{uuid.uuid4().hex}")
    history.add_message(HumanMessage(content="Unicode session test"))
    assert [m.content for m in history.messages] == ["Unicode session test"]


def test_empty_message_content(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content=""))
    chat_history.add_message(AIMessage(content=""))
    assert [m.content for m in chat_history.messages] == ["", ""]


def test_very_large_message_content(chat_history: TieredChatMessageHistory) -> None:
    large_content = "x" * 100000
    chat_history.add_message(HumanMessage(content=large_content))
    assert [m.content for m in chat_history.messages] == [large_content]


def test_unicode_message_content(chat_history: TieredChatMessageHistory) -> None:
    unicode_content = "Hello 世界! 🌍🚀 Testing Unicode: αβγδε ñáéíóú"
    chat_history.add_message(HumanMessage(content=unicode_content))
    assert [m.content for m in chat_history.messages] == [unicode_content]


def test_special_characters_in_content(chat_history: TieredChatMessageHistory) -> None:
    special_content = 'Test with "quotes", {brackets}, [arrays], and \\ backslashes'
    chat_history.add_message(HumanMessage(content=special_content))
    assert [m.content for m in chat_history.messages] == [special_content]


def test_message_with_additional_kwargs(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(
        content="Test message", additional_kwargs={"custom_field": "custom_value", "number": 42}
    ))
    messages = chat_history.messages
    assert len(messages) == 1
    assert messages[0].content == "Test message"
    assert messages[0].additional_kwargs == {"custom_field": "custom_value", "number": 42}


def test_search_case_insensitive(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content="Hello World"))
    chat_history.add_message(HumanMessage(content="GOODBYE WORLD"))
    assert len(chat_history.search_messages("hello")) == 1
    assert len(chat_history.search_messages("HELLO")) == 1
    assert len(chat_history.search_messages("world")) == 2
    assert len(chat_history.search_messages("WORLD")) == 2


def test_search_with_limit_zero(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content="Test message"))
    assert len(chat_history.search_messages("test", limit=0)) == 0


def test_search_with_large_limit(chat_history: TieredChatMessageHistory) -> None:
    for i in range(5):
        chat_history.add_message(HumanMessage(content=f"Test message {i}"))
    assert len(chat_history.search_messages("test", limit=1000)) == 5


def test_invalid_redis_url() -> None:
    with pytest.raises(Exception):  # noqa: B017 - as upstream: any error will do
        history = TieredChatMessageHistory.from_url(
            "test", redis_url="redis://invalid-host.invalid:6379", socket_timeout=1
        )
        try:
            history.add_message(HumanMessage(content="Test"))
        finally:
            history.close()


def test_clear_empty_session(chat_history: TieredChatMessageHistory) -> None:
    chat_history.clear()
    assert len(chat_history.messages) == 0


def test_clear_large_session(make_history: Factory) -> None:
    history = make_history(f"large_clear_test_{uuid.uuid4().hex}")
    history.add_messages([HumanMessage(content=f"Message {i}") for i in range(100)])
    assert len(history.messages) == 100
    history.clear()
    assert len(history.messages) == 0


def test_message_ordering_with_rapid_additions(make_history: Factory) -> None:
    history = make_history(f"rapid_test_{uuid.uuid4().hex}")
    for i in range(20):
        history.add_message(HumanMessage(content=f"Rapid message {i}"))
    assert [m.content for m in history.messages] == [f"Rapid message {i}" for i in range(20)]


def test_ttl_edge_cases(make_history: Factory) -> None:
    session_id = f"ttl_edge_test_{uuid.uuid4().hex}"
    # ttl=0: langchain-redis sets no expiry for a falsy ttl; so does this history.
    history_zero = make_history(f"{session_id}_zero", ttl=0)
    history_zero.add_message(HumanMessage(content="Should expire immediately"))
    assert len(history_zero.messages) <= 1
    assert history_zero.store.get(history_zero.id).expires_at is None
    history_zero.clear()
    history_large = make_history(f"{session_id}_large", ttl=2147483647)
    history_large.add_message(HumanMessage(content="Long TTL message"))
    assert len(history_large.messages) == 1
    history_large.clear()


def test_id_property(chat_history: TieredChatMessageHistory) -> None:
    assert chat_history.id == chat_history.session_id


def test_messages_property_empty(chat_history: TieredChatMessageHistory) -> None:
    messages = chat_history.messages
    assert isinstance(messages, list)
    assert len(messages) == 0


def test_len_with_cleared_session(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content="Test"))
    assert len(chat_history) == 1
    chat_history.clear()
    assert len(chat_history) == 0


def test_multiple_instances_same_session(make_history: Factory) -> None:
    session_id = f"multi_instance_test_{uuid.uuid4().hex}"
    history1 = make_history(session_id)
    history2 = make_history(session_id)
    history1.add_message(HumanMessage(content="From instance 1"))
    assert [m.content for m in history2.messages] == ["From instance 1"]
    history2.add_message(AIMessage(content="From instance 2"))
    assert [m.content for m in history1.messages] == ["From instance 1", "From instance 2"]


def test_search_with_empty_query(chat_history: TieredChatMessageHistory) -> None:
    chat_history.add_message(HumanMessage(content="Test message"))
    assert chat_history.search_messages("") == []


def test_redis_connection_recovery(make_history: Factory) -> None:
    history = make_history(f"connection_test_{uuid.uuid4().hex}")
    history.add_message(HumanMessage(content="Before connection issue"))
    assert len(history.messages) == 1
    history.store.redis.client.connection_pool.disconnect()
    history.add_message(HumanMessage(content="After connection issue"))
    assert len(history.messages) == 2


def test_negative_ttl(make_history: Factory) -> None:
    # Upstream accepts either outcome; this history rejects it at construction.
    with pytest.raises(ValueError):
        make_history(f"negative_ttl_test_{uuid.uuid4().hex}", ttl=-1)


def test_pagination_in_clear_method(make_history: Factory) -> None:
    history = make_history(f"pagination_clear_test_{uuid.uuid4().hex}")
    for i in range(75):
        history.add_message(HumanMessage(content=f"Message {i}"))
    assert len(history.messages) == 75
    history.clear()
    assert len(history.messages) == 0


def test_json_serialization_edge_cases(chat_history: TieredChatMessageHistory) -> None:
    problematic_content = """{"nested": "json", "array": [1, 2, 3], "null": null}"""
    chat_history.add_message(HumanMessage(content=problematic_content))
    assert [m.content for m in chat_history.messages] == [problematic_content]


def test_timestamp_precision(make_history: Factory) -> None:
    # Upstream also asserts the ten writes took under a second; timings are not asserted here.
    history = make_history(f"timestamp_test_{uuid.uuid4().hex}")
    for i in range(10):
        history.add_message(HumanMessage(content=f"Timestamp test {i}"))
    assert [m.content for m in history.messages] == [f"Timestamp test {i}" for i in range(10)]
