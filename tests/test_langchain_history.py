"""What ``TieredChatMessageHistory`` adds for langchain-redis users: ``from_url``,
``len()``, ``.id``, ids checked at construction, ``ttl`` and ``search_messages``.

Against the real stores (``conftest`` harness kinds) and the run's servers;
LangChain's own suites are in ``test_langchain_core_suite.py`` and
``test_langchain_redis_suite.py``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from tests.conftest import REDIS_URL, Harness, LoopThread
from tieredstore.errors import ConfigurationError, InvalidInput, InvalidSessionId
from tieredstore.integrations.langchain import TieredChatMessageHistory, to_record
from tieredstore.integrations.shared import shared_stores
from tieredstore.maintenance import archive_idle

SEARCHABLE = ["tiered-memory-redis-pg", "tiered-memory-sqlite", "archive-pg"]
ASYNC_SEARCHABLE = ["async-tiered-memory-redis-pg", "async-archive-pg"]


def real(store: Any) -> Any:
    return getattr(store, "async_store", store)


@pytest.fixture
def urls(pg_url: str, redis_prefix: str) -> dict[str, Any]:
    """``from_url`` settings on the run's servers, in a namespace of the test's own."""
    return {"redis_url": REDIS_URL, "database_url": pg_url, "prefix": redis_prefix,
            "namespace": f"lch-{uuid.uuid4().hex[:10]}"}


@pytest.fixture
def opened() -> Iterator[list[TieredChatMessageHistory]]:
    """Histories to close at the end of the test, whatever happens."""
    made: list[TieredChatMessageHistory] = []
    yield made
    for history in made:
        history.close()


# -- construction ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", None, 42, "a b", "x" * 257, "{tag}", "new\nline"])
def test_bad_session_ids_fail_at_construction(bad: Any) -> None:
    before = shared_stores.open_count()
    with pytest.raises(InvalidSessionId):
        TieredChatMessageHistory(object(), bad)
    # from_url refuses before building a store (this URL would not even resolve).
    with pytest.raises(InvalidSessionId):
        TieredChatMessageHistory.from_url(bad, redis_url="redis://no-such-host.invalid:6379/0")
    assert shared_stores.open_count() == before


@pytest.mark.parametrize("options", [{"ttl": -1}, {"ttl": "60"}, {"ttl": True},
                                     {"ttl": math.nan}, {"ttl": timedelta(seconds=-1)},
                                     {"last": -1}, {"last": 1.5}])
def test_bad_ttl_or_last_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        TieredChatMessageHistory(object(), "s-1", **options)
    with pytest.raises(InvalidInput):
        TieredChatMessageHistory.from_url("s-1", redis_url="redis://no-such-host.invalid:6379/0",
                                          **options)


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_id_checked_against_the_stores_limits(harness: Harness) -> None:
    from tieredstore.config import Limits

    store = harness.make(limits=Limits(max_session_id_length=8))
    assert TieredChatMessageHistory(store, "12345678").id == "12345678"
    with pytest.raises(InvalidSessionId):
        TieredChatMessageHistory(store, "123456789")


def test_from_url_shares_one_store_per_settings(
    urls: dict[str, Any], opened: list[TieredChatMessageHistory]
) -> None:
    before = shared_stores.open_count()
    first = TieredChatMessageHistory.from_url("s-1", **urls)
    second = TieredChatMessageHistory.from_url("s-2", **urls)
    elsewhere = {**urls, "namespace": urls["namespace"] + "x"}
    other = TieredChatMessageHistory.from_url("s-1", **elsewhere)
    opened += [first, second, other]
    assert first.store is second.store and other.store is not first.store
    assert first.store.durability == "write_through"  # both URLs: search sees every message
    assert shared_stores.open_count() == before + 2
    first.add_message(HumanMessage(content="hello"))
    assert first.id == "s-1" and len(first) == 1 and len(second) == 0
    first.close()
    first.close()  # idempotent: gives the store back once
    assert len(second) == 0  # the store is still open for second
    second.close()
    other.close()
    assert shared_stores.open_count() == before


def test_from_url_durability_and_context_manager(urls: dict[str, Any]) -> None:
    redis_only = {k: v for k, v in urls.items() if k != "database_url"}
    with TieredChatMessageHistory.from_url("s-1", **redis_only) as history:
        assert history.store.durability == "archive" and history.store.archive is None
        history.add_message(HumanMessage(content="hi"))
        assert len(history) == 1
    with TieredChatMessageHistory.from_url("s-1", durability="archive", **urls) as history:
        assert history.store.durability == "archive"


def test_from_url_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIEREDSTORE_DATA_DIR", str(tmp_path))
    with TieredChatMessageHistory.from_url("s-1", namespace="embedded") as history:
        history.add_messages([HumanMessage(content="Where is my parcel?"),
                              AIMessage(content="On its way.")])
        assert history.store.redis is None
        assert [r["content"] for r in history.search_messages("parcel")] == ["Where is my parcel?"]
    assert (tmp_path / "archive.db").exists()


# -- len, bool, ttl ---------------------------------------------------------------------


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg", "redis"], indirect=True)
def test_len_counts_what_messages_returns(harness: Harness) -> None:
    store = harness.make()
    history = TieredChatMessageHistory(store, "len")
    assert len(history) == 0 and bool(history)
    history.add_messages([HumanMessage(content=str(i)) for i in range(5)])
    assert len(history) == 5 == len(history.messages)
    windowed = TieredChatMessageHistory(store, "len", last=3)
    assert len(windowed) == 3 == len(windowed.messages)
    history.clear()
    assert len(history) == 0 and len(windowed) == 0


@pytest.mark.parametrize("harness", ["async-tiered-memory-redis-pg", "redis"], indirect=True)
def test_alen_and_truthiness_on_any_store(harness: Harness, loop_thread: LoopThread) -> None:
    store = real(harness.make())
    history = TieredChatMessageHistory(store, "alen")
    assert history  # no I/O, even over an async store

    async def scenario() -> int:
        await history.aadd_messages([HumanMessage(content="a"), AIMessage(content="b")])
        return await history.alen()

    assert loop_thread.run(scenario()) == 2


@pytest.mark.parametrize("harness", ["async-memory"], indirect=True)
def test_sync_len_and_search_need_a_sync_store(harness: Harness) -> None:
    history = TieredChatMessageHistory(real(harness.make()), "s")
    with pytest.raises(TypeError, match="async store"):
        len(history)
    with pytest.raises(TypeError, match="async store"):
        history.search_messages("anything")


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_ttl_is_set_by_writes_not_reads(harness: Harness) -> None:
    store = harness.make()
    history = TieredChatMessageHistory(store, "ttl", ttl=600)
    start = datetime.now(UTC)
    history.add_message(HumanMessage(content="one"))
    first = store.get("ttl").expires_at
    assert first is not None
    assert start + timedelta(seconds=590) < first <= datetime.now(UTC) + timedelta(seconds=601)
    assert history.messages and len(history) == 1
    assert store.get("ttl").expires_at == first  # reads leave it alone
    history.add_message(AIMessage(content="two"))
    assert store.get("ttl").expires_at >= first  # every write sets it again

    shorter = TieredChatMessageHistory(store, "ttl", ttl=timedelta(seconds=30))
    shorter.add_message(HumanMessage(content="three"))
    assert store.get("ttl").expires_at < first


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
@pytest.mark.parametrize("ttl", [None, 0, 0.0, timedelta(0)])
def test_no_ttl_sets_no_expiry(harness: Harness, ttl: Any) -> None:
    store = harness.make()
    history = TieredChatMessageHistory(store, "forever", ttl=ttl)
    assert history.ttl is None
    history.add_message(HumanMessage(content="kept"))
    assert store.get("forever").expires_at is None
    # Without a ttl of its own the store's default applies, as for any write.
    defaulted = harness.make(default_ttl=600)
    TieredChatMessageHistory(defaulted, "defaulted", ttl=ttl).add_message(
        HumanMessage(content="kept"))
    assert defaulted.get("defaulted").expires_at is not None


# -- search_messages --------------------------------------------------------------------

CONVERSATION = [
    SystemMessage(content="You answer questions about orders."),
    HumanMessage(content="I want a refund for order 42", id="h-1"),
    AIMessage(content="", tool_calls=[{"name": "refund", "args": {"order": 42}, "id": "c-1"}],
              id="a-1"),
    ToolMessage(content="refund issued for order 42", tool_call_id="c-1", id="t-1"),
    AIMessage(content="Your refund is on its way.", id="a-2"),
    HumanMessage(content="Thanks! And the weather?", id="h-2"),
]


def _searchable(harness: Harness) -> Any:
    options = {"durability": "write_through"} if "redis" in harness.kind else {}
    return harness.make(**options)


@pytest.mark.parametrize("harness", SEARCHABLE, indirect=True)
def test_search_messages_shape_order_and_scope(harness: Harness) -> None:
    store = _searchable(harness)
    history = TieredChatMessageHistory(store, "orders")
    history.add_messages(CONVERSATION)
    TieredChatMessageHistory(store, "elsewhere").add_message(HumanMessage(content="refund me too"))

    results = history.search_messages("refund")
    assert [r["id"] for r in results] == ["a-2", "t-1", "h-1"]  # newest first, this session only
    tool = results[1]
    assert tool["type"] == "tool" and tool["tool_call_id"] == "c-1"
    assert tool["content"] == "refund issued for order 42"
    assert tool["seq"] < results[0]["seq"] and isinstance(tool["timestamp"], float)
    assert abs(tool["timestamp"] - time.time()) < 3600
    assert "refund" in tool["snippet"].lower()
    # The dict is the message's own (langchain-redis's shape) plus seq, timestamp, snippet.
    expected = CONVERSATION[3].model_dump(mode="json")
    assert {k: v for k, v in tool.items() if k not in ("seq", "timestamp", "snippet")} == expected

    assert [r["id"] for r in history.search_messages("refund", limit=2)] == ["a-2", "t-1"]
    assert history.search_messages("refund", limit=0) == []
    assert history.search_messages("   ") == [] and history.search_messages(None) == []  # type: ignore[arg-type]
    assert history.search_messages("parcel") == []
    with pytest.raises(InvalidInput):
        history.search_messages("refund", limit=-1)
    history.clear()
    assert history.search_messages("refund") == []


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_search_finds_what_other_clients_wrote(harness: Harness) -> None:
    store = _searchable(harness)
    store.save("shared", [
        {"role": "user", "content": "Is my invoice ready?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Invoice sent."}]},
    ])
    results = TieredChatMessageHistory(store, "shared").search_messages("invoice")
    assert [(r["type"], r["content"]) for r in results] == [
        ("ai", [{"type": "text", "text": "Invoice sent."}]), ("human", "Is my invoice ready?"),
    ]


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_search_pages_past_one_query_page(harness: Harness) -> None:
    store = _searchable(harness)
    history = TieredChatMessageHistory(store, "long")
    history.add_messages([HumanMessage(content=f"ticket number {i}") for i in range(1100)])
    results = history.search_messages("ticket", limit=1050)
    assert len(results) == 1050
    assert [r["content"] for r in results[:2]] == ["ticket number 1099", "ticket number 1098"]
    assert len({r["seq"] for r in results}) == 1050


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_search_sees_the_archive_and_drops_replaced_rows(harness: Harness) -> None:
    store = harness.make()  # durability="archive": the worker archives idle sessions
    history = TieredChatMessageHistory(store, "moved")
    history.add_messages([HumanMessage(content="refund for order 7"), AIMessage(content="Done.")])
    assert history.search_messages("refund") == []  # hot in Redis, not archived yet
    assert archive_idle(store, archive_after=0, now=time.time() + 60).changed == 1
    assert [r["content"] for r in history.search_messages("refund")] == ["refund for order 7"]
    # A save replaces the history; the archive rows of the old one are no hits any more.
    store.save("moved", [to_record(HumanMessage(content="a new topic"))])
    assert history.search_messages("refund") == []
    assert [m.content for m in history.messages] == ["a new topic"]


@pytest.mark.parametrize("harness", ["redis", "memory", "tiered-memory-redis"], indirect=True)
def test_search_needs_an_archive(harness: Harness) -> None:
    history = TieredChatMessageHistory(harness.make(), "s")
    with pytest.raises(ConfigurationError, match="archive"):
        history.search_messages("anything")


@pytest.mark.parametrize("harness", [*ASYNC_SEARCHABLE, "tiered-memory-redis-pg"], indirect=True)
def test_asearch_messages(harness: Harness, loop_thread: LoopThread) -> None:
    store = real(_searchable(harness))
    history = TieredChatMessageHistory(store, "async-orders")

    async def scenario() -> list[dict[str, Any]]:
        await history.aadd_messages(CONVERSATION)
        return await history.asearch_messages("refund", limit=2)

    results = loop_thread.run(scenario())
    assert [r["id"] for r in results] == ["a-2", "t-1"]
