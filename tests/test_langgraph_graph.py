"""A real StateGraph on the saver: turns, an interrupt resumed, and its state surviving.

The graph (``tests/langgraph_app.py``) answers with a stub chat model and
interrupts each turn for a review. Its thread survives the process that
wrote it exiting (a subprocess plays the first turns), the worker's
maintenance function archiving it out of Redis (it is read back from the
archive and promoted), and — with ``write_through`` — Redis being flushed
(a private redis-server, so the shared one is never flushed).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.types import Command

from tests.langgraph_app import build, config, turn
from tests.servers import RedisServer
from tieredstore.integrations.langgraph import TieredCheckpointSaver
from tieredstore.integrations.langgraph.keys import CheckpointKeys
from tieredstore.integrations.langgraph.maintenance import maintain_checkpoints

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def _play_in_subprocess(redis_url: str, database_url: str, namespace: str, thread: str,
                        durability: str, turns: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.langgraph_app", redis_url, database_url, namespace,
         thread, durability, str(turns)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def _expected_messages(turns: int) -> list[tuple[str, str]]:
    out = []
    for i in range(1, turns + 1):
        out += [("human", f"question {i}"), ("ai", f"answer {i}: question {i}")]
    return out


def _messages(app: Any, thread: str) -> list[tuple[str, str]]:
    return [(m.type, m.content) for m in app.get_state(config(thread)).values["messages"]]


def _hot(saver: TieredCheckpointSaver, thread: str) -> bool:
    assert saver.redis is not None
    return bool(saver.redis.client.exists(CheckpointKeys(saver.redis.keys).head(thread)))


@pytest.mark.parametrize("durability", ["archive", "write_through"])
def test_state_survives_restart_archival_and_a_redis_flush(
        durability: str, private_redis: RedisServer, pg_url: str) -> None:
    namespace, thread = f"lg-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    before = _play_in_subprocess(private_redis.url, pg_url, namespace, thread, durability, 2)
    assert before == {"next": ["review"], "messages": 6, "approved": 2}

    # The process restarted: a new one finds the thread waiting at the review.
    with TieredCheckpointSaver.from_url(redis_url=private_redis.url, database_url=pg_url,
                                        namespace=namespace, durability=durability,
                                        memory_max_bytes=2**20) as saver:
        app = build(saver)
        state = app.get_state(config(thread))
        assert state.next == ("review",)
        assert state.tasks[0].interrupts[0].value == {"approve": "answer 3: question 3"}
        assert _messages(app, thread) == _expected_messages(3)
        resumed = app.invoke(Command(resume="yes"), config(thread))
        assert resumed["approved"] == 3 and app.get_state(config(thread)).next == ()
        history = list(app.get_state_history(config(thread)))

        # The worker archives the idle thread: Redis lets go of it, reads bring it back.
        result = maintain_checkpoints(saver, archive_after=0)
        assert result.changed >= 1 and result.messages == len(history)
        assert not _hot(saver, thread)
        assert _messages(app, thread) == _expected_messages(3)
        assert _hot(saver, thread)  # the read promoted the newest checkpoint
        assert [s.config for s in app.get_state_history(config(thread))] == [
            s.config for s in history]
        result = asyncio.run(app.ainvoke({"messages": [HumanMessage("question 4")]},
                                         config(thread)))
        assert "__interrupt__" in result
        final = asyncio.run(app.ainvoke(Command(resume="yes"), config(thread)))
        assert final["approved"] == 4
        assert _messages(app, thread) == _expected_messages(4)

        if durability == "write_through":
            # Redis loses everything: nothing acknowledged is lost.
            redis.Redis.from_url(private_redis.url).flushall()
            assert _messages(app, thread) == _expected_messages(4)
            turn(app, thread, "question 5")
            assert _messages(app, thread) == _expected_messages(5)
            assert app.get_state(config(thread)).values["approved"] == 5
            assert len(list(app.get_state_history(config(thread)))) == len(history) + 8


def test_a_graph_on_the_async_api_with_subgraph_namespaces(redis_client: Any, redis_prefix: str,
                                                           pg_engine: Any) -> None:
    """``ainvoke`` drives aput/aput_writes/aget_tuple; a subgraph writes its own
    checkpoint namespace, and the parent's history lists only the root one."""
    from langgraph.graph import START, StateGraph

    from tests.langgraph_app import State

    saver = TieredCheckpointSaver.from_clients(
        redis=redis_client, engine=pg_engine, namespace=f"lg-{uuid.uuid4().hex[:8]}",
        prefix=redis_prefix, durability="write_through")
    inner = StateGraph(State)
    inner.add_node("think", lambda s: {"messages": [AIMessage("thinking")]})
    inner.add_edge(START, "think")
    outer = StateGraph(State)
    outer.add_node("sub", inner.compile(checkpointer=True))
    outer.add_edge(START, "sub")
    app = outer.compile(checkpointer=saver)
    cfg = config("t-sub")
    for i in range(3):
        asyncio.run(app.ainvoke({"messages": [HumanMessage(f"q{i}")]}, cfg))
    state = asyncio.run(app.aget_state(cfg))
    assert [m.content for m in state.values["messages"]] == [
        x for i in range(3) for x in (f"q{i}", "thinking")]
    root = {"configurable": {"thread_id": "t-sub", "checkpoint_ns": ""}}
    assert {t.config["configurable"]["checkpoint_ns"] for t in saver.list(root)} == {""}
    everything = {t.config["configurable"]["checkpoint_ns"] for t in saver.list(cfg)}
    assert everything == {"", "sub"}  # a checkpointer=True subgraph keeps its own namespace
    saver.delete_thread("t-sub")
    assert saver.get_tuple(cfg) is None and not list(saver.list(cfg))
