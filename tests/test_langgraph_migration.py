"""Migration 0005 (LangGraph checkpoints) on PostgreSQL and SQLite: up, down to 0004, up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import FakeClock
from tieredstore import ArchiveStore, Message, migrate
from tieredstore.integrations.langgraph import TieredCheckpointSaver
from tieredstore.migration import check, current_revision, downgrade
from tieredstore.schema import CHECKPOINT_THREADS, CHECKPOINT_WRITES, CHECKPOINTS, normalize_url

TABLES = {CHECKPOINT_THREADS, CHECKPOINTS, CHECKPOINT_WRITES}


@pytest.fixture(params=["pg", "sqlite"])
def url(request: pytest.FixtureRequest, pg_database: Callable[[], str], tmp_path: Path) -> str:
    return pg_database() if request.param == "pg" else f"sqlite:///{tmp_path / 'a.db'}"


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(normalize_url(url))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0005_adds_the_checkpoint_tables_and_goes_back_to_0004(url: str) -> None:
    migrate(url, "0004")
    sessions = ArchiveStore.from_url(url, namespace="kept", clock=FakeClock())
    sessions.save("s1", [Message("user", "hello")])
    assert not TABLES & _tables(url)
    migrate(url)
    assert current_revision(url) == "0005" and _tables(url) >= TABLES
    check(url)
    with TieredCheckpointSaver.from_url(database_url=url) as saver:
        config = saver.put({"configurable": {"thread_id": "t", "checkpoint_ns": ""}},
                           {"v": 4, "id": "c1", "ts": "", "channel_values": {"x": 1},
                            "channel_versions": {}, "versions_seen": {}}, {"step": 1}, {})
        saver.put_writes(config, [("x", 2)], "task")
        assert saver.get_tuple(config) is not None
    downgrade(url, "0004")
    assert current_revision(url) == "0004" and not TABLES & _tables(url)
    assert sessions.load("s1") == [Message("user", "hello")]  # the sessions are untouched
    sessions.close()
    migrate(url)
    check(url)
