"""The contract, written once and run against every store configuration.

Every test here takes the ``store``/``harness`` fixture, which is parametrised
over all stores, sync and async (see ``conftest.STORE_KINDS``); none of them
is skipped for a particular store. An async store is driven through
``conftest.SyncFacade``, which runs each of its coroutines on the test event
loop thread, so these very functions test the async twins too.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Harness
from tieredstore import (
    BaseStore,
    InvalidInput,
    InvalidMessage,
    InvalidSessionId,
    Limits,
    Message,
    PayloadTooLarge,
    SessionExists,
    SessionNotFound,
    StateStore,
    VersionConflict,
)

USER = {"role": "user", "content": "Hello"}
ASSISTANT = {"role": "assistant", "content": "Hi there!"}

OPENAI_TOOL_TURN = [
    {"role": "system", "content": "You are a weather bot."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this and the weather in Paris?"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
            },
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
        ],
        "refusal": None,
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21.5}'},
    {
        "role": "assistant",
        "content": "Sunny, 21.5 °C.",
        "name": "bot",
        "future_field": {"nested": [1, 2.5, True, None]},
    },
]

ANTHROPIC_TOOL_TURN = [
    {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_01",
                "name": "get_weather",
                "input": {"city": "Oslo"},
            },
        ],
    },
    {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01",
                "content": "-3 °C",
                "is_error": False,
            },
        ],
    },
    {
        "role": "assistant",
        "content": [{"type": "text", "text": "It is -3 °C."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 7},
    },
]


def msg(i: int, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": f"message {i}"}


def snapshot(store: BaseStore, sid: str) -> tuple[list[Message], int] | None:
    """What a session holds, or None, to prove a rejected call changed nothing."""
    if not store.exists(sid):
        return None
    session = store.get(sid)
    return session.messages, session.version


# -- save / load / append -----------------------------------------------------


def test_store_implements_the_protocol(store: BaseStore) -> None:
    assert isinstance(store, StateStore)


def test_save_then_load_round_trips(store: BaseStore) -> None:
    assert store.save("s1", [USER, ASSISTANT]) == 1
    assert store.load("s1") == [USER, ASSISTANT]
    assert all(isinstance(m, Message) for m in store.load("s1"))


def test_save_replaces_history_and_bumps_version(store: BaseStore) -> None:
    store.save("s1", [msg(1), msg(2)])
    assert store.save("s1", [msg(3)]) == 2
    assert store.load("s1") == [msg(3)]


def test_empty_history_is_a_session(store: BaseStore) -> None:
    store.save("empty", [])
    assert store.load("empty") == []
    assert store.load("empty", last=5) == []
    assert store.count("empty") == 0
    assert store.exists("empty")
    assert store.get("empty").message_count == 0


def test_missing_session_raises(store: BaseStore) -> None:
    for call in (store.load, store.get, store.count):
        with pytest.raises(SessionNotFound) as info:
            call("nope")
        assert info.value.session_id == "nope"
    assert not store.exists("nope")
    with pytest.raises(SessionNotFound):
        store.merge_metadata("nope", {"a": 1})


def test_append_creates_and_returns_versions(store: BaseStore) -> None:
    assert store.append("s1", USER) == 1
    assert store.append("s1", ASSISTANT, msg(3)) == 2
    assert store.load("s1") == [USER, ASSISTANT, msg(3)]
    assert store.count("s1") == 3


def test_append_needs_a_message(store: BaseStore) -> None:
    with pytest.raises(InvalidInput):
        store.append("s1")
    assert not store.exists("s1")


def test_load_last(store: BaseStore) -> None:
    store.save("s1", [msg(i) for i in range(10)])
    assert store.load("s1", last=3) == [msg(7), msg(8), msg(9)]
    assert store.load("s1", last=10) == [msg(i) for i in range(10)]
    assert store.load("s1", last=50) == [msg(i) for i in range(10)]
    assert store.load("s1", last=0) == []
    with pytest.raises(InvalidInput):
        store.load("s1", last=-1)


def test_plain_dicts_and_messages_mix(store: BaseStore) -> None:
    store.save("s1", [Message(role="user", content="a"), {"role": "assistant", "content": "b"}])
    assert store.load("s1") == [Message("user", "a"), Message("assistant", "b")]


@pytest.mark.parametrize(
    "turn", [OPENAI_TOOL_TURN, ANTHROPIC_TOOL_TURN], ids=["openai", "anthropic"]
)
def test_provider_formats_round_trip_unchanged(
    store: BaseStore, turn: list[dict[str, Any]]
) -> None:
    store.save("s1", turn[:2])
    store.append("s1", *turn[2:])
    loaded = store.load("s1")
    assert loaded == turn
    assert [list(m.keys()) for m in loaded] == [list(m.keys()) for m in turn]


def test_unicode_and_emoji(store: BaseStore) -> None:
    messages = [
        {"role": "user", "content": "Grüße, 你好, こんにちは, مرحبا 👋🏽🧑‍🚀"},
        {
            "role": "assistant",
            "content": "\U0001d518\U0001d52b\U0001d526 \u200d zero-width joiner, \u00e9 vs e\u0301",
        },
        {"role": "user", "content": "", "ключ": "значение"},
    ]
    store.save("émoji-🚀", messages)
    assert store.load("émoji-🚀") == messages
    assert "émoji-🚀" in store.list().ids


def test_one_megabyte_message(store: BaseStore) -> None:
    big = {"role": "user", "content": "x" * (2**20)}
    store.append("big", USER, big)
    assert store.load("big", last=1) == [big]
    assert store.load("big")[0] == USER


def test_ten_thousand_message_session(store: BaseStore) -> None:
    history = [msg(i, "user" if i % 2 else "assistant") for i in range(10_000)]
    store.save("long", history)
    store.append("long", msg(10_000))
    assert store.count("long") == 10_001
    assert store.load("long", last=20) == [*history[-19:], msg(10000)]
    assert store.load("long") == [*history, msg(10_000)]


# -- immutability ---------------------------------------------------------------


def test_caller_mutation_never_changes_stored_data(store: BaseStore) -> None:
    original = {"role": "user", "content": [{"type": "text", "text": "a"}], "meta": {"k": [1]}}
    store.save("s1", [original])
    original["content"][0]["text"] = "mutated"
    original["meta"]["k"].append(2)
    loaded = store.load("s1")
    assert loaded[0]["content"][0]["text"] == "a"
    with pytest.raises(TypeError):
        loaded[0]["role"] = "system"  # type: ignore[index]
    with pytest.raises(TypeError):
        loaded[0]["content"].append({"type": "text"})
    with pytest.raises(TypeError):
        loaded[0]["meta"]["k"][0] = 5
    copy = loaded[0].to_dict()
    copy["content"][0]["text"] = "changed copy"
    loaded.clear()
    assert store.load("s1")[0]["content"][0]["text"] == "a"


# -- get / metadata -------------------------------------------------------------


def test_get_reports_the_session(store: BaseStore) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)
    store.save("s1", [USER], metadata={"title": "Greeting", "tags": ["a"]}, user_id="u-1")
    store.append("s1", ASSISTANT)
    session = store.get("s1")
    assert session.id == "s1"
    assert session.messages == [USER, ASSISTANT]
    assert session.metadata == {"title": "Greeting", "tags": ["a"]}
    assert session.user_id == "u-1"
    assert session.version == 2
    assert session.message_count == 2
    assert session.expires_at is None
    if store.tier == "tiered":
        assert session.tier in ("memory", "redis", "archive")
    else:
        assert session.tier == store.tier
    assert before <= session.created_at <= session.updated_at
    assert session.created_at.tzinfo is not None
    assert store.get("s1", last=1).messages == [ASSISTANT]
    assert store.get("s1", last=1).message_count == 2


def test_save_keeps_metadata_and_user_unless_given(store: BaseStore) -> None:
    store.save("s1", [USER], metadata={"a": 1}, user_id="u-1")
    store.save("s1", [ASSISTANT])
    assert store.get("s1").metadata == {"a": 1}
    assert store.get("s1").user_id == "u-1"
    store.save("s1", [ASSISTANT], metadata={"b": 2})
    assert store.get("s1").metadata == {"b": 2}


def test_merge_metadata(store: BaseStore) -> None:
    store.save("s1", [USER], metadata={"a": 1, "b": {"x": 1}, "c": "keep"})
    merged = store.merge_metadata("s1", {"a": 2, "b": None, "d": [1, 2]})
    assert merged == {"a": 2, "c": "keep", "d": [1, 2]}
    session = store.get("s1")
    assert session.metadata == merged
    assert session.version == 2
    assert session.messages == [USER]


def test_concurrent_merges_of_different_keys_all_land(store: BaseStore) -> None:
    store.save("s1", [USER])
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                store.merge_metadata("s1", {f"k{n}-{i}": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    metadata = store.get("s1").metadata
    assert len(metadata) == 40
    assert store.get("s1").version == 41


# -- delete ---------------------------------------------------------------------


def test_delete_removes_everything(store: BaseStore) -> None:
    store.save("s1", [USER], metadata={"a": 1}, user_id="u-1")
    assert store.delete("s1") is True
    assert not store.exists("s1")
    with pytest.raises(SessionNotFound):
        store.load("s1")
    assert "s1" not in store.list().ids
    assert "s1" not in store.list(user_id="u-1").ids
    assert store.delete("s1") is False
    store.append("s1", ASSISTANT)
    session = store.get("s1")
    assert session.messages == [ASSISTANT]
    assert session.version == 1
    assert session.metadata == {}
    assert session.user_id is None


# -- list -----------------------------------------------------------------------


def _touch_in_order(harness: Harness, store: BaseStore, ids: list[str], **kw: Any) -> None:
    for sid in ids:
        store.save(sid, [USER], **kw)
        harness.advance(0.002 if harness.real_time else 1)


def _all_pages(store: BaseStore, **kw: Any) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(cursor=cursor, **kw)
        seen.extend(page.ids)
        cursor = page.next_cursor
        if cursor is None:
            return seen


def test_list_pages_newest_first(harness: Harness) -> None:
    store = harness.make()
    ids = [f"s{i:02d}" for i in range(25)]
    _touch_in_order(harness, store, ids)
    first = store.list(limit=10)
    assert first.ids == ids[::-1][:10]
    assert first.next_cursor is not None
    assert _all_pages(store, limit=10) == ids[::-1]
    assert _all_pages(store, limit=7, order="asc") == ids
    assert store.list(limit=100).next_cursor is None
    store.append("s00", ASSISTANT)
    assert store.list(limit=1).ids == ["s00"]


def test_list_is_scoped_to_namespace_and_user(harness: Harness) -> None:
    store = harness.make()
    other = harness.make(namespace=harness.namespace + "-other")
    _touch_in_order(harness, store, ["a1", "a2"], user_id="alice")
    _touch_in_order(harness, store, ["b1"], user_id="bob")
    other.save("x", [USER], user_id="alice")
    assert store.list(user_id="alice").ids == ["a2", "a1"]
    assert store.list(user_id="bob").ids == ["b1"]
    assert store.list(user_id="carol").ids == []
    assert sorted(store.list().ids) == ["a1", "a2", "b1"]
    assert other.list().ids == ["x"]
    store.save("a1", [USER], user_id="bob")
    assert store.list(user_id="alice").ids == ["a2"]
    assert store.list(user_id="bob").ids == ["a1", "b1"]


def test_list_is_stable_while_sessions_are_added(harness: Harness) -> None:
    store = harness.make()
    existing = [f"old{i:02d}" for i in range(30)]
    _touch_in_order(harness, store, existing)
    seen: list[str] = []
    page = store.list(limit=4)
    added = 0
    while True:
        seen.extend(page.ids)
        store.save(f"new{added:02d}", [USER])
        added += 1
        if page.next_cursor is None:
            break
        page = store.list(limit=4, cursor=page.next_cursor)
    assert len(seen) == len(set(seen)), "a session was listed twice"
    assert [s for s in seen if s.startswith("old")] == existing[::-1]


def test_list_rejects_bad_arguments(store: BaseStore) -> None:
    for kwargs in (
        {"limit": 0},
        {"limit": -1},
        {"limit": 10**9},
        {"order": "sideways"},
        {"cursor": "%%%not-a-cursor"},
        {"user_id": "has space"},
    ):
        with pytest.raises(InvalidInput):
            store.list(**kwargs)


def test_list_cost_is_bounded_by_the_page(store: BaseStore) -> None:
    for i in range(60):
        store.save(f"s{i}", [USER])
    page = store.list(limit=5)
    assert len(page.ids) == 5
    assert page.next_cursor is not None


# -- fork -----------------------------------------------------------------------


def test_fork_copies_history_and_metadata(store: BaseStore) -> None:
    store.save("src", [USER, ASSISTANT], metadata={"t": "x"}, user_id="u-1")
    store.append("src", msg(3))
    assert store.fork("src", "dst") == 1
    fork = store.get("dst")
    assert fork.messages == [USER, ASSISTANT, msg(3)]
    assert fork.metadata == {"t": "x"}
    assert fork.user_id == "u-1"
    store.append("dst", msg(4))
    assert store.load("src") == [USER, ASSISTANT, msg(3)]
    assert store.count("dst") == 4
    with pytest.raises(SessionExists):
        store.fork("src", "dst")
    with pytest.raises(SessionExists):
        store.fork("src", "src")
    with pytest.raises(SessionNotFound):
        store.fork("missing", "dst2")
    assert not store.exists("dst2")


# -- TTL ------------------------------------------------------------------------


def _ttl(harness: Harness) -> float:
    return 0.4 if harness.real_time else 60.0


def test_ttl_expires_the_session(harness: Harness) -> None:
    store = harness.make()
    ttl = _ttl(harness)
    store.save("short", [USER], ttl=timedelta(seconds=ttl), user_id="u")
    store.save("forever", [USER], user_id="u")
    session = store.get("short")
    assert session.expires_at is not None
    assert abs((session.expires_at - session.updated_at).total_seconds() - ttl) < 0.05
    harness.advance(ttl * 1.5)
    assert not store.exists("short")
    with pytest.raises(SessionNotFound):
        store.load("short")
    assert store.list().ids == ["forever"]
    assert store.list(user_id="u").ids == ["forever"]
    assert store.load("forever") == [USER]
    store.append("short", ASSISTANT)
    assert store.load("short") == [ASSISTANT]
    assert store.get("short").version == 1


def test_default_ttl_and_refresh_on_write(harness: Harness) -> None:
    ttl = _ttl(harness)
    store = harness.make(default_ttl=timedelta(seconds=ttl))
    store.save("s1", [USER])
    assert store.get("s1").expires_at is not None
    harness.advance(ttl * 0.6)
    store.append("s1", ASSISTANT)
    harness.advance(ttl * 0.6)
    assert store.load("s1") == [USER, ASSISTANT]
    harness.advance(ttl * 0.6)
    assert not store.exists("s1")


def test_write_without_ttl_keeps_existing_expiry(harness: Harness) -> None:
    ttl = _ttl(harness)
    store = harness.make()
    store.save("s1", [USER], ttl=ttl)
    expires = store.get("s1").expires_at
    store.append("s1", ASSISTANT)
    assert store.get("s1").expires_at == expires
    harness.advance(ttl * 1.5)
    assert not store.exists("s1")


def test_sliding_ttl_refreshes_on_read(harness: Harness) -> None:
    ttl = _ttl(harness)
    store = harness.make(sliding_ttl=True)
    store.save("s1", [USER], ttl=ttl)
    for _ in range(3):
        harness.advance(ttl * 0.6)
        assert store.load("s1") == [USER]
    harness.advance(ttl * 1.5)
    assert not store.exists("s1")


def test_invalid_ttl_rejected(store: BaseStore) -> None:
    for bad in (0, -1, timedelta(0), timedelta(seconds=-5)):
        with pytest.raises(InvalidInput):
            store.save("s1", [USER], ttl=bad)
    assert not store.exists("s1")


# -- trim policy ------------------------------------------------------------------


def test_trim_keeps_system_and_drops_oldest(harness: Harness) -> None:
    store = harness.make(max_messages=4)
    system = {"role": "system", "content": "rules"}
    store.save("s1", [system])
    for i in range(10):
        store.append("s1", msg(i))
    assert store.load("s1") == [system, msg(7), msg(8), msg(9)]
    store.save("s2", [system, *[msg(i) for i in range(10)]])
    assert store.load("s2") == [system, msg(7), msg(8), msg(9)]


def test_trim_never_separates_tool_results_from_their_call(harness: Harness) -> None:
    store = harness.make(max_messages=4)
    system, user, call, result, answer = OPENAI_TOOL_TURN[0], USER, *OPENAI_TOOL_TURN[2:5]
    store.save("s1", [system, user, call, result])
    store.append("s1", answer)
    assert store.load("s1") == [system, call, result, answer]
    store.append("s1", msg(9))
    assert store.load("s1") == [system, answer, msg(9)]
    blocks = ANTHROPIC_TOOL_TURN
    store.save("s2", blocks[:3])
    store.append("s2", blocks[3], msg(1))
    assert store.load("s2") == [*blocks[1:4], msg(1)]
    store.append("s2", msg(2))
    assert store.load("s2") == [blocks[3], msg(1), msg(2)]


# -- concurrency ------------------------------------------------------------------


def test_eight_threads_append_concurrently(store: BaseStore) -> None:
    threads_n, per_thread = 8, 500
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(per_thread):
                store.append("hot", {"role": "user", "content": f"{n}:{i}", "w": n, "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    history = store.load("hot")
    assert len(history) == threads_n * per_thread
    assert store.get("hot").version == threads_n * per_thread
    for n in range(threads_n):
        assert [m["i"] for m in history if m["w"] == n] == list(range(per_thread))


# -- versions and rejected input --------------------------------------------------


def test_expected_version(store: BaseStore) -> None:
    assert store.save("s1", [USER], expected_version=0) == 1
    assert store.append("s1", ASSISTANT, expected_version=1) == 2
    assert store.save("s1", [msg(1)], expected_version=2) == 3
    before = snapshot(store, "s1")
    with pytest.raises(VersionConflict) as info:
        store.save("s1", [msg(2)], expected_version=2)
    assert (info.value.expected, info.value.actual) == (2, 3)
    with pytest.raises(VersionConflict):
        store.append("s1", msg(2), expected_version=7)
    with pytest.raises(VersionConflict):
        store.save("s1", [msg(2)], expected_version=0)
    with pytest.raises(VersionConflict):
        store.append("new", msg(2), expected_version=1)
    assert snapshot(store, "s1") == before
    assert not store.exists("new")


BAD_IDS: list[Any] = [
    "",
    " ",
    "a b",
    "tab\there",
    "new\nline",
    "nul\x00",
    "bell\x07",
    "brace{x}",
    "glob*",
    "what?",
    "[set]",
    "back\\slash",
    "x" * 257,
    None,
    42,
    b"bytes",
    "nbsp\u00a0x",
    "ls\u2028x",
]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=repr)
def test_bad_session_ids_are_rejected(store: BaseStore, bad_id: Any) -> None:
    store.save("good", [USER])
    before = snapshot(store, "good")
    with pytest.raises(InvalidSessionId):
        store.save(bad_id, [USER])
    with pytest.raises(InvalidSessionId):
        store.append(bad_id, USER)
    with pytest.raises(InvalidSessionId):
        store.load(bad_id)
    with pytest.raises(InvalidSessionId):
        store.delete(bad_id)
    with pytest.raises(InvalidSessionId):
        store.fork("good", bad_id)
    with pytest.raises(InvalidSessionId):
        store.save("good", [USER], user_id=bad_id if bad_id is not None else 5)
    assert snapshot(store, "good") == before
    assert store.list().ids == ["good"]


def test_long_but_valid_id(store: BaseStore) -> None:
    sid = "tenant:42/user-7/chat." + "x" * 234
    assert len(sid) == 256
    store.save(sid, [USER])
    assert store.load(sid) == [USER]


class _Opaque:
    pass


BAD_MESSAGES: list[Any] = [
    {"content": "no role"},
    {"role": 5, "content": "numeric role"},
    {"role": None},
    "just a string",
    ["role", "user"],
    42,
    {"role": "user", "content": float("nan")},
    {"role": "user", "content": float("inf")},
    {"role": "user", "content": {1, 2}},
    {"role": "user", "content": b"bytes"},
    {"role": "user", "content": _Opaque()},
    {"role": "user", "content": 2**70},
    {"role": "user", 7: "non-string key"},
]


@pytest.mark.parametrize("bad", BAD_MESSAGES, ids=repr)
def test_bad_messages_are_rejected(store: BaseStore, bad: Any) -> None:
    store.save("s1", [USER], metadata={"m": 1})
    before = snapshot(store, "s1")
    with pytest.raises(InvalidMessage):
        store.append("s1", ASSISTANT, bad)
    with pytest.raises(InvalidMessage):
        store.save("s1", [ASSISTANT, bad])
    with pytest.raises(InvalidMessage):
        store.save("fresh", [bad])
    assert snapshot(store, "s1") == before
    assert not store.exists("fresh")


def test_messages_must_be_a_sequence(store: BaseStore) -> None:
    with pytest.raises(InvalidMessage):
        store.save("s1", USER)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        store.save("s1", "user: hi")  # type: ignore[arg-type]
    assert not store.exists("s1")


def test_oversize_payloads_are_rejected(harness: Harness) -> None:
    limits = Limits(
        max_message_bytes=1000, max_messages_per_call=5, max_call_bytes=3000, max_metadata_bytes=200
    )
    store = harness.make(limits=limits)
    store.save("s1", [USER], metadata={"a": 1})
    before = snapshot(store, "s1")
    cases = [
        lambda: store.append("s1", {"role": "user", "content": "x" * 1000}),
        lambda: store.save("s1", [msg(i) for i in range(6)]),
        lambda: store.append("s1", *[{"role": "user", "content": "y" * 900} for _ in range(4)]),
        lambda: store.save("s1", [USER], metadata={"blob": "z" * 500}),
        lambda: store.merge_metadata("s1", {"blob": "z" * 500}),
    ]
    for case in cases:
        with pytest.raises(PayloadTooLarge):
            case()
    assert snapshot(store, "s1") == before
    assert store.get("s1").metadata == {"a": 1}


def test_bad_metadata_is_rejected(store: BaseStore) -> None:
    store.save("s1", [USER], metadata={"a": 1})
    before = snapshot(store, "s1")
    for bad in (
        ["not", "an", "object"],
        "text",
        {"k": {1, 2}},
        {"k": float("nan")},
        {"k": "nul\x00"},
    ):
        with pytest.raises(InvalidInput):
            store.save("s1", [ASSISTANT], metadata=bad)
        with pytest.raises(InvalidInput):
            store.merge_metadata("s1", bad)
    assert snapshot(store, "s1") == before
    assert store.get("s1").metadata == {"a": 1}


# -- property: arbitrary JSON round-trips ------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
json_messages = st.builds(
    lambda role, extra: {**extra, "role": role},
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=12).filter(lambda k: k != "role"), json_values, max_size=5),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=st.lists(json_messages, min_size=0, max_size=4))
def test_arbitrary_json_messages_round_trip(
    store: BaseStore, messages: list[dict[str, Any]]
) -> None:
    store.save("prop", messages)
    assert store.load("prop") == messages
    if messages:
        store.append("prop", *messages)
        assert store.load("prop") == messages + messages


# -- lifecycle --------------------------------------------------------------------


def test_close_is_idempotent(harness: Harness) -> None:
    with harness.make() as store:
        store.save("s1", [USER])
    store.close()
    store.close()
