"""The conversation middleware, run against every store configuration, sync and async.

Async stores are driven through ``SyncFacade`` (see ``conftest``), which maps
``with store.conversation(...)`` onto ``async with`` on the test event loop,
so each test function here covers both worlds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.conftest import Harness
from tieredstore import InvalidMessage, LockTimeout, SessionNotFound, VersionConflict

USER = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}
ANSWER = {"role": "assistant", "content": "Sunny, 21 °C."}


class Boom(Exception):
    pass


def state(store: Any, sid: str) -> tuple[list[Any], int] | None:
    try:
        session = store.get(sid)
    except SessionNotFound:
        return None
    return session.messages, session.version


def test_new_session_starts_empty_and_commits_on_exit(store: Any) -> None:
    with store.conversation("s1") as conv:
        assert conv.history == ()
        assert conv.messages == []
        assert conv.is_new and conv.version == 0
        conv.add(USER)
        conv.add(CALL, RESULT)
        assert conv.messages == [USER, CALL, RESULT]
        assert not store.exists("s1"), "nothing is written before the block ends"
    assert conv.committed_version == 1
    assert store.load("s1") == [USER, CALL, RESULT]


def test_existing_history_is_loaded_and_extended(store: Any) -> None:
    store.save("s1", [USER, CALL, RESULT])
    with store.conversation("s1", last=2) as conv:
        assert list(conv.history) == [CALL, RESULT]
        assert conv.version == 1
        conv.add(ANSWER)
        assert conv.messages == [CALL, RESULT, ANSWER]
        assert conv.pending == [ANSWER]
    assert store.load("s1") == [USER, CALL, RESULT, ANSWER]
    assert store.get("s1").version == 2


def test_a_block_that_raises_leaves_the_session_unchanged(store: Any) -> None:
    store.save("s1", [USER], metadata={"k": 1})
    before = state(store, "s1")
    with pytest.raises(Boom), store.conversation("s1") as conv:
        conv.add(CALL, RESULT)
        raise Boom
    assert state(store, "s1") == before
    with pytest.raises(Boom), store.conversation("new") as conv:
        conv.add(USER)
        raise Boom
    assert not store.exists("new")


def test_commit_on_error_writes_and_still_raises(store: Any) -> None:
    with pytest.raises(Boom), store.conversation("s1", commit_on_error=True) as conv:
        conv.add(USER)
        raise Boom
    assert store.load("s1") == [USER]


def test_nothing_added_or_discarded_writes_nothing(store: Any) -> None:
    store.save("s1", [USER])
    with store.conversation("s1") as conv:
        pass
    with store.conversation("s1") as conv:
        conv.add(ANSWER)
        conv.discard()
    assert conv.committed_version is None
    assert state(store, "s1") == ([USER], 1)
    with store.conversation("never") as conv:
        pass
    assert not store.exists("never")


def test_invalid_messages_fail_inside_the_block(store: Any) -> None:
    store.save("s1", [USER])
    with pytest.raises(InvalidMessage), store.conversation("s1") as conv:
        conv.add(ANSWER)
        conv.add({"content": "no role"})
    assert state(store, "s1") == ([USER], 1)


def test_check_version_rejects_a_commit_after_a_concurrent_write(store: Any) -> None:
    store.save("s1", [USER])
    with pytest.raises(VersionConflict), store.conversation("s1", check_version=True) as conv:
        conv.add(ANSWER)
        store.append("s1", CALL)  # someone else writes meanwhile
    assert state(store, "s1") == ([USER, CALL], 2)
    with store.conversation("s1", check_version=True) as conv:
        conv.add(ANSWER)
    assert store.load("s1") == [USER, CALL, ANSWER]


def test_ttl_applies_to_the_commit(store: Any) -> None:
    with store.conversation("s1", ttl=3600) as conv:
        conv.add(USER)
    assert store.get("s1").expires_at is not None


def test_blocks_with_lock_serialise(store: Any) -> None:
    """Two concurrent read-modify-write blocks: the second sees the first's turn."""
    store.save("s1", [USER])
    spans: list[tuple[float, float]] = []
    seen: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def turn(n: int) -> None:
        try:
            start.wait()
            with store.conversation("s1", lock=True, lock_timeout=10) as conv:
                entered = time.monotonic()
                seen.append(len(conv.history))
                time.sleep(0.2)
                conv.add({"role": "assistant", "content": f"turn {n}"})
                spans.append((entered, time.monotonic()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=turn, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    (_, first_out), (second_in, _) = sorted(spans)
    assert first_out <= second_in, "the two blocks overlapped"
    assert sorted(seen) == [1, 2], "the second block did not see the first one's message"
    assert len(store.load("s1")) == 3
    assert not store.lock("s1").locked()


def test_lock_is_released_when_the_block_raises(store: Any) -> None:
    with pytest.raises(Boom), store.conversation("s1", lock=True) as conv:
        conv.add(USER)
        raise Boom
    with store.lock("s1", blocking_timeout=0):
        pass


def test_lock_expired_during_the_block_writes_nothing(store: Any) -> None:
    with pytest.raises(LockTimeout), store.conversation("s1", lock=True, lock_timeout=0.2) as c:
        c.add(USER)
        time.sleep(0.3)
        with store.lock("s1", blocking_timeout=0):  # someone else takes the expired lock
            pass
    assert not store.exists("s1")


def test_lock_timeout_when_the_session_is_held(store: Any) -> None:
    with store.lock("s1", timeout=10):
        started = time.monotonic()
        with pytest.raises(LockTimeout), store.conversation("s1", lock=True, blocking_timeout=0.2):
            pass  # pragma: no cover - never entered
        assert 0.15 <= time.monotonic() - started < 2
    assert not store.exists("s1")


@pytest.mark.parametrize("harness", ["memory", "async-memory"], indirect=True)
def test_conversation_uses_the_harness(harness: Harness) -> None:
    """The same middleware works over a store built with options (trim policy here)."""
    store = harness.make(max_messages=3)
    with store.conversation("s1") as conv:
        conv.add(USER, CALL, RESULT, ANSWER)
    assert store.load("s1") == [CALL, RESULT, ANSWER]
