"""Monthly partitions and retention on a real PostgreSQL (and SQLite, which has no partitions).

Each test runs on a database of its own: dropping a month must only ever
see the sessions the test wrote.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import FakeClock
from tieredstore import InvalidInput, Message, SessionNotFound, maintenance, migrate
from tieredstore.query import ArchiveQuery
from tieredstore.schema import MESSAGES, SESSIONS, normalize_url
from tieredstore.store import TieredStore
from tieredstore.tiers.archive import ArchiveStore
from tieredstore.tiers.archive.partitions import month_of, partition_name

JAN = datetime(2025, 1, 15, tzinfo=UTC).timestamp()
FEB = datetime(2025, 2, 15, tzinfo=UTC).timestamp()
JUN = datetime(2025, 6, 15, tzinfo=UTC).timestamp()
DAY = 86_400.0


@pytest.fixture(params=["pg", "sqlite"])
def engine(request: pytest.FixtureRequest, pg_database: Callable[[], str],
           tmp_path: Path) -> Iterator[sa.Engine]:
    url = pg_database() if request.param == "pg" else f"sqlite:///{tmp_path / 'a.db'}"
    migrate(url)
    eng = sa.create_engine(normalize_url(url))
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(JAN)


@pytest.fixture
def make(engine: sa.Engine, clock: FakeClock) -> Iterator[Callable[..., ArchiveStore]]:
    made: list[ArchiveStore] = []

    def build(namespace: str = "app") -> ArchiveStore:
        store = ArchiveStore(engine, namespace=namespace, clock=clock)
        made.append(store)
        return store

    yield build
    for store in made:
        store.close()


def _pg(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _msgs(sid: str, n: int) -> list[Message]:
    return [Message("user", f"{sid} message {i}") for i in range(n)]


def _names(store: ArchiveStore) -> set[str]:
    return {p.name for p in store.partitions()}


def _counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        sessions = conn.execute(sa.text(f"SELECT count(*) FROM {SESSIONS} WHERE version > 0"))
        messages = conn.execute(sa.text(f"SELECT count(*) FROM {MESSAGES}"))
        return int(sessions.scalar_one()), int(messages.scalar_one())


def _tiered(archive: ArchiveStore) -> TieredStore:
    return TieredStore(archive=archive)


def _fill(store: ArchiveStore, clock: FakeClock) -> None:
    """January: three sessions and one on legal hold; February: four; June: two."""
    clock.now = JAN
    for i in range(3):
        store.save(f"jan-{i}", _msgs(f"jan-{i}", 5))
    store.save("jan-held", _msgs("jan-held", 4), metadata={"legal_hold": True})
    clock.now = FEB
    for i in range(4):
        store.save(f"feb-{i}", _msgs(f"feb-{i}", 3))
    clock.now = JUN
    for i in range(2):
        store.save(f"jun-{i}", _msgs(f"jun-{i}", 2))


def test_months_come_from_the_generation_time_and_partitions_exist(
        make: Callable[..., ArchiveStore], clock: FakeClock, engine: sa.Engine) -> None:
    store = make()
    _fill(store, clock)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text(f"SELECT session_id, month FROM {SESSIONS}")).all())
        bad = conn.execute(sa.text(
            f"SELECT count(*) FROM {MESSAGES} m JOIN {SESSIONS} s ON s.namespace = m.namespace "
            "AND s.session_id = m.session_id WHERE m.month <> s.month")).scalar_one()
    assert rows["jan-0"] == rows["jan-held"] == 202501
    assert rows["feb-3"] == 202502 and rows["jun-1"] == 202506
    assert bad == 0
    if _pg(engine):
        assert {partition_name(m) for m in (202501, 202502, 202506)} <= _names(store)
    else:
        assert store.partitions() == []


def test_a_write_into_a_month_without_a_partition_succeeds(
        make: Callable[..., ArchiveStore], clock: FakeClock, engine: sa.Engine) -> None:
    store = make()
    clock.now = datetime(2031, 5, 2, tzinfo=UTC).timestamp()
    assert partition_name(203105) not in _names(store)
    store.save("future", _msgs("future", 3))
    store.append("future", Message("assistant", "still there"))
    store.fork("future", "future-copy")
    assert [m.content for m in store.load("future-copy")][-1] == "still there"
    if _pg(engine):
        assert partition_name(203105) in _names(store)
    # an import of a session created in a month without a partition
    line = ('{"type":"session","session_id":"imported","user_id":null,"metadata":{},'
            '"created_ms":1956528000000,"updated_ms":1956528000000,"expires_ms":null,'
            '"ttl_ms":null,"version":1,"message_count":1,"next_seq":1,"base_seq":0,"lead":0}\n'
            '{"type":"message","session_id":"imported","seq":0,"created_ms":1956528000000,'
            '"message":{"role":"user","content":"from an export"}}\n')
    ArchiveQuery(engine, namespace="app").import_jsonl(line.encode())
    assert store.load("imported")[0].content == "from an export"
    if _pg(engine):
        assert partition_name(month_of(1956528000000)) in _names(store)


def test_partitions_are_made_ahead_once_even_by_racing_workers(
        make: Callable[..., ArchiveStore], clock: FakeClock, engine: sa.Engine) -> None:
    clock.now = datetime(2030, 11, 20, tzinfo=UTC).timestamp()
    stores = [make() for _ in range(4)]
    created: list[list[str]] = []
    barrier = threading.Barrier(len(stores))

    def ahead(store: ArchiveStore) -> None:
        barrier.wait()
        created.append(store.ensure_partitions(ahead=2))

    threads = [threading.Thread(target=ahead, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wanted = {partition_name(m) for m in (203011, 203012, 203101)}
    if not _pg(engine):
        assert created == [[]] * 4
        return
    assert sorted(name for names in created for name in names) == sorted(wanted)
    assert wanted <= _names(stores[0])
    assert stores[0].ensure_partitions(ahead=2) == []
    with pytest.raises(InvalidInput):
        stores[0].ensure_partitions(ahead=-1)
    result = maintenance.partitions(_tiered(stores[0]), ahead=4)
    assert result.partitions == 2  # 2031-02 and 2031-03


def test_retain_drops_whole_months_deletes_the_rest_and_spares_holds(
        make: Callable[..., ArchiveStore], clock: FakeClock, engine: sa.Engine) -> None:
    store = make()
    _fill(store, clock)
    tiered = _tiered(store)
    pg = _pg(engine)
    dry = maintenance.retain(tiered, retention_days=30, now=JUN, dry_run=True, batch_size=2)
    assert _counts(engine) == (10, 15 + 4 + 12 + 4)
    result = maintenance.retain(tiered, retention_days=30, now=JUN, batch_size=2)
    assert (result.changed, result.messages, result.skipped) == (7, 27, 1)
    assert result.partitions == (1 if pg else 0)
    assert (dry.changed, dry.messages, dry.skipped, dry.partitions) == (
        result.changed, result.messages, result.skipped, result.partitions)
    assert dry.dry_run and not result.remaining
    for sid in [*(f"jan-{i}" for i in range(3)), *(f"feb-{i}" for i in range(4))]:
        assert not store.exists(sid)
    assert len(store.load("jan-held")) == 4
    assert [len(store.load(f"jun-{i}")) for i in range(2)] == [2, 2]
    assert _counts(engine) == (3, 8)
    if pg:
        names = _names(store)
        assert partition_name(202502) not in names and partition_name(202501) in names
    again = maintenance.retain(tiered, retention_days=30, now=JUN)
    assert (again.changed, again.messages, again.skipped, again.partitions) == (0, 0, 1, 0)

    # the hold is lifted (that is activity): 31 days later January goes whole
    store.merge_metadata("jan-held", {"legal_hold": False})
    clock.now = JUN + 31 * DAY
    last = maintenance.retain(tiered, retention_days=30, now=clock.now)
    assert (last.changed, last.messages) == (3, 8)  # jan-held and both June sessions
    assert last.partitions == (2 if pg else 0)
    assert _counts(engine) == (0, 0)
    with pytest.raises(SessionNotFound):
        store.load("jan-held")


def test_retain_keeps_other_namespaces_and_their_months(
        make: Callable[..., ArchiveStore], clock: FakeClock, engine: sa.Engine) -> None:
    ours, theirs = make("app"), make("other")
    clock.now = FEB
    ours.save("a", _msgs("a", 3))
    theirs.save("b", _msgs("b", 3))
    result = maintenance.retain(_tiered(ours), retention_days=30, now=JUN)
    assert (result.changed, result.messages, result.partitions) == (1, 3, 0)
    assert len(theirs.load("b")) == 3 and not ours.exists("a")
    if _pg(engine):
        assert partition_name(202502) in _names(ours)


def _three_in_february(make: Callable[..., ArchiveStore], clock: FakeClock,
                       engine: sa.Engine) -> ArchiveStore:
    """A store with three February sessions of two messages (PostgreSQL only)."""
    if not _pg(engine):
        pytest.skip("partitions are PostgreSQL's")
    store = make()
    clock.now = FEB
    for i in range(3):
        store.save(f"feb-{i}", _msgs(f"feb-{i}", 2))
    return store


def test_a_drop_that_waits_on_a_reader_gives_way_to_batches(
        make: Callable[..., ArchiveStore], clock: FakeClock, engine: sa.Engine) -> None:
    store = _three_in_february(make, clock, engine)
    with engine.connect() as reader:  # a long query holds the messages table's lock
        reader.execute(sa.text(f"SELECT count(*) FROM {MESSAGES}"))
        result = maintenance.retain(_tiered(store), retention_days=30, now=JUN)
        reader.rollback()
    assert (result.partitions, result.changed, result.messages) == (0, 3, 6)
    assert partition_name(202502) in _names(store)
    assert _counts(engine) == (0, 0)


def test_retain_spares_sessions_alive_in_redis(
        engine: sa.Engine, clock: FakeClock, redis_client: Any, redis_prefix: str) -> None:
    namespace = f"ret-{uuid.uuid4().hex[:8]}"
    clock.now = FEB
    old = ArchiveStore(engine, namespace=namespace, clock=clock)
    for sid in ("cold", "hot"):
        old.save(sid, _msgs(sid, 2))
    store = TieredStore.from_clients(redis=redis_client, engine=engine, namespace=namespace,
                                     prefix=redis_prefix, memory_max_bytes=None, listen=False)
    try:
        assert store.redis is not None
        store.redis.save("hot", _msgs("hot", 3))
        result = maintenance.retain(store, retention_days=30, now=JUN)
        assert (result.changed, result.messages, result.skipped) == (1, 2, 1)
        assert not old.exists("cold") and old.exists("hot")
        store.delete("hot")
    finally:
        store.close()
        old.close()


def test_appends_racing_a_drop_are_never_lost(
        make: Callable[..., ArchiveStore], clock: FakeClock, engine: sa.Engine) -> None:
    """A writer appends to an old session while retain drops its month, again and again."""
    if not _pg(engine):
        pytest.skip("partitions are PostgreSQL's")
    store = make()
    for round_ in range(5):
        clock.now = FEB
        sid = f"old-{round_}"
        store.save(sid, _msgs(sid, 2))
        clock.now = JUN
        acked: list[str] = []
        stop = threading.Event()

        def writer(sid: str = sid, acked: list[str] = acked,
                   stop: threading.Event = stop) -> None:
            n = 0
            while not stop.is_set() and n < 200:
                text = f"late {n}"
                store.append(sid, Message("user", text))
                acked.append(text)
                n += 1

        thread = threading.Thread(target=writer)
        thread.start()
        maintenance.retain(_tiered(store), retention_days=30, now=JUN)
        stop.set()
        thread.join(60)
        stored = [m.content for m in store.load(sid)] if store.exists(sid) else []
        assert [t for t in acked if t not in stored] == []


def test_retain_needs_a_positive_period(make: Callable[..., ArchiveStore]) -> None:
    tiered = _tiered(make())
    assert maintenance.retain(tiered, retention_days=None).changed == 0
    for bad in (0, -1.0):
        with pytest.raises(InvalidInput):
            maintenance.retain(tiered, retention_days=bad)


def test_the_async_store_writes_into_new_months_and_makes_them_ahead(
        pg_database: Callable[[], str]) -> None:
    import asyncio

    from tieredstore.tiers.archive import AsyncArchiveStore

    url = pg_database()
    migrate(url)
    when = datetime(2033, 5, 3, tzinfo=UTC).timestamp()

    async def run() -> tuple[list[Message], list[str], list[str]]:
        store = AsyncArchiveStore.from_url(url, namespace="app", clock=lambda: when)
        try:
            await store.save("x", [Message("user", "hi")])
            loaded = await store.load("x")
            made = await store.ensure_partitions(2)
            names = [p.name for p in await store.partitions()]
            result = await store.retain_batch(int(when * 1000) + 1, batch_size=10)
            assert (result.sessions, result.messages) == (1, 1)
            return loaded, made, names
        finally:
            await store.aclose()

    loaded, made, names = asyncio.run(run())
    assert loaded == [Message("user", "hi")]
    assert made == [partition_name(203306), partition_name(203307)]
    assert partition_name(203305) in names


def test_a_session_arriving_in_a_month_being_dropped_is_kept(
        make: Callable[..., ArchiveStore], clock: FakeClock, engine: sa.Engine) -> None:
    """A first archival of a long-lived session lands in an old month while retain runs.

    Its rows are written by a transaction the drop must wait for: the drop
    then sees the session (active: it keeps the month) rather than dropping
    the partition under messages it never saw.
    """
    store = _three_in_february(make, clock, engine)
    clock.now = JUN
    born, active = int(FEB * 1000), int(JUN * 1000)
    holding = threading.Event()
    release = threading.Event()

    def late_archival() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(
                f"INSERT INTO {SESSIONS} (namespace, session_id, user_id, metadata, created_ms, "
                "updated_ms, version, message_count, next_seq, base_seq, lead, month) VALUES "
                "('app', 'long-lived', NULL, '{}', :born, :active, 3, 1, 1, 0, 0, 202502)"),
                {"born": born, "active": active})
            conn.execute(sa.text(
                f"INSERT INTO {MESSAGES} (namespace, session_id, seq, month, created_ms, role, "
                "kind, payload, content_text) VALUES ('app', 'long-lived', 0, 202502, :active, "
                "'user', 'u', '{\"role\":\"user\",\"content\":\"still here\"}', '')"),
                {"active": active})
            holding.set()
            release.wait(30)

    writer = threading.Thread(target=late_archival)
    writer.start()
    assert holding.wait(30)
    results: list[Any] = []
    retainer = threading.Thread(target=lambda: results.append(
        maintenance.retain(_tiered(store), retention_days=30, now=JUN)))
    retainer.start()
    with engine.connect() as probe:  # the drop is queued behind the writer's lock
        for _ in range(300):
            waiting = probe.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar_one()
            if waiting:
                break
            threading.Event().wait(0.01)
    release.set()
    writer.join(30)
    retainer.join(60)
    (result,) = results
    assert result.partitions == 0
    assert [m.content for m in store.load("long-lived")] == ["still here"]
    assert not any(store.exists(f"feb-{i}") for i in range(3))  # by batch instead
    assert partition_name(202502) in _names(store)
