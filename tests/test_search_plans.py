"""Every search plan returns exactly what a brute-force scan finds, in order, across pages.

A small archive spread over several monthly partitions (sessions that go on
past the end of their month, several users, a message whose payload escapes
U+0000), queried with common and rare words, prefixes, phrases, exclusions,
alternatives and filters. On PostgreSQL each plan of
:mod:`tieredstore.query_search` is forced in turn, with a tiny walk budget
so pages come back short and cursors resume walks; the hits of all pages
together must equal the brute-force answer. On SQLite (one plan) the same
queries are checked against a scan done in Python.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import FakeClock
from tieredstore import Message, migrate, query_search
from tieredstore.query import ArchiveQuery
from tieredstore.query_text import parse_terms, pg_tsquery, pg_tsvector_of
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import normalize_url
from tieredstore.schema import sessions as SESSIONS
from tieredstore.tiers.archive import ArchiveStore

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"]
RARE = "zulu"
START = datetime(2025, 3, 20, tzinfo=UTC).timestamp()
HOUR = 3600.0

QUERIES: list[tuple[str | None, dict[str, Any]]] = [
    ("alpha", {}),
    ("romeo", {}),
    (RARE, {}),
    ("alp*", {}),
    ('"alpha bravo"', {}),
    ('"quebec romeo"', {}),
    ("alpha -bravo", {}),
    ("romeo OR quebec", {}),
    ("alpha", {"user_id": "u1"}),
    ('"alpha bravo"', {"user_id": "u2"}),
    (RARE, {"user_id": "u3"}),
    ("charlie", {"role": "assistant"}),
    ("delta", {"since": START + 40 * 24 * HOUR, "until": START + 80 * 24 * HOUR}),
    ("echo", {"metadata": {"tier": "gold"}}),
    ("alpha", {"session_ids": ["s-0003", "s-0017", "s-0042"]}),
    (None, {"role": "tool"}),
    (None, {"user_id": "u4"}),
]


@pytest.fixture(scope="module", params=["pg", "sqlite"])
def archive(request: pytest.FixtureRequest, pg_database: Callable[[], str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    if request.param == "pg":
        url = pg_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'a.db'}"
    migrate(url)
    engine = sa.create_engine(normalize_url(url))
    clock = FakeClock(START)
    store = ArchiveStore(engine, namespace="plans", clock=clock)
    rng = random.Random(11)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    for i in range(60):
        clock.now = START + rng.randrange(150) * 24 * HOUR  # five months of sessions
        sid = f"s-{i:04d}"
        meta = {"tier": "gold" if i % 3 == 0 else "free"}
        store.save(sid, [Message("system", "be brief")], user_id=f"u{i % 6}", metadata=meta)
        for j in range(rng.randint(4, 14)):
            clock.advance(rng.choice([60.0, 3600.0, 9 * 24 * HOUR]))  # some run into the next month
            text = " ".join(rng.choices(WORDS, weights=weights, k=8))
            if rng.random() < 0.03:
                text += f" {RARE}"
            role = ("user", "assistant")[j % 2]
            if j == 3:
                store.append(sid, {"role": "tool", "tool_call_id": "t",
                                   "content": [{"type": "text", "text": text}]})
            elif i == 7 and j == 4:
                store.append(sid, Message(role, f"alpha \x00 {RARE}"))
            else:
                store.append(sid, Message(role, text))
    store.analyze()  # as the worker's partitions task does: plans need statistics
    store.close()
    yield engine
    engine.dispose()


def _brute_pg(engine: sa.Engine, text: str | None,
              filters: dict[str, Any]) -> list[tuple[Any, ...]]:
    m, s = MESSAGES.c, SESSIONS.c
    conds: list[Any] = [m.namespace == "plans", s.version > 0]
    if text is not None:
        conds.append(pg_tsvector_of("english", m).op("@@")(pg_tsquery("english", text)))
    if "user_id" in filters:
        conds.append(s.user_id == filters["user_id"])
    if "role" in filters:
        conds.append(m.role == filters["role"])
    if "since" in filters:
        conds.append(m.created_ms >= int(filters["since"] * 1000))
    if "until" in filters:
        conds.append(m.created_ms < int(filters["until"] * 1000))
    if "metadata" in filters:
        conds.append(s["metadata"].op("->>")("tier") == filters["metadata"]["tier"])
    if "session_ids" in filters:
        conds.append(m.session_id.in_(filters["session_ids"]))
    stmt = sa.select(m.created_ms, m.session_id, m.seq).select_from(
        MESSAGES.join(SESSIONS, sa.and_(s.namespace == m.namespace,
                                         s.session_id == m.session_id))).where(*conds)
    with engine.connect() as conn:
        return sorted((tuple(r) for r in conn.execute(stmt)), reverse=True)


def _brute_sqlite(engine: sa.Engine, text: str | None,
                  filters: dict[str, Any]) -> list[tuple[Any, ...]]:
    groups = parse_terms(text) if text else []
    m, s = MESSAGES.c, SESSIONS.c
    stmt = sa.select(m.created_ms, m.session_id, m.seq, m.role, m.content_text, s.user_id,
                     s["metadata"]).select_from(MESSAGES.join(SESSIONS, sa.and_(
                         s.namespace == m.namespace, s.session_id == m.session_id))).where(
                         m.namespace == "plans")
    found = []
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            body = (row.content_text or "").lower()
            if not all(any((t in body) != neg for neg, t in g) for g in groups):
                continue
            if filters.get("user_id", row.user_id) != row.user_id:
                continue
            if filters.get("role", row.role) != row.role:
                continue
            if "since" in filters and row.created_ms < int(filters["since"] * 1000):
                continue
            if "until" in filters and row.created_ms >= int(filters["until"] * 1000):
                continue
            if "metadata" in filters and row.metadata.get("tier") != filters["metadata"]["tier"]:
                continue
            if "session_ids" in filters and row.session_id not in filters["session_ids"]:
                continue
            found.append((row.created_ms, row.session_id, row.seq))
    return sorted(found, reverse=True)


def _pages(query: ArchiveQuery, text: str | None, filters: dict[str, Any]) -> list[Any]:
    hits: list[tuple[Any, ...]] = []
    cursor = None
    for _ in range(10_000):
        page = query.search(text, limit=20, cursor=cursor, **filters)
        hits += [(h.created_ms, h.session_id, h.seq) for h in page.hits]
        if page.next_cursor is None:
            return hits
        cursor = page.next_cursor
    raise AssertionError("cursors never ended")


PLANS = ["index", "partitions", "walk", "scoped"]


@pytest.mark.parametrize(("text", "filters"), QUERIES)
def test_every_plan_finds_what_a_scan_finds(archive: sa.Engine, text: str | None,
                                           filters: dict[str, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    query = ArchiveQuery(archive, namespace="plans")
    if archive.dialect.name != "postgresql":
        assert _pages(query, text, filters) == _brute_sqlite(archive, text, filters)
        return
    expected = _brute_pg(archive, text, filters)
    assert expected or text in (RARE,) or filters, "the query set should find something"
    monkeypatch.setattr(query_search, "SCAN_BUDGET", 9)
    monkeypatch.setattr(query_search, "SCOPE_ROWS", 10_000)
    scoped = "user_id" in filters or "session_ids" in filters
    if text is None:  # no text: a walk, over the scope's sessions when there is one
        assert _pages(query, text, filters) == expected
        assert query.last_plan == ("scoped" if scoped else "walk")
        return
    for plan in PLANS:
        if plan == "scoped" and not scoped:
            continue
        monkeypatch.setattr(query_search, "choose", lambda *a, _p=plan, **k: _p)
        assert _pages(query, text, filters) == expected, plan
        assert query.last_plan == plan


def test_the_partitions_are_several(archive: sa.Engine) -> None:
    if archive.dialect.name != "postgresql":
        pytest.skip("partitions are PostgreSQL's")
    with archive.connect() as conn:
        months = conn.execute(sa.text(
            "SELECT count(DISTINCT month), count(*) FILTER (WHERE month_of_row <> month) FROM "
            "(SELECT m.month, CAST(to_char(to_timestamp(m.created_ms / 1000.0) AT TIME ZONE "
            "'UTC', 'YYYYMM') AS integer) AS month_of_row FROM tieredstore_messages m) t"
        )).one()
    assert months[0] >= 5  # sessions of five months
    assert months[1] > 0  # and messages written in a later month than their session's


def test_choose_by_cost() -> None:
    choose = query_search.choose
    assert choose(10, 10_000_000, 12, phrase=False, limit=20) == "index"
    assert choose(5_000_000, 10_000_000, 12, phrase=False, limit=20) == "walk"
    assert choose(20_000, 10_000_000, 12, phrase=False, limit=20) == "partitions"
    assert choose(70_000, 10_000_000, 12, phrase=True, limit=20) == "walk"
    assert choose(5_000_000, 10_000_000, 12, phrase=False, limit=20, scope_rows=400) == "scoped"
    assert choose(12, 10_000_000, 12, phrase=False, limit=20, scope_rows=400) == "index"
    assert choose(5_000_000, 10_000_000, 12, phrase=False, limit=20,
                  scope_rows=10**6) == "walk"
