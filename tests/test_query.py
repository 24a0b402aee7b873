"""The archival query API against a brute-force scan of the same data.

Runs on PostgreSQL (full-text search, JSONB containment) and SQLite (substring
match). The vocabulary is made of distinct, non-stop, non-overlapping words,
so PostgreSQL's stemming and SQLite's substring test agree with a plain token
scan in Python.
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import FakeClock
from tieredstore import Message
from tieredstore.errors import InvalidInput, SessionExists
from tieredstore.query import ArchiveQuery, erase
from tieredstore.schema import normalize_url
from tieredstore.store import TieredStore
from tieredstore.tiers.archive import ArchiveStore

WORDS = ["zebra", "quokka", "walrus", "falcon", "otter", "badger", "heron", "lynx",
         "marmot", "gecko", "bison", "pelican"]
USERS = ["alice", "bob", "carol", "dave"]


@dataclass(frozen=True)
class Row:
    sid: str
    seq: int
    created_ms: int
    role: str
    user: str
    metadata: dict[str, Any]
    tokens: tuple[str, ...]


@dataclass
class Corpus:
    url: str
    namespace: str
    rows: list[Row]
    store: ArchiveStore
    query: ArchiveQuery


def _fill(url: str, namespace: str) -> Corpus:
    rng = random.Random(7)
    clock = FakeClock(1_800_000_000.0)
    store = ArchiveStore.from_url(url, namespace=namespace, clock=clock)
    rows: list[Row] = []
    for i in range(40):
        sid = f"s{i:03d}"
        user = USERS[i % len(USERS)]
        metadata = {"plan": ("pro", "free")[i % 2], "region": ("eu", "us", "ap")[i % 3]}
        for seq in range(6):
            tokens = tuple(rng.choices(WORDS, k=rng.randint(2, 6)))
            role = ("user", "assistant")[seq % 2]
            message = Message(role, " ".join(tokens).capitalize() + ".")
            if seq == 0:
                store.save(sid, [message], user_id=user, metadata=metadata)
            else:
                store.append(sid, message)
            rows.append(Row(sid, seq, int(clock() * 1000), role, user, metadata, tokens))
            clock.advance(rng.choice([1, 7, 60]))
    return Corpus(url, namespace, rows, store, ArchiveQuery(store, clock=clock))


@pytest.fixture(scope="module", params=["pg", "sqlite"])
def corpus(request: pytest.FixtureRequest, pg_database: Callable[[], str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    from tieredstore import migrate

    if request.param == "pg":
        url = pg_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('query') / 'archive.db'}"
    migrate(url)
    found = _fill(url, f"q-{uuid.uuid4().hex[:8]}")
    yield found
    found.query.close()
    found.store.close()


def _matches(tokens: tuple[str, ...], query: str) -> bool:
    """The reference semantics of the queries used below (AND of terms, OR, -, "", *)."""
    groups: list[list[tuple[bool, str]]] = []
    join = False
    for part in re.findall(r'-?"[^"]*"|\S+', query):
        if part == "OR":
            join = True
            continue
        negated = part.startswith("-")
        term = (negated, part.lstrip("-"))
        if join:
            groups[-1].append(term)
        else:
            groups.append([term])
        join = False
    text = f" {' '.join(tokens).lower()} "

    def test(term: str) -> bool:
        if term.startswith('"'):
            return f" {term.strip(chr(34))} " in text
        if term.endswith("*"):
            return any(t.startswith(term[:-1]) for t in tokens)
        return term in tokens

    return all(any(test(term) != negated for negated, term in group) for group in groups)


def _brute(corpus: Corpus, text: str | None = None, *, user_id: str | None = None,
           metadata: dict[str, Any] | None = None, role: str | None = None,
           since: float | None = None, until: float | None = None) -> list[tuple[str, int]]:
    found = [
        row for row in corpus.rows
        if (text is None or _matches(row.tokens, text))
        and (user_id is None or row.user == user_id)
        and (metadata is None or all(row.metadata.get(k) == v for k, v in metadata.items()))
        and (role is None or row.role == role)
        and (since is None or row.created_ms >= since * 1000)
        and (until is None or row.created_ms < until * 1000)
    ]
    found.sort(key=lambda r: (r.created_ms, r.sid, r.seq), reverse=True)
    return [(row.sid, row.seq) for row in found]


def _all_pages(corpus: Corpus, text: str | None, limit: int, **filters: Any) -> list[Any]:
    hits: list[Any] = []
    cursor = None
    while True:
        page = corpus.query.search(text, limit=limit, cursor=cursor, **filters)
        hits.extend(page.hits)
        cursor = page.next_cursor
        if cursor is None:
            return hits


QUERIES = ["zebra", "zebra quokka", '"walrus falcon"', "otter OR lynx", "heron -bison",
           "pel*", "mar* gecko", '"badger heron" OR zebra']


@pytest.mark.parametrize("text", QUERIES)
def test_text_search_matches_brute_force(corpus: Corpus, text: str) -> None:
    expected = _brute(corpus, text)
    assert expected, f"the corpus should contain hits for {text!r}"
    hits = _all_pages(corpus, text, limit=7)
    assert [(h.session_id, h.seq) for h in hits] == expected
    for hit in hits:
        assert "<mark>" in hit.snippet
        assert hit.user_id == USERS[int(hit.session_id[1:]) % len(USERS)]


def test_filters_match_brute_force(corpus: Corpus) -> None:
    times = sorted(row.created_ms for row in corpus.rows)
    since, until = times[len(times) // 4] / 1000, times[3 * len(times) // 4] / 1000
    cases: list[tuple[str | None, dict[str, Any]]] = [
        (None, {"user_id": "bob"}),
        (None, {"metadata": {"plan": "pro"}}),
        (None, {"metadata": {"plan": "free", "region": "us"}}),
        (None, {"role": "assistant"}),
        (None, {"since": since, "until": until}),
        ("zebra", {"user_id": "alice", "role": "user"}),
        ("otter OR quokka", {"metadata": {"region": "eu"}, "since": since}),
        ("gecko", {"user_id": "carol", "metadata": {"plan": "pro"}, "until": until}),
    ]
    for text, filters in cases:
        expected = _brute(corpus, text, **filters)
        assert expected, (text, filters)
        got = [(h.session_id, h.seq) for h in _all_pages(corpus, text, limit=5, **filters)]
        assert got == expected, (text, filters)
    assert corpus.query.search("zebra", user_id="nobody").hits == []


def test_search_hit_fields_and_bad_input(corpus: Corpus) -> None:
    page = corpus.query.search(limit=1)
    newest = max(corpus.rows, key=lambda r: (r.created_ms, r.sid, r.seq))
    hit = page.hits[0]
    assert (hit.session_id, hit.seq, hit.created_ms, hit.role) == (
        newest.sid, newest.seq, newest.created_ms, newest.role)
    assert page.next_cursor is not None
    with pytest.raises(InvalidInput):
        corpus.query.search("zebra", cursor="not-a-cursor")
    with pytest.raises(InvalidInput):
        corpus.query.search("zebra", limit=0)


def test_sessions_summaries(corpus: Corpus) -> None:
    by_sid: dict[str, list[Row]] = {}
    for row in corpus.rows:
        by_sid.setdefault(row.sid, []).append(row)
    summaries = []
    cursor = None
    while True:
        page = corpus.query.sessions(metadata={"plan": "pro"}, limit=3, cursor=cursor)
        summaries.extend(page.sessions)
        if (cursor := page.next_cursor) is None:
            break
    expected = sorted((sid for sid, rows in by_sid.items() if rows[0].metadata["plan"] == "pro"),
                      key=lambda sid: (by_sid[sid][-1].created_ms, sid), reverse=True)
    assert [s.session_id for s in summaries] == expected
    first = summaries[0]
    rows = by_sid[first.session_id]
    assert first.message_count == len(rows)
    assert first.first_activity_ms == rows[0].created_ms
    assert first.last_activity_ms == rows[-1].created_ms
    assert first.metadata == rows[0].metadata
    bob = corpus.query.sessions(user_id="bob").sessions
    assert {s.session_id for s in bob} == {sid for sid, r in by_sid.items() if r[0].user == "bob"}
    # active in a window: last activity at/after since, first activity before until
    pivot = corpus.rows[len(corpus.rows) // 2].created_ms
    window = corpus.query.sessions(active_since=pivot / 1000, active_until=pivot / 1000 + 1,
                                   limit=1000).sessions
    assert {s.session_id for s in window} == {
        sid for sid, r in by_sid.items()
        if r[-1].created_ms >= pivot and r[0].created_ms < pivot + 1000
    }


def test_export_import_round_trip(corpus: Corpus) -> None:
    out = io.BytesIO()
    counts = corpus.query.export_to(out, user_id="alice")
    lines = out.getvalue().splitlines(keepends=True)
    alice = [row for row in corpus.rows if row.user == "alice"]
    assert counts["messages"] == len(alice)
    assert counts["sessions"] == len({row.sid for row in alice})
    assert all(json.loads(line)["type"] in ("session", "message") for line in lines)
    target = ArchiveQuery(corpus.store.engine, namespace=f"imp-{uuid.uuid4().hex[:8]}")
    report = target.import_jsonl(lines)
    assert (report.sessions, report.messages) == (counts["sessions"], counts["messages"])
    again = io.BytesIO()
    target.export_to(again, user_id="alice")
    assert again.getvalue() == out.getvalue()  # identical, byte for byte
    copy = ArchiveStore(corpus.store.engine, namespace=target.namespace)
    for sid in sorted({row.sid for row in alice}):
        original, restored = corpus.store.get(sid), copy.get(sid)
        assert restored.messages == original.messages
        assert (restored.version, restored.metadata, restored.user_id) == (
            original.version, original.metadata, original.user_id)
    with pytest.raises(SessionExists):
        target.import_jsonl(lines)  # nothing half-imported: one transaction
    by_ids = io.BytesIO()
    corpus.query.export_to(by_ids, session_ids=["s000", "s001"])
    assert by_ids.getvalue().count(b'"type":"session"') == 2
    with pytest.raises(InvalidInput):
        list(corpus.query.export())


def test_erase_every_tier(pg_engine: sa.Engine, redis_client: Any, redis_prefix: str) -> None:
    namespace = f"erase-{uuid.uuid4().hex[:8]}"
    store = TieredStore.from_clients(redis=redis_client, engine=pg_engine, namespace=namespace,
                                     prefix=redis_prefix, durability="write_through")
    hot = TieredStore.from_clients(redis=redis_client, engine=pg_engine, namespace=namespace,
                                   prefix=redis_prefix)
    try:
        for i in range(5):
            store.save(f"wt-{i}", [Message("user", f"hello {i}")], user_id="victim")
            hot.save(f"hot-{i}", [Message("user", f"hot {i}")], user_id="victim")
            store.save(f"keep-{i}", [Message("user", f"keep {i}")], user_id="bystander")
        assert store.archive is not None
        store.archive.save("cold-0", [Message("user", "archived only")], user_id="victim")
        for sid in ("wt-0", "hot-0", "keep-0"):
            store.load(sid)  # into memory
        before = {f"keep-{i}": store.load(f"keep-{i}") for i in range(5)}

        report = erase(store, "victim")

        assert report.archive_sessions == 6  # wt-*, cold-0 (hot-* never archived)
        assert report.redis_sessions == 10
        assert report.memory_sessions == 2  # wt-0 and hot-0 were cached here
        assert report.session_ids == sorted(
            [f"wt-{i}" for i in range(5)] + [f"hot-{i}" for i in range(5)] + ["cold-0"])
        for sid in report.session_ids:
            assert not store.exists(sid)
            assert store.memory is not None and store.memory.peek(sid) is None
        keys = [key.decode() for key in redis_client.scan_iter(
            match=f"{redis_prefix}:{namespace}:*", count=1000)]
        # only delete tombstones remain (no content; they expire with tombstone_ttl)
        left = [key for key in keys if "victim" in key or "wt-" in key or "hot-" in key]
        assert left and all(":d:" in key for key in left)
        assert all(redis_client.pttl(key) > 0 for key in left)
        query = ArchiveQuery(pg_engine, namespace=namespace)
        assert query.session_ids("victim") == []
        assert query.search(user_id="victim").hits == []
        assert {sid: store.load(sid) for sid in before} == before  # bystander untouched
        assert erase(store, "victim").session_ids == []  # idempotent
    finally:
        for sid in [f"keep-{i}" for i in range(5)]:
            store.delete(sid)
        hot.close()
        store.close()


_EXPORT_CHILD = """
import json, sys, tracemalloc
def peak_rss():  # VmHWM: unlike ru_maxrss, not inherited from the parent at spawn
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
from tieredstore.query import ArchiveQuery
tracemalloc.start()
q = ArchiveQuery(sys.argv[1], namespace=sys.argv[2])
with open(sys.argv[3], "wb") as out:
    counts = q.export_to(out, user_id="heavy")
q.close()
print(json.dumps({**counts, "tracemalloc_peak": tracemalloc.get_traced_memory()[1],
                  "peak_rss": peak_rss()}))
"""


def test_export_100k_messages_keeps_memory_flat(pg_database: Callable[[], str],
                                                 tmp_path: Path) -> None:
    """A user with 100 000 messages (~40 MB) exports with a few MB of Python memory.

    On a database of its own: 200 000 rows come and go, which would move the
    planner statistics other tests' plans rely on.
    """
    from tieredstore import migrate

    pg_url = pg_database()
    migrate(pg_url)
    namespace = f"heavy-{uuid.uuid4().hex[:8]}"
    query = ArchiveQuery(pg_url, namespace=namespace)
    text = "lorem ipsum dolor sit amet " * 12

    def lines() -> Iterator[bytes]:
        for s in range(100):
            yield json.dumps({
                "type": "session", "session_id": f"h{s:03d}", "user_id": "heavy",
                "metadata": {}, "created_ms": 1, "updated_ms": 2, "expires_ms": None,
                "ttl_ms": None, "version": 1000, "message_count": 1000, "next_seq": 1000,
                "base_seq": 0, "lead": 0}).encode()
            for seq in range(1000):
                yield (f'{{"type":"message","session_id":"h{s:03d}","seq":{seq},'
                       f'"created_ms":{seq},"message":{{"role":"user","content":'
                       f'"{seq} {text}"}}}}').encode()

    try:
        assert query.import_jsonl(lines()).messages == 100_000
        path = tmp_path / "heavy.jsonl"
        done = subprocess.run(
            [sys.executable, "-c", _EXPORT_CHILD,
             normalize_url(pg_url).render_as_string(hide_password=False), namespace, str(path)],
            capture_output=True, text=True, check=True,
        )
        result = json.loads(done.stdout)
        size = path.stat().st_size
        print(f"export: {result['messages']} messages, {size / 2**20:.1f} MiB, "
              f"tracemalloc peak {result['tracemalloc_peak'] / 2**20:.2f} MiB, "
              f"peak RSS {result['peak_rss'] / 2**20:.1f} MiB")
        assert result["messages"] == 100_000
        assert size > 30 * 2**20
        assert result["tracemalloc_peak"] < 8 * 2**20  # far below the export's size
        assert result["peak_rss"] < 150 * 2**20
        target = ArchiveQuery(pg_url, namespace=namespace + "-re")
        try:
            with path.open("rb") as fp:
                assert target.import_jsonl(fp).messages == 100_000
            assert b"".join(target.export(user_id="heavy")) == path.read_bytes()
        finally:
            target.delete_user("heavy")
            target.close()
    finally:
        query.delete_user("heavy")
        query.close()


@pytest.mark.parametrize("backend", ["pg", "sqlite"])
def test_async_queries_match_the_sync_ones(backend: str, request: pytest.FixtureRequest) -> None:
    """AsyncArchiveQuery runs the same queries on the async engine, with the same answers."""
    import asyncio

    from tieredstore.query import AsyncArchiveQuery
    from tieredstore.tiers.archive import create_async_engine

    url = request.getfixturevalue("pg_url" if backend == "pg" else "sqlite_url")
    namespace = f"aq-{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    store = ArchiveStore(engine, namespace=namespace)
    for i in range(6):
        store.save(f"s{i}", [{"role": "user", "content": f"invoice number {i} please"},
                             {"role": "assistant", "content": "refund approved"}],
                   user_id=f"u{i % 2}", metadata={"plan": "pro" if i % 3 else "free"})
    sync = ArchiveQuery(store)

    async def run() -> tuple[Any, ...]:
        async_engine = create_async_engine(url)
        query = AsyncArchiveQuery(async_engine, namespace=namespace)
        try:
            hits = await query.search("invoice", user_id="u1", limit=2)
            rest = await query.search("invoice", user_id="u1", limit=2, cursor=hits.next_cursor)
            summaries = await query.sessions(metadata={"plan": "pro"})
            lines = [line async for line in query.export(user_id="u0")]
            return hits, rest, summaries, lines, await query.stats()
        finally:
            await async_engine.dispose()

    try:
        hits, rest, summaries, lines, stats = asyncio.run(run())
        assert hits == sync.search("invoice", user_id="u1", limit=2)
        assert len(hits.hits) == 2
        assert rest == sync.search("invoice", user_id="u1", limit=2, cursor=hits.next_cursor)
        assert summaries == sync.sessions(metadata={"plan": "pro"})
        assert {s.session_id for s in summaries.sessions} == {"s1", "s2", "s4", "s5"}
        assert lines == list(sync.export(user_id="u0"))
        assert len(lines) == 3 * 3
        assert stats == sync.stats()
    finally:
        for i in range(6):
            store.delete(f"s{i}")
        engine.dispose()


def test_a_search_without_text_snips_the_start_of_each_message(corpus: Corpus) -> None:
    long_text = "word " * 60
    corpus.store.save("snip-long", [Message("user", long_text), Message("user", "short")])
    try:
        page = corpus.query.search(session_ids=["snip-long"])
        snippets = sorted(hit.snippet for hit in page.hits)
        assert snippets == sorted(["short", long_text[:160] + "…"])
    finally:
        corpus.store.delete("snip-long")
