"""Google ADK's own session-service tests of events, against ``TieredSessionService``.

The event half of ADK's session-service suite: appending (bytes, every
field, update times), stale writers, ``GetSessionConfig``, partial events,
re-delivery and temp state. See ``tests/test_google_adk.py`` for where the
tests come from and what was left out.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from unittest import mock

import pytest
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

from tests.conftest import Harness, LoopThread
from tests.test_google_adk import KINDS, adk_test
from tieredstore.integrations.google_adk import StaleSessionError, TieredSessionService

pytestmark = [
    pytest.mark.parametrize("harness", KINDS, indirect=True),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture
def session_service(harness: Harness) -> TieredSessionService:
    """The service over a new store (its own namespace) of the configuration under test."""
    store = harness.make()
    return TieredSessionService(getattr(store, "async_store", store))


@adk_test
async def test_append_event_bytes(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    user_id = "user"

    session = await session_service.create_session(app_name=app_name, user_id=user_id)

    test_content = types.Content(
        role="user",
        parts=[types.Part.from_bytes(data=b"test_image_data", mime_type="image/png")],
    )
    test_grounding_metadata = types.GroundingMetadata(
        search_entry_point=types.SearchEntryPoint(sdk_blob=b"test_sdk_blob")
    )
    event = Event(
        invocation_id="invocation",
        author="user",
        content=test_content,
        grounding_metadata=test_grounding_metadata,
    )
    await session_service.append_event(session=session, event=event)

    assert session.events[0].content == test_content

    got = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id=session.id
    )
    assert got is not None
    events = got.events
    assert len(events) == 1
    assert events[0].content == test_content
    assert events[0].grounding_metadata == test_grounding_metadata


@adk_test
async def test_append_event_complete(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    user_id = "user"

    session = await session_service.create_session(app_name=app_name, user_id=user_id)
    event = Event(
        invocation_id="invocation",
        author="user",
        content=types.Content(role="user", parts=[types.Part(text="test_text")]),
        turn_complete=True,
        partial=False,
        actions=EventActions(artifact_delta={"file": 0}, transfer_to_agent="agent", escalate=True),
        long_running_tool_ids={"tool1"},
        error_code="error_code",
        error_message="error_message",
        interrupted=True,
        grounding_metadata=types.GroundingMetadata(web_search_queries=["query1"]),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1, candidates_token_count=1, total_token_count=2
        ),
        citation_metadata=types.CitationMetadata(),
        custom_metadata={"custom_key": "custom_value"},
        timestamp=1700000000.123,
        input_transcription=types.Transcription(text="input transcription", finished=True),
        output_transcription=types.Transcription(text="output transcription", finished=True),
    )
    await session_service.append_event(session=session, event=event)

    assert (
        await session_service.get_session(app_name=app_name, user_id=user_id, session_id=session.id)
        == session
    )


@adk_test
async def test_session_last_update_time_updates_on_event(
    session_service: TieredSessionService,
) -> None:
    app_name = "my_app"
    user_id = "user"

    session = await session_service.create_session(app_name=app_name, user_id=user_id)
    original_update_time = session.last_update_time

    event_timestamp = original_update_time + 10
    event = Event(invocation_id="invocation", author="user", timestamp=event_timestamp)
    await session_service.append_event(session=session, event=event)

    assert session.last_update_time == pytest.approx(event_timestamp, abs=1e-6)

    refreshed_session = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id=session.id
    )
    assert refreshed_session is not None
    assert refreshed_session.last_update_time == pytest.approx(event_timestamp, abs=1e-6)
    assert refreshed_session.last_update_time > original_update_time


@adk_test
async def test_append_event_to_stale_session(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    user_id = "user"
    current_time = datetime.now().astimezone(UTC).timestamp()

    original_session = await session_service.create_session(app_name=app_name, user_id=user_id)
    event1 = Event(
        invocation_id="inv1",
        author="user",
        timestamp=current_time + 1,
        actions=EventActions(state_delta={"sk1": "v1"}),
    )
    await session_service.append_event(original_session, event1)

    updated_session = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id=original_session.id
    )
    assert updated_session is not None
    event2 = Event(
        invocation_id="inv2",
        author="user",
        timestamp=current_time + 2,
        actions=EventActions(state_delta={"sk2": "v2"}),
    )
    await session_service.append_event(updated_session, event2)

    # original_session is now stale
    assert original_session.last_update_time < updated_session.last_update_time
    assert len(original_session.events) == 1
    assert "sk2" not in original_session.state

    # Appending another event to stale original_session should be rejected.
    event3 = Event(
        invocation_id="inv3",
        author="user",
        timestamp=current_time + 3,
        actions=EventActions(state_delta={"sk3": "v3"}),
    )
    with pytest.raises(StaleSessionError, match="modified in storage"):
        await session_service.append_event(original_session, event3)

    # If we fetch session from DB, it should only contain the committed events.
    session_final = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id=original_session.id
    )
    assert session_final is not None
    assert len(session_final.events) == 2
    assert session_final.state.get("sk1") == "v1"
    assert session_final.state.get("sk2") == "v2"
    assert session_final.state.get("sk3") is None
    assert [e.invocation_id for e in session_final.events] == ["inv1", "inv2"]


@adk_test
async def test_append_event_same_timestamp_single_writer_not_stale(
    session_service: TieredSessionService,
) -> None:
    """A single writer must not be rejected when two events share a timestamp."""
    same_timestamp = datetime.now().astimezone(UTC).timestamp()

    session = await session_service.create_session(app_name="my_app", user_id="user")
    event1 = Event(invocation_id="inv1", author="user", timestamp=same_timestamp)
    await session_service.append_event(session, event1)

    event2 = Event(
        invocation_id="inv2",
        author="user",
        timestamp=same_timestamp,
        actions=EventActions(state_delta={"sk1": "v1"}),
    )
    await session_service.append_event(session, event2)

    event3 = Event(invocation_id="inv3", author="user", timestamp=same_timestamp + 1)
    # The same writer appending a third event must not be rejected.
    await session_service.append_event(session, event3)

    assert len(session.events) == 3


@adk_test
async def test_append_event_uses_typed_stale_session_error(
    session_service: TieredSessionService,
) -> None:
    """The stale-writer contract: ADK's typed error, still a ValueError."""
    session = await session_service.create_session(app_name="app", user_id="user")
    stale_session = session.model_copy(deep=True)

    await session_service.append_event(
        session,
        Event(invocation_id="winner", author="user", timestamp=session.last_update_time + 1),
    )

    with pytest.raises(StaleSessionError) as error:
        await session_service.append_event(
            stale_session,
            Event(invocation_id="stale", author="user", timestamp=session.last_update_time + 1),
        )
    assert isinstance(error.value, ValueError)


@adk_test
async def test_append_event_concurrent_stale_sessions_reject_stale_writer(
    session_service: TieredSessionService,
) -> None:
    app_name = "my_app"
    user_id = "user"
    session = await session_service.create_session(app_name=app_name, user_id=user_id)

    iteration_count = 8
    for i in range(iteration_count):
        latest_session = await session_service.get_session(
            app_name=app_name, user_id=user_id, session_id=session.id
        )
        assert latest_session is not None
        stale_session_1 = latest_session.model_copy(deep=True)
        stale_session_2 = latest_session.model_copy(deep=True)
        base_timestamp = latest_session.last_update_time + 10.0
        event_1 = Event(
            invocation_id=f"inv{i}-1",
            author="user",
            timestamp=base_timestamp + 1.0,
            actions=EventActions(state_delta={f"sk{i}-1": f"v{i}-1"}),
        )
        event_2 = Event(
            invocation_id=f"inv{i}-2",
            author="user",
            timestamp=base_timestamp + 2.0,
            actions=EventActions(state_delta={f"sk{i}-2": f"v{i}-2"}),
        )

        results = await asyncio.gather(
            session_service.append_event(stale_session_1, event_1),
            session_service.append_event(stale_session_2, event_2),
            return_exceptions=True,
        )
        errors = [result for result in results if isinstance(result, Exception)]
        successes = [result for result in results if not isinstance(result, Exception)]
        assert len(successes) == 1
        assert len(errors) == 1
        assert isinstance(errors[0], ValueError)
        assert "modified in storage" in str(errors[0])

    session_final = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id=session.id
    )
    assert session_final is not None

    for i in range(iteration_count):
        event_values = {
            session_final.state.get(f"sk{i}-1"),
            session_final.state.get(f"sk{i}-2"),
        }
        assert event_values & {f"v{i}-1", f"v{i}-2"}
        assert None in event_values
    assert len(session_final.events) == iteration_count


@adk_test
async def test_append_event_allows_timestamp_drift_for_current_session(
    session_service: TieredSessionService,
) -> None:
    session = await session_service.create_session(
        app_name="my_app", user_id="user", session_id="s1"
    )
    event1 = Event(invocation_id="inv1", author="user", timestamp=session.last_update_time + 10)
    await session_service.append_event(session, event1)

    # Simulate a float round-trip mismatch without changing the persisted
    # session revision.
    session.last_update_time -= 0.0001

    event2 = Event(invocation_id="inv2", author="user", timestamp=event1.timestamp + 10)
    await session_service.append_event(session, event2)

    refreshed_session = await session_service.get_session(
        app_name="my_app", user_id="user", session_id=session.id
    )
    assert refreshed_session is not None
    assert [event.invocation_id for event in refreshed_session.events] == ["inv1", "inv2"]


@adk_test
async def test_append_event_allows_markerless_current_session(
    session_service: TieredSessionService,
) -> None:
    session = await session_service.create_session(
        app_name="my_app", user_id="user", session_id="s1"
    )
    event1 = Event(invocation_id="inv1", author="user", timestamp=session.last_update_time + 10)
    await session_service.append_event(session, event1)

    session._storage_update_marker = None
    session.last_update_time -= 0.0001

    event2 = Event(invocation_id="inv2", author="user", timestamp=event1.timestamp + 10)
    await session_service.append_event(session, event2)

    refreshed_session = await session_service.get_session(
        app_name="my_app", user_id="user", session_id=session.id
    )
    assert refreshed_session is not None
    assert [event.invocation_id for event in refreshed_session.events] == ["inv1", "inv2"]


@adk_test
async def test_get_session_with_config(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    user_id = "user"

    num_test_events = 5
    session = await session_service.create_session(app_name=app_name, user_id=user_id)
    for i in range(1, num_test_events + 1):
        event = Event(author="user", timestamp=i)
        await session_service.append_event(session, event)

    async def get(config: GetSessionConfig | None = None) -> list[Event]:
        got = await session_service.get_session(
            app_name=app_name, user_id=user_id, session_id=session.id, config=config
        )
        assert got is not None
        return got.events

    # No config, expect all events to be returned.
    events = await get()
    assert len(events) == num_test_events

    # Only expect the most recent 3 events.
    num_recent_events = 3
    events = await get(GetSessionConfig(num_recent_events=num_recent_events))
    assert len(events) == num_recent_events
    assert events[0].timestamp == num_test_events - num_recent_events + 1

    # Only expect events after timestamp 4.0 (inclusive), i.e., 2 events.
    after_timestamp = 4.0
    events = await get(GetSessionConfig(after_timestamp=after_timestamp))
    assert len(events) == num_test_events - after_timestamp + 1
    assert events[0].timestamp == after_timestamp

    # Expect no events if none are > after_timestamp.
    way_after_timestamp = num_test_events * 10
    assert not await get(GetSessionConfig(after_timestamp=way_after_timestamp))

    # Both filters applied, i.e., of 3 most recent events, only 2 are after
    # timestamp 4.0, so expect 2 events.
    events = await get(
        GetSessionConfig(after_timestamp=after_timestamp, num_recent_events=num_recent_events)
    )
    assert len(events) == num_test_events - after_timestamp + 1


@adk_test
async def test_partial_events_are_not_persisted(session_service: TieredSessionService) -> None:
    app_name = "my_app"
    user_id = "user"
    session = await session_service.create_session(app_name=app_name, user_id=user_id)
    event = Event(author="user", partial=True)
    await session_service.append_event(session, event)

    # Check in-memory session
    assert len(session.events) == 0
    # Check persisted session
    session_got = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id=session.id
    )
    assert session_got is not None
    assert len(session_got.events) == 0


@pytest.fixture
def local_timezone_with_dst() -> Iterator[None]:
    """Runs the test in a local timezone that repeats an hour every autumn."""
    if not hasattr(time, "tzset"):
        yield
        return
    original_tz = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if original_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = original_tz
        time.tzset()


def test_get_session_keeps_exact_epoch_across_a_repeated_local_hour(
    session_service: TieredSessionService,
    loop_thread: LoopThread,
    local_timezone_with_dst: None,
) -> None:
    """Events written during a repeated local hour read back at the same instant."""
    repeated_hour_epochs = [1730613600.0, 1730615400.0]

    async def scenario() -> None:
        session = await session_service.create_session(app_name="my_app", user_id="user")
        for epoch in repeated_hour_epochs:
            await session_service.append_event(session, Event(author="user", timestamp=epoch))
        retrieved = await session_service.get_session(
            app_name="my_app", user_id="user", session_id=session.id
        )
        assert retrieved is not None
        assert [event.timestamp for event in retrieved.events] == repeated_hour_epochs

    loop_thread.run(scenario())


@adk_test
async def test_append_event_is_idempotent_for_same_event_id(
    session_service: TieredSessionService,
) -> None:
    """Re-delivering an event must not duplicate entries or double-apply state."""
    app_name = "test_app"
    user_id = "user_dup"
    session = await session_service.create_session(
        app_name=app_name, user_id=user_id, session_id="session_dup"
    )

    event = Event(
        invocation_id="inv_dup",
        author="user",
        actions=EventActions(state_delta={"session:counter": 1}),
    )

    # Re-deliver as the same object and again as an equal copy.
    await session_service.append_event(session=session, event=event)
    await session_service.append_event(session=session, event=event)
    await session_service.append_event(session=session, event=event.model_copy(deep=True))

    retrieved = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id="session_dup"
    )
    assert retrieved is not None
    matching = [e for e in retrieved.events if e.id == event.id]
    assert len(matching) == 1, f"Expected 1 occurrence of event {event.id!r}, got {len(matching)}"
    assert retrieved.state.get("session:counter") == 1


@adk_test
async def test_append_different_events_not_deduplicated(
    session_service: TieredSessionService,
) -> None:
    """Distinct events must both be stored, even when they share an event id."""
    app_name = "test_app"
    user_id = "user_multi"
    session = await session_service.create_session(
        app_name=app_name, user_id=user_id, session_id="session_multi"
    )

    shared_id = "shared-event-id"
    e1 = Event(id=shared_id, invocation_id="inv_a", author="user")
    e2 = Event(id=shared_id, invocation_id="inv_b", author="agent")

    await session_service.append_event(session=session, event=e1)
    await session_service.append_event(session=session, event=e2)

    retrieved = await session_service.get_session(
        app_name=app_name, user_id=user_id, session_id="session_multi"
    )
    assert retrieved is not None
    assert len(retrieved.events) == 2, f"Expected 2 distinct events, got {len(retrieved.events)}"
    assert [e.author for e in retrieved.events] == ["user", "agent"]


@adk_test
async def test_append_event_applies_and_trims_temp_state_once(
    session_service: TieredSessionService,
) -> None:
    """Persistent session services must not apply or trim temp state twice."""
    session = await session_service.create_session(
        app_name="test_app", user_id="user_1", session_id="session_1"
    )
    event = Event(
        invocation_id="inv_1",
        author="agent",
        actions=EventActions(state_delta={"temp:scratch": "ephemeral", "persisted": "val"}),
    )
    with (
        mock.patch.object(
            session_service, "_apply_temp_state", wraps=session_service._apply_temp_state
        ) as spy_apply,
        mock.patch.object(
            session_service,
            "_trim_temp_delta_state",
            wraps=session_service._trim_temp_delta_state,
        ) as spy_trim,
    ):
        await session_service.append_event(session=session, event=event)
        assert spy_apply.call_count == 1
        assert spy_trim.call_count == 1
    assert session.state.get("temp:scratch") == "ephemeral"
    assert session.state.get("persisted") == "val"
