"""Google ADK's own session-service tests, run against ``TieredSessionService``.

These are the tests of google-adk's ``tests/unittests/sessions/
test_session_service.py`` (2.x) that hold for any session service — those
parametrised over the service types, the database service's stale-writer
and state tests, and the in-memory service's listing, deletion and
re-delivery tests — with only the service swapped for
``TieredSessionService`` over each store configuration in ``KINDS``. Their
bodies and assertions are ADK's; a test that built its own in-memory or
SQLite service uses the fixture instead. This file holds the session, state
and listing tests; ``tests/test_google_adk_events.py`` the event tests.

Left out, because they inspect another backend's internals: SQL engine,
pool, URL and schema-version tests, the rollback spies, the ``FOR UPDATE``
lock tests, the app/user state rows deleted by SQL, the in-memory copy-depth
tests, the SQLite float-timestamp and Vertex AI tests. One behaviour differs
on purpose: events sharing a timestamp keep their append order (the
in-memory service's rule; the database service sorts them by id), see
``tests/test_google_adk_store.py``.

Async stores live on the test loop thread (``conftest.LoopThread``); sync
stores are reached through worker threads, as in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions

from tests.conftest import Harness, LoopThread
from tieredstore.integrations.google_adk import TieredSessionService

KINDS = [
    "async-tiered-memory-redis-pg",
    "tiered-memory-redis-pg",
    "async-redis",
    "async-tiered-memory-sqlite",
    "memory",
]
pytestmark = [
    pytest.mark.parametrize("harness", KINDS, indirect=True),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

Scenario = Callable[[TieredSessionService], Coroutine[Any, Any, None]]


@pytest.fixture
def session_service(harness: Harness) -> TieredSessionService:
    """The service over a new store (its own namespace) of the configuration under test."""
    store = harness.make()
    return TieredSessionService(getattr(store, "async_store", store))


def adk_test(scenario: Scenario) -> Callable[[TieredSessionService, LoopThread], None]:
    """An ADK test body (a coroutine of the service), run on the test loop."""

    def test(session_service: TieredSessionService, loop_thread: LoopThread) -> None:
        loop_thread.run(scenario(session_service))

    test.__name__ = scenario.__name__
    test.__doc__ = scenario.__doc__
    return test


@adk_test
async def test_get_empty_session(session_service: TieredSessionService) -> None:
    assert not await session_service.get_session(
        app_name="my_app", user_id="test_user", session_id="123"
    )


@adk_test
async def test_create_get_session(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    user_id = "test_user"
    state = {"key": "value"}

    session = await session_service.create_session(app_name=app_name, user_id=user_id, state=state)
    assert session.app_name == app_name
    assert session.user_id == user_id
    assert session.id
    assert session.state == state
    assert session.last_update_time <= datetime.now().astimezone(UTC).timestamp()

    got_session = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id=session.id
    )
    assert got_session == session
    assert got_session is not None
    assert got_session.last_update_time <= datetime.now().astimezone(UTC).timestamp()

    session_id = session.id
    await session_service.delete_session(app_name=app_name, user_id=user_id, session_id=session_id)

    assert (
        await session_service.get_session(app_name=app_name, user_id=user_id, session_id=session.id)
        is None
    )


@adk_test
async def test_create_and_list_sessions(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    user_id = "test_user"

    session_ids = ["session" + str(i) for i in range(5)]
    for session_id in session_ids:
        await session_service.create_session(
            app_name=app_name,
            user_id=user_id,
            session_id=session_id,
            state={"key": "value" + session_id},
        )

    list_sessions_response = await session_service.list_sessions(app_name=app_name, user_id=user_id)
    sessions = list_sessions_response.sessions
    assert len(sessions) == len(session_ids)
    assert {s.id for s in sessions} == set(session_ids)
    for session in sessions:
        assert session.state == {"key": "value" + session.id}


@adk_test
async def test_list_sessions_all_users(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    user_id_1 = "user1"
    user_id_2 = "user2"

    await session_service.create_session(
        app_name=app_name, user_id=user_id_1, session_id="session1a", state={"key": "value1a"}
    )
    await session_service.create_session(
        app_name=app_name, user_id=user_id_1, session_id="session1b", state={"key": "value1b"}
    )
    await session_service.create_session(
        app_name=app_name, user_id=user_id_2, session_id="session2a", state={"key": "value2a"}
    )

    # List sessions for user1 - should contain merged state
    sessions_1 = (
        await session_service.list_sessions(app_name=app_name, user_id=user_id_1)
    ).sessions
    assert len(sessions_1) == 2
    sessions_1_map = {s.id: s for s in sessions_1}
    assert sessions_1_map["session1a"].state == {"key": "value1a"}
    assert sessions_1_map["session1b"].state == {"key": "value1b"}

    # List sessions for user2 - should contain merged state
    sessions_2 = (
        await session_service.list_sessions(app_name=app_name, user_id=user_id_2)
    ).sessions
    assert len(sessions_2) == 1
    assert sessions_2[0].id == "session2a"
    assert sessions_2[0].state == {"key": "value2a"}

    # List sessions for all users - should contain merged state
    sessions_all = (await session_service.list_sessions(app_name=app_name, user_id=None)).sessions
    assert len(sessions_all) == 3
    sessions_all_map = {s.id: s for s in sessions_all}
    assert sessions_all_map["session1a"].state == {"key": "value1a"}
    assert sessions_all_map["session1b"].state == {"key": "value1b"}
    assert sessions_all_map["session2a"].state == {"key": "value2a"}


@adk_test
async def test_app_state_is_shared_by_all_users_of_app(
    session_service: TieredSessionService,
) -> None:
    app_name = "my_app"
    # User 1 creates a session, establishing app:k1
    session1 = await session_service.create_session(
        app_name=app_name, user_id="u1", session_id="s1", state={"app:k1": "v1"}
    )
    # User 1 appends an event to session1, establishing app:k2
    event = Event(
        invocation_id="inv1", author="user", actions=EventActions(state_delta={"app:k2": "v2"})
    )
    await session_service.append_event(session=session1, event=event)

    # User 2 creates a new session session2, it should see app:k1 and app:k2
    session2 = await session_service.create_session(
        app_name=app_name, user_id="u2", session_id="s2"
    )
    assert session2.state == {"app:k1": "v1", "app:k2": "v2"}

    # If we get session session1 again, it should also see both
    session1_got = await session_service.get_session(
        app_name=app_name, user_id="u1", session_id="s1"
    )
    assert session1_got is not None
    assert session1_got.state.get("app:k1") == "v1"
    assert session1_got.state.get("app:k2") == "v2"


@adk_test
async def test_user_state_is_shared_only_by_user_sessions(
    session_service: TieredSessionService,
) -> None:
    app_name = "my_app"
    # User 1 creates a session, establishing user:k1 for user 1
    session1 = await session_service.create_session(
        app_name=app_name, user_id="u1", session_id="s1", state={"user:k1": "v1"}
    )
    # User 1 appends an event to session1, establishing user:k2 for user 1
    event = Event(
        invocation_id="inv1", author="user", actions=EventActions(state_delta={"user:k2": "v2"})
    )
    await session_service.append_event(session=session1, event=event)

    # Another session for User 1 should see user:k1 and user:k2
    session1b = await session_service.create_session(
        app_name=app_name, user_id="u1", session_id="s1b"
    )
    assert session1b.state == {"user:k1": "v1", "user:k2": "v2"}

    # A session for User 2 should NOT see user:k1 or user:k2
    session2 = await session_service.create_session(
        app_name=app_name, user_id="u2", session_id="s2"
    )
    assert session2.state == {}


@adk_test
async def test_session_state_is_not_shared(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    # User 1 creates a session session1, establishing sk1 only for session1
    session1 = await session_service.create_session(
        app_name=app_name, user_id="u1", session_id="s1", state={"sk1": "v1"}
    )
    # User 1 appends an event to session1, establishing sk2 only for session1
    event = Event(
        invocation_id="inv1", author="user", actions=EventActions(state_delta={"sk2": "v2"})
    )
    await session_service.append_event(session=session1, event=event)

    # Getting session1 should show sk1 and sk2
    session1_got = await session_service.get_session(
        app_name=app_name, user_id="u1", session_id="s1"
    )
    assert session1_got is not None
    assert session1_got.state.get("sk1") == "v1"
    assert session1_got.state.get("sk2") == "v2"

    # Creating another session session1b for User 1 should NOT see sk1 or sk2
    session1b = await session_service.create_session(
        app_name=app_name, user_id="u1", session_id="s1b"
    )
    assert session1b.state == {}


@adk_test
async def test_temp_state_is_not_persisted_in_state_or_events(
    session_service: TieredSessionService,
) -> None:
    app_name = "my_app"
    user_id = "u1"
    session = await session_service.create_session(
        app_name=app_name, user_id=user_id, session_id="s1"
    )
    event = Event(
        invocation_id="inv1",
        author="user",
        actions=EventActions(state_delta={"temp:k1": "v1", "sk": "v2"}),
    )
    await session_service.append_event(session=session, event=event)

    # Temp state IS available in the in-memory session (same invocation)
    assert session.state.get("temp:k1") == "v1"
    assert session.state.get("sk") == "v2"

    # Check event as stored in session does not contain temp keys in state_delta
    assert "temp:k1" not in event.actions.state_delta
    assert event.actions.state_delta.get("sk") == "v2"

    # Refetch session and check state and event (ADK 1.x's form of this test)
    session_got = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id="s1"
    )
    assert session_got is not None
    assert session_got.state.get("sk") == "v2"
    assert "temp:k1" not in session_got.state
    assert "temp:k1" not in session_got.events[0].actions.state_delta
    assert session_got.events[0].actions.state_delta.get("sk") == "v2"


@adk_test
async def test_temp_state_visible_across_sequential_events(
    session_service: TieredSessionService,
) -> None:
    """Temp state set by one event should be readable before the next event.

    This simulates a SequentialAgent where agent-1 writes output_key='temp:out'
    and agent-2 needs to read it from session.state within the same invocation.
    """
    session = await session_service.create_session(
        app_name="my_app", user_id="u1", session_id="s_seq"
    )

    # Agent-1 writes temp state
    event1 = Event(
        invocation_id="inv1",
        author="agent1",
        actions=EventActions(state_delta={"temp:output": "result_from_a1"}),
    )
    await session_service.append_event(session=session, event=event1)

    # Agent-2 should be able to read temp state from the same session object
    assert session.state.get("temp:output") == "result_from_a1"

    # But the event delta should NOT contain the temp key (not persisted)
    assert "temp:output" not in event1.actions.state_delta


@adk_test
async def test_get_session_respects_user_id(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    # u1 creates session 's1' and adds an event
    session1 = await session_service.create_session(
        app_name=app_name, user_id="u1", session_id="s1"
    )
    event = Event(invocation_id="inv1", author="user")
    await session_service.append_event(session1, event)
    # u2 creates a session with the same session_id 's1'
    await session_service.create_session(app_name=app_name, user_id="u2", session_id="s1")
    # Check that getting s1 for u2 returns u2's session (with no events)
    # not u1's session.
    session2_got = await session_service.get_session(
        app_name=app_name, user_id="u2", session_id="s1"
    )
    assert session2_got is not None
    assert session2_got.user_id == "u2"
    assert len(session2_got.events) == 0


@adk_test
async def test_create_session_with_existing_id_raises_error(
    session_service: TieredSessionService,
) -> None:
    app_name = "my_app"
    user_id = "test_user"
    session_id = "existing_session"

    # Create the first session
    await session_service.create_session(app_name=app_name, user_id=user_id, session_id=session_id)

    # Attempt to create a session with the same ID
    with pytest.raises(AlreadyExistsError):
        await session_service.create_session(
            app_name=app_name, user_id=user_id, session_id=session_id
        )


@adk_test
async def test_concurrent_create_sessions(session_service: TieredSessionService) -> None:
    """Concurrent create_session calls all succeed and are retrievable."""
    num_concurrent = 5
    results = await asyncio.gather(
        *[
            session_service.create_session(
                app_name=f"app_{i}", user_id="user", session_id=f"sess_{i}"
            )
            for i in range(num_concurrent)
        ],
        return_exceptions=True,
    )
    for i, result in enumerate(results):
        assert not isinstance(result, BaseException), f"create_session #{i} raised {result!r}"
    for i in range(num_concurrent):
        session = await session_service.get_session(
            app_name=f"app_{i}", user_id="user", session_id=f"sess_{i}"
        )
        assert session is not None, f"Session sess_{i} not found after creation."


@adk_test
async def test_create_session_sequential_same_app_name(
    session_service: TieredSessionService,
) -> None:
    """Sequential create_session calls for the same app_name work correctly."""
    s1 = await session_service.create_session(app_name="shared", user_id="u1", session_id="s1")
    s2 = await session_service.create_session(app_name="shared", user_id="u2", session_id="s2")
    assert s1.app_name == "shared"
    assert s2.app_name == "shared"
    assert await session_service.get_session(app_name="shared", user_id="u1", session_id="s1")
    assert await session_service.get_session(app_name="shared", user_id="u2", session_id="s2")


@adk_test
async def test_get_user_state_returns_empty_dict_when_no_state_exists(
    session_service: TieredSessionService,
) -> None:
    state = await session_service.get_user_state(app_name="my_app", user_id="u1")
    assert not state


@adk_test
async def test_get_user_state_returns_state_written_via_append_event(
    session_service: TieredSessionService,
) -> None:
    session = await session_service.create_session(app_name="my_app", user_id="u1")
    await session_service.append_event(
        session,
        Event(
            author="system",
            actions=EventActions(state_delta={"user:profile": {"name": "Alice"}, "session_key": 1}),
        ),
    )

    state = await session_service.get_user_state(app_name="my_app", user_id="u1")

    assert state == {"profile": {"name": "Alice"}}
    assert "session_key" not in state


@adk_test
async def test_get_user_state_is_not_visible_across_users(
    session_service: TieredSessionService,
) -> None:
    session = await session_service.create_session(app_name="my_app", user_id="u1")
    await session_service.append_event(
        session,
        Event(author="system", actions=EventActions(state_delta={"user:secret": "only-for-u1"})),
    )
    assert not await session_service.get_user_state(app_name="my_app", user_id="u2")


@adk_test
async def test_get_user_state_is_not_visible_across_apps(
    session_service: TieredSessionService,
) -> None:
    session = await session_service.create_session(app_name="my_app", user_id="u1")
    await session_service.append_event(
        session,
        Event(author="system", actions=EventActions(state_delta={"user:data": "only-app-a"})),
    )
    assert not await session_service.get_user_state(app_name="other_app", user_id="u1")


@adk_test
async def test_get_user_state_available_before_session_is_created(
    session_service: TieredSessionService,
) -> None:
    first_session = await session_service.create_session(app_name="my_app", user_id="u1")
    await session_service.append_event(
        first_session,
        Event(author="system", actions=EventActions(state_delta={"user:ctx": {"v": 1}})),
    )
    state = await session_service.get_user_state(app_name="my_app", user_id="u1")
    assert state == {"ctx": {"v": 1}}


@adk_test
async def test_get_user_state_reflects_latest_write(
    session_service: TieredSessionService,
) -> None:
    session = await session_service.create_session(app_name="my_app", user_id="u1")
    for counter in (1, 2):
        await session_service.append_event(
            session,
            Event(author="system", actions=EventActions(state_delta={"user:counter": counter})),
        )
    state = await session_service.get_user_state(app_name="my_app", user_id="u1")
    assert state["counter"] == 2


@adk_test
async def test_delete_session_removes_only_the_targeted_users_session(
    session_service: TieredSessionService,
) -> None:
    """Deleting is scoped to one (app, user, session) triple."""
    app_name = "my_app"
    await session_service.create_session(app_name=app_name, user_id="u1", session_id="s1")
    await session_service.create_session(app_name=app_name, user_id="u2", session_id="s1")

    await session_service.delete_session(app_name=app_name, user_id="u1", session_id="s1")

    assert (
        await session_service.get_session(app_name=app_name, user_id="u1", session_id="s1") is None
    )
    other_user_session = await session_service.get_session(
        app_name=app_name, user_id="u2", session_id="s1"
    )
    assert other_user_session is not None
    assert other_user_session.id == "s1"


@adk_test
async def test_delete_unknown_session_is_a_noop(session_service: TieredSessionService) -> None:
    """Deleting something that is not stored leaves the store untouched."""
    app_name = "my_app"
    await session_service.create_session(app_name=app_name, user_id="u1", session_id="s1")

    await session_service.delete_session(
        app_name=app_name, user_id="u1", session_id="unknown_session"
    )
    await session_service.delete_session(app_name=app_name, user_id="unknown_user", session_id="s1")
    await session_service.delete_session(app_name="unknown_app", user_id="u1", session_id="s1")

    assert await session_service.get_session(app_name=app_name, user_id="u1", session_id="s1")


@adk_test
async def test_list_sessions_strips_events_and_merges_scoped_state(
    session_service: TieredSessionService,
) -> None:
    """Listed sessions carry merged app/user state but never their events."""
    app_name = "my_app"
    session = await session_service.create_session(
        app_name=app_name,
        user_id="u1",
        session_id="s1",
        state={"app:a": "av", "user:u": "uv", "sk": "sv", "temp:t": "tv"},
    )
    await session_service.append_event(
        session=session,
        event=Event(
            invocation_id="inv1", author="user", actions=EventActions(state_delta={"sk2": "sv2"})
        ),
    )

    response = await session_service.list_sessions(app_name=app_name, user_id="u1")

    assert [s.id for s in response.sessions] == ["s1"]
    listed = response.sessions[0]
    # Events are deliberately dropped from the listing.
    assert listed.events == []
    # app: and user: values are merged back in under their prefixes, session
    # state is kept as-is, and temp: state is never stored.
    assert listed.state == {"app:a": "av", "user:u": "uv", "sk": "sv", "sk2": "sv2"}


@adk_test
async def test_list_sessions_unknown_app_or_user_returns_empty_response(
    session_service: TieredSessionService,
) -> None:
    """Listing an unknown app or user yields a response with no sessions."""
    await session_service.create_session(app_name="my_app", user_id="u1", session_id="s1")

    assert (await session_service.list_sessions(app_name="unknown_app")).sessions == []
    assert (
        await session_service.list_sessions(app_name="my_app", user_id="unknown_user")
    ).sessions == []
    assert [s.id for s in (await session_service.list_sessions(app_name="my_app")).sessions] == [
        "s1"
    ]
