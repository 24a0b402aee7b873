"""Migrations 0002 (search), 0003 (generations) and 0004 (partitions) keep a filled archive."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tieredstore import Message
from tieredstore.migration import check, current_revision, downgrade, migrate
from tieredstore.query import ArchiveQuery
from tieredstore.schema import FTS_INDEX, MESSAGES, SESSIONS, normalize_url
from tieredstore.tiers.archive import ArchiveStore


@pytest.fixture(params=["pg", "sqlite"])
def url(request: pytest.FixtureRequest, pg_database: Callable[[], str], tmp_path: Path) -> str:
    if request.param == "pg":
        return pg_database()
    return f"sqlite:///{tmp_path / 'archive.db'}"


def _rows(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(sa.text(
                f"SELECT * FROM {table} ORDER BY namespace, session_id"
                + (", seq" if table == MESSAGES else "")))]
            for table in (SESSIONS, MESSAGES)
        }


def _fill(url: str) -> None:
    """Thirty sessions written by today's code, then the schema taken back to 0001."""
    migrate(url)
    store = ArchiveStore.from_url(url, namespace="legacy")
    for i in range(30):
        store.save(f"s{i}", [
            Message("system", "You are terse."),
            Message("user", f"Where is my parcel number {i}? ünïcödé 🚚"),
            Message("assistant", None, tool_calls=[{"id": f"c{i}", "type": "function",
                    "function": {"name": "track", "arguments": "{}"}}]),
            {"role": "tool", "tool_call_id": f"c{i}", "content": [{"type": "text",
             "text": "in transit"}]},
        ], user_id=f"u{i % 3}", metadata={"channel": "web", "n": i})
    store.close()
    downgrade(url, "0001")
    assert current_revision(url) == "0001"


def test_upgrade_filled_archive_keeps_every_row(url: str) -> None:
    _fill(url)
    engine = sa.create_engine(normalize_url(url))
    try:
        before = _rows(engine)
        assert len(before[MESSAGES]) == 120
        migrate(url, "0002")
        assert current_revision(url) == "0002"
        assert _rows(engine) == before
        if engine.dialect.name == "postgresql":
            indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes(MESSAGES)}
            assert FTS_INDEX in indexes
        downgrade(url, "0001")
        assert _rows(engine) == before
        migrate(url)
        query = ArchiveQuery(engine, namespace="legacy")
        hits = query.search("parcel", user_id="u1", metadata={"channel": "web"}, limit=100)
        assert sorted(h.session_id for h in hits) == sorted(f"s{i}" for i in range(1, 30, 3))
        assert len(query.search("transit", limit=100)) == 30
    finally:
        engine.dispose()


def test_0003_keeps_every_row_and_adds_generation_columns(url: str) -> None:
    _fill(url)
    migrate(url, "0002")
    engine = sa.create_engine(normalize_url(url))
    try:
        before = _rows(engine)
        migrate(url, "0003")
        assert current_revision(url) == "0003"
        after = _rows(engine)
        assert after[MESSAGES] == before[MESSAGES]
        # every session row keeps its values; the new columns start empty
        assert [row[: len(before[SESSIONS][0])] for row in after[SESSIONS]] == before[SESSIONS]
        with engine.connect() as conn:
            extra = conn.execute(
                sa.text(f"SELECT DISTINCT deleted_ms, detached FROM {SESSIONS}")
            ).all()
        assert [(d, bool(x)) for d, x in extra] == [(None, False)]
        migrate(url)
        check(url)
        store = ArchiveStore(engine, namespace="legacy")
        assert len(store.load("s7")) == 4
        assert store.delete("s7") and not store.exists("s7")
        downgrade(url, "0002")
        assert _rows(engine)[MESSAGES] == [m for m in before[MESSAGES] if m[1] != "s7"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("start", ["0002", "0003"])
def test_0004_partitions_a_filled_archive_keeping_rows_and_counters(url: str, start: str) -> None:
    """0002/0003 -> head on an archive of several months: every row and counter is kept."""
    from tests.conftest import FakeClock
    from tieredstore.tiers.archive.partitions import month_of

    migrate(url)
    clock = FakeClock(datetime(2025, 1, 10, tzinfo=UTC).timestamp())
    store = ArchiveStore.from_url(url, namespace="legacy", clock=clock)
    for i in range(24):
        clock.now = datetime(2025, 1 + i % 6, 1 + i, tzinfo=UTC).timestamp()
        store.save(f"s{i}", [Message("system", "terse"), Message("user", f"parcel {i}")],
                   user_id=f"u{i % 4}", metadata={"n": i})
        clock.advance(40 * 86_400)  # the session goes on into a later month
        store.append(f"s{i}", Message("assistant", f"found parcel {i}"),
                     {"role": "user", "content": [{"type": "text", "text": "thanks"}]})
    store.append("s3", Message("user", "odd \x00 byte"))
    store.delete("s5")  # a tombstone
    store.close()
    downgrade(url, start)
    engine = sa.create_engine(normalize_url(url))
    try:
        before = _rows(engine)
        inspector = sa.inspect(engine)
        session_columns = [c["name"] for c in inspector.get_columns(SESSIONS)]
        message_columns = [c["name"] for c in inspector.get_columns(MESSAGES)]
        assert len(before[MESSAGES]) == 23 * 4 + 1
        migrate(url)
        assert current_revision(url) == "0005"
        check(url)
        with engine.connect() as conn:
            sessions = {r.session_id: r for r in conn.execute(sa.text(
                f"SELECT * FROM {SESSIONS} WHERE namespace = 'legacy'"))}
            messages = conn.execute(sa.text(
                f"SELECT namespace, session_id, seq, created_ms, role, kind, payload, month, "
                f"tieredstore_message_text(payload, content_text) AS text FROM {MESSAGES} "
                "ORDER BY namespace, session_id, seq") if engine.dialect.name == "postgresql"
                else sa.text(f"SELECT namespace, session_id, seq, created_ms, role, kind, "
                             f"payload, month, content_text AS text FROM {MESSAGES} "
                             "ORDER BY namespace, session_id, seq")).all()
        old_sessions = {r[1]: r for r in before[SESSIONS]}
        columns = ("user_id", "created_ms", "updated_ms", "version", "message_count",
                   "next_seq", "base_seq", "lead", *(("deleted_ms",) if start == "0003" else ()))
        for sid, row in sessions.items():
            old = dict(zip(session_columns, old_sessions[sid], strict=True))
            assert {c: getattr(row, c) for c in columns} == {c: old[c] for c in columns}
            assert row.month == month_of(row.created_ms)
        old_messages = [dict(zip(message_columns, r, strict=True)) for r in before[MESSAGES]]
        assert [(m.session_id, m.seq, m.created_ms, m.role, m.kind, bytes(m.payload), m.text)
                for m in messages] == [
            (o["session_id"], o["seq"], o["created_ms"], o["role"], o["kind"],
             bytes(o["payload"]), o["content_text"]) for o in old_messages]
        for m in messages:  # each message in its session's partition
            assert m.month == sessions[m.session_id].month
        store = ArchiveStore(engine, namespace="legacy")
        assert store.load("s3")[-1].content == "odd \x00 byte"
        assert not store.exists("s5")
        store.append("s7", Message("user", "after the migration"))
        assert len(store.load("s7")) == 5
        hits = ArchiveQuery(engine, namespace="legacy").search("parcel", limit=100)
        assert len(hits) == 46  # two a session, the deleted one's gone
        downgrade(url, start)  # and back: the text is stored again, nothing is lost
        after = _rows(engine)
        assert len(after[SESSIONS]) == len(before[SESSIONS])
        assert [m for m in after[MESSAGES] if m[1] != "s7"] == [
            m for m in before[MESSAGES] if m[1] != "s7"]
        assert len(after[MESSAGES]) == len(before[MESSAGES]) + 1
    finally:
        engine.dispose()
