"""``TieredSessionService`` on real stores: its layout, and what ADK's suite cannot see.

The record layout and id escaping, exact event round trips, trimmed hot
windows (read back from the archive), ``after_timestamp`` over many events,
two processes on one session, TTLs, app-wide listing, the ADK ``Runner``
with a scripted model and a function tool (no network), and ``from_url``.
ADK's own session-service tests are in ``tests/test_google_adk.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from google.adk.agents import LlmAgent
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions.base_session_service import GetSessionConfig
from google.adk.tools.tool_context import ToolContext
from google.genai import types
from pydantic import Field

from tests.conftest import REDIS_URL, Harness, LoopThread
from tieredstore import Limits
from tieredstore.core import check_session_id
from tieredstore.integrations.google_adk import (
    StaleSessionError,
    TieredSessionService,
    app_record_id,
    session_record_id,
    user_record_id,
)
from tieredstore.integrations.shared import shared_stores

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

STORES = ["async-tiered-memory-redis-pg", "tiered-memory-redis-pg", "async-redis", "memory"]


def real(store: Any) -> Any:
    """The store itself (async stores come wrapped in a SyncFacade)."""
    return getattr(store, "async_store", store)


def event(n: float, **fields: Any) -> Event:
    return Event(invocation_id=f"inv{n}", author="user", timestamp=n, **fields)


# -- layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_records_layout(harness: Harness, loop_thread: LoopThread) -> None:
    store = harness.make()
    service = TieredSessionService(store)
    state = {"app:theme": "dark", "user:lang": "fr", "topic": "weather", "temp:t": 1}

    async def scenario() -> str:
        session = await service.create_session(app_name="shop", user_id="u1", state=state)
        await service.append_event(
            session,
            event(1.5, actions=EventActions(state_delta={"n": None, "user:lang": "de"})),
        )
        reply = Event(invocation_id="inv2", author="assistant-agent", timestamp=2.0)
        await service.append_event(session, reply)
        return session.id

    sid = loop_thread.run(scenario())
    rid = session_record_id("shop", "u1", sid)
    record = store.get(rid)
    assert rid == f"adk.s/shop/u1/{sid}"
    assert record.user_id == user_record_id("shop", "u1") == "adk.u/shop/u1"
    assert record.metadata["adk_state"] == {"topic": "weather"}
    assert record.metadata["adk"]["app_name"] == "shop" and record.metadata["adk"]["id"] == sid
    assert [m["role"] for m in record.messages] == ["user", "assistant"]
    assert [m["adk_n"] for m in record.messages] == [1, 2]
    assert record.messages[0]["adk_state"] == {"topic": "weather", "n": None}
    assert record.messages[1]["adk_state"] == record.messages[0]["adk_state"]
    assert record.messages[0]["adk_event"]["actions"]["state_delta"] == {
        "n": None,
        "user:lang": "de",
    }
    assert record.version == 3  # created, then one atomic append per event
    assert store.get("adk.u/shop/u1").metadata == {"lang": ["de"]}
    app = store.get(app_record_id("shop"))
    assert app.metadata == {"theme": ["dark"]}
    assert [dict(m) for m in app.messages] == [{"role": "system", "adk_user": "u1"}]
    assert "temp:t" not in json.dumps([record.metadata, *record.messages])


NAMES = [
    ("a/b", "c", "s"),
    ("a", "b/c", "s"),
    ("a", "b", "c/s"),
    ("app with spaces", "user\tid", "sess\nion"),
    ("%2F", "{user}", "[*?\\]"),
    ("~", "ü—😀", "\u2028"),
    ("x" * 300, "y" * 300, "z" * 300),
    ("x" * 299, "y" * 300, "z" * 300),
    ("", "", "s0"),
]


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_names_are_escaped_and_never_collide(harness: Harness, loop_thread: LoopThread) -> None:
    service = TieredSessionService(harness.make())
    rids = [session_record_id(*names) for names in NAMES]
    assert len(set(rids)) == len(rids)
    for rid in rids:
        check_session_id(rid, Limits())
    assert len(session_record_id("x" * 300, "y" * 300, "z" * 300)) < 120

    async def scenario() -> None:
        for i, (app, user, sid) in enumerate(NAMES):
            await service.create_session(app_name=app, user_id=user, session_id=sid, state={"i": i})
        for i, (app, user, sid) in enumerate(NAMES):
            got = await service.get_session(app_name=app, user_id=user, session_id=sid)
            assert got is not None
            assert (got.app_name, got.user_id, got.id, got.state) == (app, user, sid, {"i": i})
            listed = (await service.list_sessions(app_name=app)).sessions
            assert {(s.user_id, s.id) for s in listed} == {(u, s) for a, u, s in NAMES if a == app}

    loop_thread.run(scenario())


RICH_EVENT = Event(
    invocation_id="inv-rich",
    author="weather",
    branch="root.weather",
    content=types.Content(
        role="model",
        parts=[
            types.Part(text="Let me check."),
            types.Part(
                function_call=types.FunctionCall(
                    id="call-1", name="get_weather", args={"city": "Paris", "days": [1, 2]}
                )
            ),
            types.Part.from_bytes(data=b"\x00\xff\x10png", mime_type="image/png"),
        ],
    ),
    actions=EventActions(
        state_delta={"nested": {"a": [1, None, {"b": 2.5}]}, "none": None, "app:k": True},
        artifact_delta={"report.pdf": 3},
        transfer_to_agent="billing_agent",
    ),
    long_running_tool_ids={"call-1", "call-2"},
    custom_metadata={"trace": {"ids": [1, 2, 3]}, "unicode": "ü—😀"},
    usage_metadata=types.GenerateContentResponseUsageMetadata(
        prompt_token_count=10, candidates_token_count=5, total_token_count=15
    ),
    timestamp=1700000000.123456,
)


@pytest.mark.parametrize("harness", STORES, indirect=True)
def test_events_round_trip_exactly(harness: Harness, loop_thread: LoopThread) -> None:
    store = real(harness.make())
    service = TieredSessionService(store)
    response = Event(
        invocation_id="inv-rich",
        author="weather",
        content=types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(
                        id="call-1", name="get_weather", response={"temp_c": 21, "rain": None}
                    )
                )
            ],
        ),
        timestamp=1700000001.5,
    )

    async def scenario() -> None:
        session = await service.create_session(app_name="app", user_id="u")
        sent = [RICH_EVENT.model_copy(deep=True), response.model_copy(deep=True)]
        for each in sent:
            await service.append_event(session, each)
        got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
        assert got is not None
        assert got.events == sent
        assert [e.model_dump(mode="json") for e in got.events] == [
            e.model_dump(mode="json") for e in sent
        ]
        assert got == session

    loop_thread.run(scenario())


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_tied_timestamps_keep_append_order(harness: Harness, loop_thread: LoopThread) -> None:
    service = TieredSessionService(harness.make())

    async def scenario() -> list[str]:
        session = await service.create_session(app_name="app", user_id="u")
        for event_id in ["event_z", "event_m", "event_a"]:
            await service.append_event(session, Event(author="user", id=event_id, timestamp=100))
        got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
        assert got is not None
        return [e.id for e in got.events]

    assert loop_thread.run(scenario()) == ["event_z", "event_m", "event_a"]


# -- windows, trimming -------------------------------------------------------------------


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_after_timestamp_reads_growing_windows(harness: Harness, loop_thread: LoopThread) -> None:
    service = TieredSessionService(harness.make())
    count = 300

    async def scenario() -> None:
        session = await service.create_session(app_name="app", user_id="u")
        for n in range(1, count + 1):
            await service.append_event(session, event(n))

        async def timestamps(**config: Any) -> list[float]:
            config_ = GetSessionConfig(**config)
            got = await service.get_session(
                app_name="app", user_id="u", session_id=session.id, config=config_
            )
            assert got is not None
            return [e.timestamp for e in got.events]

        assert await timestamps(after_timestamp=10) == list(range(10, count + 1))
        assert await timestamps(after_timestamp=299.5) == [300]
        assert await timestamps(after_timestamp=0) == list(range(1, count + 1))
        assert await timestamps(after_timestamp=1000) == []
        assert await timestamps(after_timestamp=250, num_recent_events=20) == list(range(281, 301))
        assert await timestamps(num_recent_events=0) == []

    loop_thread.run(scenario())


@pytest.mark.parametrize(
    "harness", ["tiered-memory-redis-pg", "async-tiered-memory-redis-pg"], indirect=True
)
def test_trimmed_hot_window_reads_the_archive(harness: Harness, loop_thread: LoopThread) -> None:
    store = real(harness.make(max_messages=4))
    service = TieredSessionService(store)

    async def scenario() -> None:
        session = await service.create_session(app_name="app", user_id="u", state={"n": 0})
        for n in range(1, 13):
            await service.append_event(
                session, event(n, actions=EventActions(state_delta={"n": n, f"k{n}": n}))
            )
        rid = session_record_id("app", "u", session.id)
        hot = store.load(rid)
        assert len(await hot if asyncio.iscoroutine(hot) else hot) == 4

        got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
        assert got is not None
        assert [e.timestamp for e in got.events] == list(range(1, 13))
        assert got.state == {"n": 12, **{f"k{n}": n for n in range(1, 13)}}
        assert got == session

        async def timestamps(**config: Any) -> list[float]:
            config_ = GetSessionConfig(**config)
            got = await service.get_session(
                app_name="app", user_id="u", session_id=session.id, config=config_
            )
            assert got is not None
            return [e.timestamp for e in got.events]

        assert await timestamps(num_recent_events=3) == [10, 11, 12]
        assert await timestamps(num_recent_events=8) == list(range(5, 13))
        assert await timestamps(after_timestamp=2) == list(range(2, 13))
        # The read session appends on.
        await service.append_event(got, event(13))
        assert (await timestamps())[-2:] == [12, 13]

    loop_thread.run(scenario())


@pytest.mark.parametrize("harness", ["redis"], indirect=True)
def test_a_trimming_store_keeps_the_state(harness: Harness, loop_thread: LoopThread) -> None:
    service = TieredSessionService(harness.make(max_messages=3))

    async def scenario() -> None:
        session = await service.create_session(app_name="app", user_id="u")
        for n in range(1, 11):
            delta = {f"k{n}": n} if n % 2 else {}
            await service.append_event(session, event(n, actions=EventActions(state_delta=delta)))
        got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
        assert got is not None
        assert [e.timestamp for e in got.events] == [8, 9, 10]  # the store dropped the rest
        assert got.state == {f"k{n}": n for n in (1, 3, 5, 7, 9)}
        listed = (await service.list_sessions(app_name="app", user_id="u")).sessions
        assert listed[0].state == got.state
        await service.append_event(got, event(11))

    loop_thread.run(scenario())


# -- concurrency and lifecycle -----------------------------------------------------------


@pytest.mark.parametrize(
    "harness", ["tiered-memory-redis-pg", "async-tiered-memory-redis-pg"], indirect=True
)
def test_two_processes_share_a_session(harness: Harness, loop_thread: LoopThread) -> None:
    """Two stores (two processes' memory tiers) on one namespace: appends and staleness."""
    first = TieredSessionService(real(harness.make()))
    second = TieredSessionService(real(harness.make()))

    async def read_when_current(service: TieredSessionService, events: int) -> Any:
        """The session once ``service`` sees ``events`` events: another process's
        memory tier catches up when the write's invalidation arrives (bounded wait)."""
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            got = await service.get_session(app_name="app", user_id="u", session_id="s")
            assert got is not None
            if len(got.events) >= events or asyncio.get_running_loop().time() > deadline:
                return got
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        session = await first.create_session(app_name="app", user_id="u", session_id="s")
        await first.append_event(session, event(1, actions=EventActions(state_delta={"a": 1})))
        theirs = await read_when_current(second, 1)
        assert theirs.state == {"a": 1}
        await second.append_event(theirs, event(2, actions=EventActions(state_delta={"b": 2})))
        with pytest.raises(StaleSessionError):
            await first.append_event(session, event(3))
        # A current session object is accepted by either process.
        await first.append_event(theirs, event(3, actions=EventActions(state_delta={"c": 3})))
        for service in (first, second):
            got = await read_when_current(service, 3)
            assert [e.timestamp for e in got.events] == [1, 2, 3]
            assert got.state == {"a": 1, "b": 2, "c": 3}

    loop_thread.run(scenario())


@pytest.mark.parametrize("harness", STORES, indirect=True)
def test_concurrent_appends_through_one_session(harness: Harness, loop_thread: LoopThread) -> None:
    """Parallel agents share one ``Session``: their appends follow each other."""
    service = TieredSessionService(real(harness.make()))

    async def scenario() -> None:
        session = await service.create_session(app_name="app", user_id="u")
        branches = [
            event(n, actions=EventActions(state_delta={f"k{n}": n, "user:last": n}))
            for n in range(1, 9)
        ]
        await asyncio.gather(*(service.append_event(session, each) for each in branches))
        got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
        assert got is not None
        assert sorted(e.timestamp for e in got.events) == list(range(1, 9))
        assert {k: v for k, v in got.state.items() if k.startswith("k")} == {
            f"k{n}": n for n in range(1, 9)
        }
        assert got.events == session.events

    loop_thread.run(scenario())


@pytest.mark.parametrize("harness", STORES, indirect=True)
def test_a_recreated_session_refuses_old_objects(harness: Harness, loop_thread: LoopThread) -> None:
    service = TieredSessionService(real(harness.make()))

    async def scenario() -> None:
        old = await service.create_session(app_name="app", user_id="u", session_id="s")
        await service.delete_session(app_name="app", user_id="u", session_id="s")
        with pytest.raises(SessionNotFoundError):
            await service.append_event(old, event(1))
        await service.create_session(app_name="app", user_id="u", session_id="s")
        with pytest.raises(StaleSessionError):  # same version number, another generation
            await service.append_event(old, event(1))
        got = await service.get_session(app_name="app", user_id="u", session_id="s")
        assert got is not None and got.events == []

    loop_thread.run(scenario())


@pytest.mark.parametrize("harness", ["memory"], indirect=True)
def test_session_ttl(harness: Harness, loop_thread: LoopThread) -> None:
    service = TieredSessionService(harness.make(), ttl=60)

    async def scenario(step: str) -> Any:
        if step == "write":
            session = await service.create_session(
                app_name="app", user_id="u", session_id="s", state={"user:k": 1}
            )
            harness.advance(50)
            await service.append_event(session, event(1))  # every write sets the TTL
            return None
        if step == "alive":
            return await service.get_session(app_name="app", user_id="u", session_id="s")
        return (
            await service.get_session(app_name="app", user_id="u", session_id="s"),
            (await service.list_sessions(app_name="app")).sessions,
            await service.get_user_state(app_name="app", user_id="u"),
        )

    loop_thread.run(scenario("write"))
    harness.advance(50)
    assert loop_thread.run(scenario("alive")) is not None
    harness.advance(11)
    assert loop_thread.run(scenario("gone")) == (None, [], {"k": 1})


@pytest.mark.parametrize("harness", ["memory", "async-tiered-memory-redis-pg"], indirect=True)
def test_app_wide_listing(harness: Harness, loop_thread: LoopThread) -> None:
    service = TieredSessionService(real(harness.make()))
    users = [f"user-{i:02d}" for i in range(25)]

    async def scenario() -> None:
        stamp = 1000.0
        for user in users:
            for sid in ("a", "b"):
                session = await service.create_session(app_name="app", user_id=user, session_id=sid)
                stamp += 1
                await service.append_event(session, event(stamp))
        await service.create_session(app_name="other", user_id="user-00", session_id="x")
        listed = (await service.list_sessions(app_name="app")).sessions
        assert [(s.user_id, s.id) for s in listed] == [(u, sid) for u in users for sid in "ab"]
        assert [s.last_update_time for s in listed] == [1001.0 + i for i in range(50)]
        for sid in ("a", "b"):
            await service.delete_session(app_name="app", user_id="user-03", session_id=sid)
        listed = (await service.list_sessions(app_name="app")).sessions
        assert len(listed) == 48 and "user-03" not in {s.user_id for s in listed}
        other = (await service.list_sessions(app_name="other")).sessions
        assert [(s.user_id, s.id) for s in other] == [("user-00", "x")]

    loop_thread.run(scenario())


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_a_sync_store_serves_every_loop(harness: Harness) -> None:
    service = TieredSessionService(harness.make())

    async def write() -> None:
        session = await service.create_session(app_name="app", user_id="u", session_id="s")
        await service.append_event(session, event(1))

    async def read() -> int:
        got = await service.get_session(app_name="app", user_id="u", session_id="s")
        assert got is not None
        return len(got.events)

    asyncio.run(write())
    assert asyncio.run(read()) == 1


def test_from_url_shares_one_store(redis_prefix: str, pg_url: str) -> None:
    settings: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "database_url": pg_url,
        "namespace": "adk-from-url",
        "prefix": redis_prefix,
    }
    before = shared_stores.open_count()
    first = TieredSessionService.from_url(**settings)
    second = TieredSessionService.from_url(**settings, ttl=3600)
    assert first.store is second.store and second.ttl == 3600

    async def scenario() -> None:
        async with first:
            session = await first.create_session(app_name="app", user_id="u")
            await first.append_event(session, event(1))
            got = await second.get_session(app_name="app", user_id="u", session_id=session.id)
            assert got == session
            await second.delete_session(app_name="app", user_id="u", session_id=session.id)
        await second.close()
        await second.close()  # idempotent

    asyncio.run(scenario())
    assert shared_stores.open_count() == before


# -- the ADK runner ----------------------------------------------------------------------


class ScriptedLlm(BaseLlm):
    """A model without network: asks for the weather tool, then answers from its result."""

    requests: list[Any] = Field(default_factory=list)

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.requests.append(llm_request.model_copy(deep=True))
        last = llm_request.contents[-1]
        if any(part.function_response for part in last.parts or []):
            parts = [types.Part(text="Sunny, 21 C.")]
        else:
            call = types.FunctionCall(id="call-1", name="get_weather", args={"city": "Paris"})
            parts = [types.Part(function_call=call)]
        yield LlmResponse(content=types.Content(role="model", parts=parts))


def get_weather(city: str, tool_context: ToolContext) -> dict[str, Any]:
    """The weather in a city."""
    tool_context.state["user:last_city"] = city
    tool_context.state["app:calls"] = tool_context.state.get("app:calls", 0) + 1
    tool_context.state["temp:scratch"] = "not stored"
    return {"city": city, "temp_c": 21}


def weather_runner(service: TieredSessionService) -> tuple[Runner, ScriptedLlm]:
    llm = ScriptedLlm(model="scripted")
    agent = LlmAgent(
        name="weather", model=llm, instruction="Be brief.", tools=[get_weather], output_key="answer"
    )
    return Runner(app_name="weather_app", agent=agent, session_service=service), llm


def question(text: str) -> types.Content:
    return types.Content(role="user", parts=[types.Part(text=text)])


def check_weather_session(session: Any, llm: ScriptedLlm) -> None:
    kinds = [
        "text" if part.text else "call" if part.function_call else "response"
        for e in session.events
        for part in e.content.parts
    ]
    assert kinds == ["text", "call", "response", "text"] * 2
    assert [e.author for e in session.events[:4]] == ["user", "weather", "weather", "weather"]
    assert session.state == {"answer": "Sunny, 21 C.", "user:last_city": "Paris", "app:calls": 2}
    # Each model call saw the whole conversation so far, read back from the store.
    assert [len(request.contents) for request in llm.requests] == [1, 3, 5, 7]
    assert llm.requests[2].contents[0].parts[0].text == "Weather in Paris?"


RUNNER_STORES = ["async-tiered-memory-redis-pg", "tiered-memory-sqlite", "async-redis"]


@pytest.mark.parametrize("harness", RUNNER_STORES, indirect=True)
def test_runner_run_async(harness: Harness, loop_thread: LoopThread) -> None:
    service = TieredSessionService(real(harness.make()))
    runner, llm = weather_runner(service)

    async def scenario() -> Any:
        await service.create_session(app_name="weather_app", user_id="u1", session_id="s1")
        yielded = []
        for text in ("Weather in Paris?", "And tomorrow?"):
            async for produced in runner.run_async(
                user_id="u1", session_id="s1", new_message=question(text)
            ):
                yielded.append(produced)
        session = await service.get_session(app_name="weather_app", user_id="u1", session_id="s1")
        assert session is not None
        assert [e for e in session.events if e.author != "user"] == yielded
        assert await service.get_user_state(app_name="weather_app", user_id="u1") == {
            "last_city": "Paris"
        }
        return session

    check_weather_session(loop_thread.run(scenario()), llm)


@pytest.mark.parametrize("harness", ["tiered-memory-redis-pg"], indirect=True)
def test_runner_run_on_a_sync_store(harness: Harness) -> None:
    """``Runner.run`` runs each call on a new event loop in a new thread."""
    service = TieredSessionService(harness.make())
    runner, llm = weather_runner(service)
    asyncio.run(service.create_session(app_name="weather_app", user_id="u1", session_id="s1"))
    for text in ("Weather in Paris?", "And tomorrow?"):
        produced = list(runner.run(user_id="u1", session_id="s1", new_message=question(text)))
        assert produced[-1].content is not None
        assert produced[-1].content.parts[0].text == "Sunny, 21 C."
    session = asyncio.run(
        service.get_session(app_name="weather_app", user_id="u1", session_id="s1")
    )
    check_weather_session(session, llm)
