"""``TieredChatStore`` beyond LlamaIndex's own suite: exact round trips through
every tier, the stored format, atomicity under concurrency, keys, ``ttl``,
``from_url``, and LlamaIndex's memories and chat engine on it (a mock LLM:
no network).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.llms.types import (
    AudioBlock,
    CacheControl,
    CachePoint,
    ChatMessage,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import MockLLM
from llama_index.core.memory import ChatMemoryBuffer, ChatSummaryMemoryBuffer

from tests.conftest import REDIS_URL, Harness, LoopThread
from tieredstore.config import Limits
from tieredstore.errors import InvalidInput, InvalidMessage, InvalidSessionId
from tieredstore.integrations.langchain import TieredChatMessageHistory
from tieredstore.integrations.llama_index import TieredChatStore, from_record, to_record
from tieredstore.integrations.shared import shared_stores
from tieredstore.maintenance import archive_idle
from tieredstore.query import ArchiveQuery
from tieredstore.store import TieredStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(24))
MESSAGES = [
    ChatMessage(role="system", blocks=[TextBlock(text="Be brief."),
                                       CachePoint(cache_control=CacheControl(type="ephemeral"))]),
    ChatMessage(role="user", blocks=[
        TextBlock(text="What is in this picture?"),
        ImageBlock(image=PNG),
        ImageBlock(url="https://example.com/cat.png", detail="low"),
    ]),
    ChatMessage(role="assistant", content=None, additional_kwargs={
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "cat"}'}}],
        "zeta": 1, "alpha": {"nested": [1, 2.5, None, True, "ü"]},
    }),
    ChatMessage(role="tool", content='{"animal": "cat"}',
                additional_kwargs={"tool_call_id": "call_1", "name": "lookup"}),
    ChatMessage(role="assistant", blocks=[
        ThinkingBlock(content="The tool says cat.", additional_information={"signature": "s"}),
        ToolCallBlock(tool_call_id="call_2", tool_name="describe", tool_kwargs={"what": "cat"}),
        TextBlock(text="A cat."),
    ]),
    ChatMessage(role="user", blocks=[
        DocumentBlock(data=b"%PDF-1.4 tiny", title="notes.pdf",
                      document_mimetype="application/pdf"),
        AudioBlock(audio=b"RIFF0000WAVEfmt ", format="wav"),
    ]),
    ChatMessage(role="chatbot", content=""),
    ChatMessage(role="developer", content="Prefer metric units."),
]

SYNC = ["tiered-memory-redis-pg", "tiered-memory-sqlite", "redis", "archive-pg", "memory"]


def real(store: Any) -> Any:
    return getattr(store, "async_store", store)


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("harness", SYNC, indirect=True)
def test_every_block_and_kwarg_round_trips(harness: Harness) -> None:
    chat_store = TieredChatStore(harness.make())
    chat_store.set_messages("all", MESSAGES[:4])
    for message in MESSAGES[4:]:
        chat_store.add_message("all", message)
    loaded = chat_store.get_messages("all")
    assert loaded == MESSAGES
    assert [[type(b) for b in m.blocks] for m in loaded] == [
        [type(b) for b in m.blocks] for m in MESSAGES
    ]
    assert list(loaded[2].additional_kwargs) == ["tool_calls", "zeta", "alpha"]  # key order too


@pytest.mark.parametrize("harness", ["async-tiered-memory-redis-pg"], indirect=True)
def test_round_trip_on_an_async_store(harness: Harness, loop_thread: LoopThread) -> None:
    chat_store = TieredChatStore(real(harness.make()))

    async def scenario() -> list[ChatMessage]:
        await chat_store.aset_messages("all", MESSAGES[:2])
        for message in MESSAGES[2:]:
            await chat_store.async_add_message("all", message)
        return await chat_store.aget_messages("all")

    assert loop_thread.run(scenario()) == MESSAGES
    with pytest.raises(TypeError, match="async store"):
        chat_store.get_messages("all")


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_round_trip_from_the_archive(harness: Harness) -> None:
    store = harness.make()
    TieredChatStore(store).set_messages("cold", MESSAGES)
    assert archive_idle(store, archive_after=0, now=time.time() + 60).changed == 1
    store.memory.clear()  # in neither memory nor Redis now: the archive must serve it
    assert store.get("cold").tier == "archive"
    assert TieredChatStore(store.archive).get_messages("cold") == MESSAGES
    store.memory.clear()
    assert TieredChatStore(store).get_messages("cold") == MESSAGES  # promoted back


def test_record_format() -> None:
    record = to_record(ChatMessage(role="user", content="hello", additional_kwargs={"k": 1}))
    assert record == {"role": "user", "content": [{"block_type": "text", "text": "hello"}],
                      "additional_kwargs": {"k": 1}}
    assert from_record(record) == ChatMessage(role="user", content="hello",
                                              additional_kwargs={"k": 1})


@pytest.mark.parametrize("harness", ["archive-pg", "tiered-memory-sqlite"], indirect=True)
def test_archive_search_reads_the_text_of_blocks(harness: Harness) -> None:
    store = harness.make()
    TieredChatStore(store).set_messages("searchable", [
        ChatMessage(role="user",
                    blocks=[TextBlock(text="Where is my parcel?"), ImageBlock(image=PNG)]),
        ChatMessage(role="assistant", content="It ships tomorrow."),
    ])
    archive = store if harness.kind.startswith("archive") else store.archive
    hits = ArchiveQuery(archive).search("parcel", session_ids=["searchable"]).hits
    assert [(h.role, h.seq) for h in hits] == [("user", store.get("searchable").seqs[0])]


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_openai_format_written_by_others_loads(harness: Harness) -> None:
    store = harness.make()
    store.save("shared", [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/sky.png",
                                                "detail": "high"}},
            {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "-3"},
    ])
    user, call, result = TieredChatStore(store).get_messages("shared")
    assert user.role == MessageRole.USER and user.content == "Weather here?"
    assert isinstance(user.blocks[1], ImageBlock) and user.blocks[1].detail == "high"
    assert str(user.blocks[1].url) == "https://example.com/sky.png" and len(user.blocks) == 2
    assert call.blocks == [] and call.additional_kwargs["tool_calls"][0]["id"] == "call_9"
    assert result.content == "-3" and result.additional_kwargs == {"tool_call_id": "call_9"}


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_langchain_histories_load_as_llama_index_messages(harness: Harness) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    store = harness.make()
    TieredChatMessageHistory(store, "both").add_messages(
        [HumanMessage(content="hi"), AIMessage(content="hello")])
    human, ai = TieredChatStore(store).get_messages("both")
    assert (human.role, human.content) == (MessageRole.USER, "hi")
    assert (ai.role, ai.content) == (MessageRole.ASSISTANT, "hello")
    assert ai.additional_kwargs["type"] == "ai"  # LangChain's own fields are kept


@pytest.mark.parametrize(
    "record",
    [{"role": "critic", "content": "x"}, {"role": "user", "content": {"text": "x"}},
     {"role": "user", "content": [{"block_type": "nope"}]}],
)
def test_records_llama_index_cannot_hold_raise_invalid_message(record: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessage):
        from_record(record)


# -- validation ----------------------------------------------------------------------


class NoIO:
    """A store that fails the test if anything but its limits is asked of it."""

    limits = Limits()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"store.{name} was called")


@pytest.mark.parametrize("bad", ["", None, "a b", "x" * 257, "{tag}"])
def test_keys_are_checked_before_any_io(bad: Any, loop_thread: LoopThread) -> None:
    chat_store = TieredChatStore(NoIO())
    message = ChatMessage(role="user", content="x")
    calls = [
        lambda: chat_store.set_messages(bad, [message]),
        lambda: chat_store.get_messages(bad),
        lambda: chat_store.add_message(bad, message),
        lambda: chat_store.add_message(bad, message, idx=0),
        lambda: chat_store.delete_messages(bad),
        lambda: chat_store.delete_message(bad, 0),
        lambda: chat_store.delete_last_message(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidSessionId):
            call()
    with pytest.raises(InvalidSessionId):
        loop_thread.run(chat_store.aget_messages(bad))


def test_bad_idx_and_ttl() -> None:
    chat_store = TieredChatStore(NoIO())
    message = ChatMessage(role="user", content="x")
    for bad in ("0", 1.0, True, None):
        with pytest.raises(InvalidInput):
            chat_store.delete_message("k", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        chat_store.add_message("k", message, idx="0")  # type: ignore[arg-type]
    for ttl in (-1, "60", True, float("nan")):
        with pytest.raises(InvalidInput):
            TieredChatStore(NoIO(), ttl=ttl)  # type: ignore[arg-type]


# -- atomicity --------------------------------------------------------------------------


def _in_threads(count: int, work: Any) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_concurrent_appends_and_pops_lose_nothing(harness: Harness) -> None:
    chat_store = TieredChatStore(harness.make())
    writers, per_writer = 4, 25
    popped: list[ChatMessage] = []
    left = [writers]
    lock = threading.Lock()
    done = threading.Event()

    def work(i: int) -> None:
        if i < writers:
            for n in range(per_writer):
                chat_store.add_message("busy", ChatMessage(role="user", content=f"{i}-{n}"))
            with lock:
                left[0] -= 1
                if not left[0]:
                    done.set()
            return
        while not done.is_set():  # the last thread pops while the others append
            message = chat_store.delete_last_message("busy")
            if message is not None:
                popped.append(message)

    _in_threads(writers + 1, work)
    remaining = chat_store.get_messages("busy")
    written = Counter(f"{i}-{n}" for i in range(writers) for n in range(per_writer))
    assert Counter(m.content for m in remaining + popped) == written  # each exactly once
    for i in range(writers):  # each writer's messages kept their order
        mine = [m.content for m in remaining if str(m.content).startswith(f"{i}-")]
        assert mine == sorted(mine, key=lambda c: int(str(c).split("-")[1]))


@pytest.mark.parametrize("harness", ["redis"], indirect=True)
def test_concurrent_inserts_all_land(harness: Harness) -> None:
    chat_store = TieredChatStore(harness.make())
    chat_store.add_message("ins", ChatMessage(role="system", content="anchor"))
    _in_threads(6, lambda i: [
        chat_store.add_message("ins", ChatMessage(role="user", content=f"{i}-{n}"), idx=1)
        for n in range(5)
    ])
    loaded = chat_store.get_messages("ins")
    assert loaded[0].content == "anchor" and len(loaded) == 31
    assert {m.content for m in loaded[1:]} == {f"{i}-{n}" for i in range(6) for n in range(5)}


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_delete_messages_returns_what_it_deleted(harness: Harness) -> None:
    chat_store = TieredChatStore(harness.make())
    assert chat_store.delete_messages("none") is None
    chat_store.set_messages("some", MESSAGES[:2])
    assert chat_store.delete_messages("some") == MESSAGES[:2]
    assert chat_store.get_messages("some") == [] and chat_store.get_keys() == []
    assert chat_store.delete_messages("some") is None


# -- keys, ttl, from_url -------------------------------------------------------------------


@pytest.mark.parametrize("harness", ["redis", "archive-pg"], indirect=True)
def test_get_keys_walks_every_session_of_the_namespace(harness: Harness) -> None:
    store = harness.make()
    ids = [f"k-{i:04d}" for i in range(1100)]
    for sid in ids:
        store.save(sid, [{"role": "user", "content": sid}])
    harness.make(namespace=harness.namespace + "-other").save("not-mine", [{"role": "user"}])
    keys = TieredChatStore(store).get_keys()
    assert sorted(keys) == ids and len(keys) == len(set(keys))
    assert keys[0] == "k-0000"  # oldest activity first


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_ttl_is_set_by_every_write(harness: Harness) -> None:
    store = harness.make()
    chat_store = TieredChatStore(store, ttl=600)
    chat_store.add_message("ttl", ChatMessage(role="user", content="a"))
    first = store.get("ttl").expires_at
    assert first is not None
    chat_store.get_messages("ttl")
    assert store.get("ttl").expires_at == first
    chat_store.delete_last_message("ttl")  # a rewrite is a write too
    assert store.get("ttl").expires_at >= first
    for none in (None, 0):
        TieredChatStore(store, ttl=none).set_messages(f"no-ttl-{none}", MESSAGES[:1])
        assert store.get(f"no-ttl-{none}").expires_at is None


def test_from_url_shares_the_store_with_langchain(pg_url: str, redis_prefix: str) -> None:
    settings = {"redis_url": REDIS_URL, "database_url": pg_url, "prefix": redis_prefix,
                "namespace": f"lli-{uuid.uuid4().hex[:8]}"}
    before = shared_stores.open_count()
    chat_store = TieredChatStore.from_url(**settings)
    history = TieredChatMessageHistory.from_url("user-1", **settings)
    try:
        assert chat_store.store is history.store and isinstance(chat_store.store, TieredStore)
        assert chat_store.store.durability == "write_through"
        chat_store.add_message("user-1", ChatMessage(role="user", content="Where is my parcel?"))
        # LangChain sees the message with LlamaIndex's blocks as its content list.
        blocks = [{"block_type": "text", "text": "Where is my parcel?"}]
        assert [m.content for m in history.messages] == [blocks]
        assert [r["content"] for r in history.search_messages("parcel")] == [blocks]
    finally:
        chat_store.close()
        history.close()
    assert shared_stores.open_count() == before


def test_from_url_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIEREDSTORE_DATA_DIR", str(tmp_path))
    with TieredChatStore.from_url(namespace="embedded") as chat_store:
        chat_store.set_messages("k", MESSAGES)
        assert chat_store.get_messages("k") == MESSAGES
    assert (tmp_path / "archive.db").exists()


# -- LlamaIndex's memories and chat engine ----------------------------------------------


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_chat_memory_buffer(harness: Harness) -> None:
    chat_store = TieredChatStore(harness.make())
    memory = ChatMemoryBuffer.from_defaults(
        chat_store=chat_store, chat_store_key="user-7", token_limit=12, tokenizer_fn=str.split)
    for n in range(4):
        memory.put(ChatMessage(role="user", content=f"question {n} has five words"))
        memory.put(ChatMessage(role="assistant", content=f"answer {n}"))
    assert len(chat_store.get_messages("user-7")) == 8
    window = memory.get()  # the newest turns that fit 12 tokens, starting with a user turn
    assert [m.content for m in window] == ["question 3 has five words", "answer 3"]
    assert memory.get_all() == chat_store.get_messages("user-7")
    memory.set([ChatMessage(role="user", content="fresh start")])
    assert [m.content for m in chat_store.get_messages("user-7")] == ["fresh start"]
    memory.reset()
    assert chat_store.get_messages("user-7") == [] and chat_store.get_keys() == []
    assert memory.to_dict()["chat_store"] == {"class_name": "TieredChatStore"}


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_chat_engine_with_a_mock_llm(harness: Harness) -> None:
    chat_store = TieredChatStore(harness.make())
    llm = MockLLM(max_tokens=4)
    memory = ChatMemoryBuffer.from_defaults(
        chat_store=chat_store, chat_store_key="engine", token_limit=1000, tokenizer_fn=str.split)
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory, system_prompt="Be brief.")
    assert engine.chat("Hello there").response == "text text text text"

    async def later() -> str:
        return (await engine.achat("And again?")).response

    assert asyncio.run(later()) == "text text text text"
    stored = chat_store.get_messages("engine")
    assert [(m.role, m.content) for m in stored] == [
        (MessageRole.USER, "Hello there"), (MessageRole.ASSISTANT, "text text text text"),
        (MessageRole.USER, "And again?"), (MessageRole.ASSISTANT, "text text text text"),
    ]
    # Another engine on the same key continues the conversation from the store.
    other = SimpleChatEngine.from_defaults(llm=llm, memory=ChatMemoryBuffer.from_defaults(
        chat_store=TieredChatStore(harness.make()), chat_store_key="engine", token_limit=1000,
        tokenizer_fn=str.split))
    assert len(other.chat_history) == 4


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_chat_summary_memory_buffer(harness: Harness) -> None:
    chat_store = TieredChatStore(harness.make())
    memory = ChatSummaryMemoryBuffer.from_defaults(
        llm=MockLLM(max_tokens=3), chat_store=chat_store, chat_store_key="summary",
        token_limit=20, tokenizer_fn=str.split)
    for n in range(5):
        memory.put(ChatMessage(role="user", content=f"message number {n} with some words"))
    window = memory.get()
    assert window[0].role == MessageRole.SYSTEM  # the summary of what did not fit
    assert [m.content for m in window[1:]][-1] == "message number 4 with some words"
    assert chat_store.get_messages("summary") == window  # it wrote the summarised history back
