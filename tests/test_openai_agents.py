"""``TieredSession``: settings as the SDK normalises them, one-line construction,
ownership and closing, and one async store used from several event loops and threads.

Everything runs on the real Redis and PostgreSQL of the run (``pg_url``,
``redis_prefix``); the model is a scripted stub that makes no network call.
Waits on other threads and loops are bounded by timeouts; nothing is timed.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, SessionSettings, set_tracing_disabled
from agents.testing import ScriptedModel
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from tests.conftest import REDIS_URL, LoopThread
from tieredstore import MemoryStore
from tieredstore.aio import AsyncTieredStore
from tieredstore.errors import ConfigurationError, InvalidInput, InvalidSessionId, StoreClosed
from tieredstore.integrations.openai_agents import TieredSession, coerce_session_settings

set_tracing_disabled(True)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

WAIT = 30.0  # seconds any thread or loop of a test may take before it counts as hung


def _items(n: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"m{i}"} for i in range(n)]


def _reply(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=f"msg_{uuid.uuid4().hex[:8]}",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


def _in_thread(target: Any) -> Any:
    """Run ``target()`` on a new thread; its result (or exception), or fail if it hangs."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the thread hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def session_urls(pg_url: str, redis_prefix: str) -> dict[str, Any]:
    """``from_url`` arguments for a store of its own namespace on the run's servers."""
    return {
        "redis_url": REDIS_URL,
        "database_url": pg_url,
        "namespace": f"agents-{uuid.uuid4().hex[:12]}",
        "prefix": redis_prefix,
    }


@pytest.fixture
def tiered(session_urls: dict[str, Any]) -> Iterator[AsyncTieredStore]:
    """An all-tier async store (memory, Redis, PostgreSQL, write-through), closed at the end."""
    store = AsyncTieredStore.from_url(durability="write_through", **session_urls)
    yield store
    asyncio.run(store.aclose())


# -- session_settings, as the SDK's own sessions take them ----------------------------


def test_settings_default_to_session_settings() -> None:
    session = TieredSession(MemoryStore(), "s")
    assert isinstance(session.session_settings, SessionSettings)
    assert session.session_settings.limit is None


def test_a_dict_of_settings_becomes_session_settings() -> None:
    session = TieredSession(MemoryStore(), "s", session_settings={"limit": 2})
    assert session.session_settings == SessionSettings(limit=2)
    session.session_settings = {"limit": 0}
    assert session.session_settings == SessionSettings(limit=0)
    kept = SessionSettings(limit=3)
    assert coerce_session_settings(kept) is kept


def test_unknown_settings_are_the_sdks_type_error() -> None:
    with pytest.raises(TypeError, match="Unknown session settings: limitt"):
        TieredSession(MemoryStore(), "s", session_settings={"limitt": 1})
    with pytest.raises(TypeError, match="SessionSettings instance or a dict"):
        TieredSession(MemoryStore(), "s", session_settings=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Unknown session settings"):
        TieredSession.from_url("s", session_settings={"size": 1})


def test_the_settings_limit_is_the_default_of_get_items() -> None:
    session = TieredSession(MemoryStore(), "s", session_settings={"limit": 2})

    async def scenario() -> None:
        await session.add_items(_items(5))
        assert [i["content"] for i in await session.get_items()] == ["m3", "m4"]
        assert [i["content"] for i in await session.get_items(limit=4)] == ["m1", "m2", "m3", "m4"]
        assert await session.get_items(limit=0) == []
        session.session_settings = SessionSettings()
        assert len(await session.get_items()) == 5

    asyncio.run(scenario())


def test_runner_run_honours_a_dict_of_settings_and_the_run_config() -> None:
    session = TieredSession(MemoryStore(), "run", session_settings={"limit": 2})
    model = ScriptedModel()
    agent = Agent(name="test", model=model)

    async def scenario() -> None:
        await session.add_items(_items(6))
        model.enqueue([_reply("ok")])
        await Runner.run(agent, "next", session=session)
        assert [i.get("content") for i in model.calls[-1].input] == ["m4", "m5", "next"]
        model.enqueue([_reply("ok")])
        config = RunConfig(session_settings=SessionSettings(limit=1))
        await Runner.run(agent, "again", session=session, run_config=config)
        assert len(model.calls[-1].input) == 2

    asyncio.run(scenario())


# -- construction and ownership ---------------------------------------------------------


def test_ids_and_ttls_are_checked_at_construction() -> None:
    with pytest.raises(InvalidSessionId):
        TieredSession(MemoryStore(), "")
    with pytest.raises(InvalidSessionId):
        TieredSession.from_url("has space")
    with pytest.raises(InvalidInput):
        TieredSession(MemoryStore(), "s", ttl=-1)


def test_from_url_owns_its_store(session_urls: dict[str, Any]) -> None:
    session = TieredSession.from_url("owned", session_settings={"limit": 1}, **session_urls)
    store = session.store
    assert isinstance(store, AsyncTieredStore) and session.owns_store
    assert store.memory is None and store.redis is not None and store.archive is not None

    async def scenario() -> None:
        await session.add_items(_items(3))
        assert await session.get_items() == _items(3)[-1:]
        await session.aclose()
        await session.aclose()  # idempotent

    asyncio.run(scenario())
    assert store._closed
    with pytest.raises(StoreClosed, match="TieredSession is closed") as closed:
        asyncio.run(session.add_items([]))
    assert isinstance(closed.value, RuntimeError)
    reopened = TieredSession.from_url("owned", **session_urls)
    assert asyncio.run(reopened.get_items()) == _items(3)
    reopened.close()  # from sync code, outside any loop
    assert reopened.store._closed


def test_close_inside_a_running_loop_closes_the_store(session_urls: dict[str, Any]) -> None:
    async def scenario() -> AsyncTieredStore:
        session = TieredSession.from_url("closing", memory_max_bytes=2**20, **session_urls)
        await session.add_items(_items(1))
        session.close()  # what SQLiteSession users write, here inside the loop
        await session.aclose()  # waits for that closing
        assert isinstance(session.store, AsyncTieredStore)
        return session.store

    assert asyncio.run(scenario())._closed


def test_closing_a_session_leaves_a_store_it_does_not_own_open(tiered: AsyncTieredStore) -> None:
    async def scenario() -> None:
        first = TieredSession(tiered, "shared")
        await first.add_items(_items(2))
        first.close()
        await first.aclose()
        assert not tiered._closed
        assert await first.get_items() == _items(2)  # still usable, like RedisSession's
        assert await TieredSession(tiered, "shared").get_items() == _items(2)

    asyncio.run(scenario())


def test_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIEREDSTORE_DATA_DIR", str(tmp_path))

    async def scenario() -> None:
        async with TieredSession.from_url("local") as session:
            assert isinstance(session.store, AsyncTieredStore)
            assert session.store.redis is None and session.store.memory is not None
            await session.add_items(_items(2))
            assert await session.get_items() == _items(2)

    asyncio.run(scenario())
    assert (tmp_path / "archive.db").exists()


# -- one store, many event loops and threads --------------------------------------------


def test_one_async_store_serves_two_loops_at_once(
    tiered: AsyncTieredStore, loop_thread: LoopThread
) -> None:
    """A loop that stays up (the test loop thread) and a second loop on another
    thread use one store at the same time; both see everything, nothing hangs."""
    session = TieredSession(tiered, "two-loops")
    loop_thread.run(asyncio.wait_for(session.add_items(_items(1)), WAIT))
    barrier = threading.Barrier(2, timeout=WAIT)

    async def write(tag: str) -> None:
        await asyncio.to_thread(barrier.wait)
        await session.add_items([{"role": "user", "content": tag}])

    def other_loop() -> list[Any]:
        async def run() -> list[Any]:
            await asyncio.wait_for(write("from the second loop"), WAIT)
            return await session.get_items()

        return asyncio.run(run())

    first = asyncio.run_coroutine_threadsafe(write("from the first loop"), loop_thread.loop)
    seen_there = _in_thread(other_loop)
    first.result(WAIT)
    seen_here = loop_thread.run(asyncio.wait_for(session.get_items(), WAIT))
    expected = {"m0", "from the first loop", "from the second loop"}
    assert {i["content"] for i in seen_here} == expected
    assert {"m0", "from the second loop"} <= {i["content"] for i in seen_there}
    # The second loop's clients were closed when its asyncio.run ended.
    assert tiered.redis is not None and tiered.archive is not None
    assert not tiered.redis._clients._twins and not tiered.archive._engines._twins


def test_loops_that_come_and_go_one_after_another(tiered: AsyncTieredStore) -> None:
    session = TieredSession(tiered, "sequential")
    for turn in range(3):
        asyncio.run(asyncio.wait_for(session.add_items(_items(1)), WAIT))
        assert len(_in_thread(lambda: asyncio.run(session.get_items()))) == turn + 1
    assert tiered.listener is not None and tiered.listener.healthy


def test_a_loop_closed_without_shutting_down(tiered: AsyncTieredStore) -> None:
    """``run_until_complete`` then ``close()``: what the loop left is dropped, the store goes on."""
    session = TieredSession(tiered, "bare-loops")

    def bare_loop(tag: str) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(asyncio.wait_for(session.add_items([{"role": tag}]), WAIT))
        finally:
            loop.close()

    for tag in ("user", "assistant"):
        _in_thread(lambda tag=tag: bare_loop(tag))
    assert [i["role"] for i in asyncio.run(session.get_items())] == ["user", "assistant"]


def test_runner_run_sync_in_threads_while_the_main_loop_lives(
    session_urls: dict[str, Any], loop_thread: LoopThread
) -> None:
    session = TieredSession.from_url("sync-runs", memory_max_bytes=2**20, **session_urls)
    model = ScriptedModel()
    agent = Agent(name="test", model=model)
    loop_thread.run(asyncio.wait_for(session.add_items(_items(1)), WAIT))

    def run_sync(text: str) -> Any:
        model.enqueue([_reply(f"re: {text}")])
        return Runner.run_sync(agent, text, session=session).final_output

    assert _in_thread(lambda: run_sync("one")) == "re: one"
    assert _in_thread(lambda: run_sync("two")) == "re: two"
    items = loop_thread.run(asyncio.wait_for(session.get_items(), WAIT))
    assert [i.get("content") for i in items if i.get("role") == "user"] == ["m0", "one", "two"]
    assert len(model.calls[-1].input) == 4  # m0, one, the reply to one, two
    loop_thread.run(session.aclose())


def test_given_clients_serve_other_loops_too(
    async_redis_client: Any, async_pg_engine: Any, redis_prefix: str, loop_thread: LoopThread
) -> None:
    """Over a client and an engine the caller owns, other loops get copies; the
    caller's own are left open by ``aclose``."""
    store = AsyncTieredStore.from_clients(
        redis=async_redis_client, engine=async_pg_engine,
        namespace=f"given-{uuid.uuid4().hex[:12]}", prefix=redis_prefix,
    )
    session = TieredSession(store, "given")
    loop_thread.run(asyncio.wait_for(session.add_items(_items(1)), WAIT))
    assert _in_thread(lambda: asyncio.run(session.get_items())) == _items(1)
    loop_thread.run(store.aclose())
    assert loop_thread.run(async_redis_client.ping())


def test_a_cluster_client_of_ones_own_refuses_a_second_loop_at_once() -> None:
    from redis.asyncio.cluster import RedisCluster

    from tieredstore.tiers.redis import AsyncRedisStore

    # Never connected: the refusal comes before any I/O.
    store = AsyncRedisStore(RedisCluster(host="127.0.0.1", port=7000), namespace="c")

    async def client() -> Any:
        return store.client

    loop = LoopThread()
    try:
        assert loop.run(client()) is store._clients.first
        with pytest.raises(ConfigurationError, match="one store per event loop"):
            asyncio.run(client())
    finally:
        loop.stop()


def test_the_listener_runs_on_the_stores_own_thread(tiered: AsyncTieredStore) -> None:
    asyncio.run(TieredSession(tiered, "listen").get_items())
    thread = tiered._listener_thread
    assert thread is not None and tiered.listener is not None and tiered.listener.healthy
    asyncio.run(tiered.aclose())
    assert thread.join(0) and not tiered.listener.healthy


def test_memory_tiers_stay_coherent_whatever_loop_reads(
    session_urls: dict[str, Any], tiered: AsyncTieredStore
) -> None:
    """A second store (another process, say) caches a session in its memory tier
    on one loop; a write through the first store reaches it whichever loop reads."""
    reader = AsyncTieredStore.from_url(durability="write_through", **session_urls)
    session_id = "coherent"
    try:
        asyncio.run(tiered.append(session_id, {"role": "user", "content": "v1"}))
        assert _in_thread(lambda: asyncio.run(reader.load(session_id)))[-1]["content"] == "v1"
        asyncio.run(tiered.append(session_id, {"role": "user", "content": "v2"}))

        async def newest() -> str:
            deadline = asyncio.get_running_loop().time() + WAIT
            while True:
                content = str((await reader.load(session_id))[-1]["content"])
                if content == "v2" or asyncio.get_running_loop().time() > deadline:
                    return content
                await asyncio.sleep(0.01)

        assert _in_thread(lambda: asyncio.run(newest())) == "v2"
        assert reader.stats()["invalidations_received"] >= 1
        assert asyncio.run(reader.load(session_id))[-1]["content"] == "v2"
        assert reader.stats()["memory"]["hits"] >= 1  # from its memory tier, on a third loop
    finally:
        asyncio.run(reader.aclose())
