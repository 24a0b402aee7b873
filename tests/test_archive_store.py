"""What is special to ``ArchiveStore``; the shared contract lives in test_conformance.

Exact payload bytes, the error for missing tables and for a dead port, URL
rewriting, the indexes (and that ``list`` walks them without sorting), namespace
isolation, SQLite's connection setup and cross-engine locking, seqs, and the
methods the tiered layer uses (snapshots, history pages, mirroring writes).
Every test uses the run's own PostgreSQL database or SQLite file (see
``conftest``) and a namespace of its own.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from tests.conftest import FakeClock
from tieredstore import ArchiveStore, BackendUnavailable, InvalidInput, SchemaNotReady, schema
from tieredstore.codec import resident_nbytes
from tieredstore.core import prepare_batch
from tieredstore.model import FrozenDict
from tieredstore.schema import MESSAGES, SESSIONS, normalize_url
from tieredstore.tiers.transfer import SessionFenced, WriteReceipt

USER = {"role": "user", "content": "Hello"}
ASSISTANT = {"role": "assistant", "content": "Hi there!"}


def pairs(part: Any) -> Any:
    """The ``(seq, message)`` pairs of a history part (``None`` stays ``None``)."""
    return None if part is None else part.pairs


def msg(i: int, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": f"message {i}"}


@pytest.fixture(params=["pg", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    if request.param == "pg":
        yield request.getfixturevalue("pg_engine")
        return
    eng = sa.create_engine(request.getfixturevalue("sqlite_url"))
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(engine: sa.Engine, clock: FakeClock) -> Iterator[Callable[..., ArchiveStore]]:
    """Stores on the fixture's engine, each in a fresh namespace unless given one."""
    stores: list[ArchiveStore] = []

    def build(namespace: str | None = None, **options: Any) -> ArchiveStore:
        store = ArchiveStore(
            engine, namespace=namespace or f"ns-{uuid.uuid4().hex[:12]}", clock=clock, **options
        )
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()


@pytest.fixture
def store(make: Callable[..., ArchiveStore]) -> ArchiveStore:
    return make()


def _payloads(store: ArchiveStore, sid: str) -> list[bytes]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT payload FROM tieredstore_messages "
                "WHERE namespace = :ns AND session_id = :sid ORDER BY seq"
            ),
            {"ns": store.namespace, "sid": sid},
        ).scalars()
        return [bytes(p) for p in rows]


def _seqs(store: ArchiveStore, sid: str) -> list[int]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT seq FROM tieredstore_messages "
                    "WHERE namespace = :ns AND session_id = :sid ORDER BY seq"
                ),
                {"ns": store.namespace, "sid": sid},
            ).scalars()
        )


# -- payloads -------------------------------------------------------------------


def test_payload_bytes_are_stored_exactly(store: ArchiveStore) -> None:
    odd = {
        "zeta": 1,
        "role": "user",
        "content": 'nul \x00 inside, emoji 🧑‍🚀, quote " and \\ backslash',
        "alpha": {"z": [3, 2, 1], "a": None, "\x00key": "v"},
        "big": 2**64 - 1,
        "float": 0.1,
    }
    store.save("s1", [odd])
    store.append("s1", {"content": [{"type": "text", "text": "a\x00b"}], "role": "tool\x00x"})
    payloads = _payloads(store, "s1")
    assert payloads[0] == orjson.dumps(odd)
    loaded = store.load("s1")
    assert loaded[0] == odd
    assert list(loaded[0]) == list(odd)
    assert list(loaded[0]["alpha"]) == ["z", "a", "\x00key"]
    assert loaded[1]["role"] == "tool\x00x"
    assert orjson.dumps(loaded[1]) == payloads[1]


def test_search_text_is_the_plain_text_and_stored_only_when_needed(store: ArchiveStore) -> None:
    """PostgreSQL reads the text from the payload; a row stores it only for U+0000."""
    store.save(
        "s1",
        [
            {"role": "user", "content": "plain \x00 text"},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "image"},
                                         {"type": "text", "text": "two"}, "loose"]},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "user", "content": "a \\u0000 b"},
        ],
    )
    pg = store.engine.dialect.name == "postgresql"
    text = "tieredstore_message_text(payload, content_text)" if pg else "content_text"
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT {text}, content_text FROM tieredstore_messages "
                "WHERE namespace = :ns ORDER BY seq"
            ),
            {"ns": store.namespace},
        ).all()
    assert [r[0] for r in rows] == ["plain  text", "one\ntwo", None, "a \\u0000 b"]
    stored = [r[1] for r in rows]
    if pg:
        assert stored == ["plain  text", "", "", "a \\u0000 b"]
    else:
        assert stored == [r[0] for r in rows]


# -- errors ---------------------------------------------------------------------


def test_missing_tables_say_to_migrate_on_sqlite(tmp_path: Path) -> None:
    with ArchiveStore.from_url(f"sqlite:///{tmp_path / 'empty.db'}") as store:
        with pytest.raises(SchemaNotReady, match=r"tieredstore\.migrate") as info:
            store.save("s1", [USER])
        assert isinstance(info.value.__cause__, sa.exc.DBAPIError)
        with pytest.raises(BackendUnavailable, match="migrate"):
            store.load("s1")


def test_missing_tables_say_to_migrate_on_postgres(pg_database: Callable[[], str]) -> None:
    with ArchiveStore.from_url(pg_database()) as store:
        for call in (lambda: store.append("s1", USER), lambda: store.list()):
            with pytest.raises(SchemaNotReady, match=r"tieredstore\.migrate"):
                call()


@pytest.mark.parametrize(
    "url", ["postgresql://postgres@127.0.0.1:1/none", "postgresql+psycopg://u@127.0.0.1:1/x"]
)
def test_unreachable_database_is_backend_unavailable(url: str) -> None:
    # Connecting is lazy: construction succeeds. No breaker: every call must try.
    store = ArchiveStore.from_url(url, breaker=False)
    try:
        for call in (
            lambda: store.save("s1", [USER]),
            lambda: store.append("s1", USER),
            lambda: store.load("s1"),
            lambda: store.list(),
            lambda: store.delete("s1"),
        ):
            with pytest.raises(BackendUnavailable) as info:
                call()
            assert info.value.backend == "database"
            assert isinstance(info.value.__cause__, sa.exc.SQLAlchemyError)
            assert "127.0.0.1:1" in str(info.value)
    finally:
        store.close()


def test_needs_exactly_one_of_engine_and_url(engine: sa.Engine) -> None:
    with pytest.raises(InvalidInput):
        ArchiveStore()
    with pytest.raises(InvalidInput):
        ArchiveStore(engine, url="sqlite://")
    with pytest.raises(InvalidInput):
        ArchiveStore(engine, namespace="has space")


# -- construction -----------------------------------------------------------------


def test_urls_are_rewritten_to_psycopg3() -> None:
    for plain in ("postgresql://u@h/db", "postgres://u@h/db"):
        assert normalize_url(plain).drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    store = ArchiveStore.from_url("postgresql://u:secret@127.0.0.1:1/db")
    assert store.engine.url.drivername == "postgresql+psycopg"
    assert store.engine.url.password == "secret"
    store.close()


def test_from_url_owns_its_engine_but_not_a_given_one(pg_url: str, engine: sa.Engine) -> None:
    owned = ArchiveStore.from_url(pg_url, namespace=f"owned-{uuid.uuid4().hex[:8]}")
    owned.save("s1", [USER])
    owned.close()
    owned.close()
    shared = ArchiveStore(engine)
    shared.close()
    with engine.connect() as conn:  # still usable
        conn.execute(sa.text("SELECT 1"))


# -- schema -----------------------------------------------------------------------


def test_indexes_exist(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    sessions = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(SESSIONS)}
    assert sessions["ix_tieredstore_sessions_activity"] == ["namespace", "updated_ms", "session_id"]
    assert sessions["ix_tieredstore_sessions_user"] == [
        "namespace",
        "user_id",
        "updated_ms",
        "session_id",
    ]
    assert sessions["ix_tieredstore_sessions_expiry"] == ["namespace", "expires_ms"]
    messages = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(MESSAGES)}
    assert messages["ix_tieredstore_messages_created"] == ["namespace", "created_ms"]
    assert inspector.get_pk_constraint("tieredstore_messages")["constrained_columns"] == [
        "namespace",
        "session_id",
        "seq",
        "month",
    ]
    # the store deletes a session's messages itself: no foreign key to cascade row by row
    assert inspector.get_foreign_keys("tieredstore_messages") == []
    assert sessions["ix_tieredstore_sessions_month"] == ["month", "namespace"]


def _plan(engine: sa.Engine, sql: str, params: dict[str, Any]) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Ask whether an index can serve the query in order, whatever the table's
            # statistics (other tests fill it): plans that must sort stay possible,
            # only costlier, so a Sort node still shows when no index fits.
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                conn.execute(sa.text(f"SET {setting} = off"))
            rows = conn.execute(sa.text("EXPLAIN " + sql), params).scalars().all()
        else:
            rows = [r[-1] for r in conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql), params)]
        conn.rollback()
    return "\n".join(str(r) for r in rows)


@pytest.mark.parametrize("by_user", [False, True])
def test_list_walks_an_index_without_sorting(engine: sa.Engine, by_user: bool) -> None:
    user = "AND user_id = :user " if by_user else ""
    sql = (
        "SELECT session_id FROM tieredstore_sessions WHERE namespace = :ns "
        f"AND (expires_ms IS NULL OR expires_ms > :now) {user}"
        "AND (updated_ms, session_id) < (:ms, :sid) "
        "ORDER BY updated_ms DESC, session_id DESC LIMIT 10"
    )
    plan = _plan(engine, sql, {"ns": "n", "now": 0, "user": "u", "ms": 10**15, "sid": "x"})
    index = "ix_tieredstore_sessions_user" if by_user else "ix_tieredstore_sessions_activity"
    assert index in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


def test_load_last_reads_the_primary_key_backwards(engine: sa.Engine) -> None:
    sql = (
        "SELECT payload FROM tieredstore_messages WHERE namespace = :ns AND session_id = :sid "
        "AND month = (SELECT month FROM tieredstore_sessions WHERE namespace = :ns "
        "AND session_id = :sid) ORDER BY seq DESC LIMIT 20"
    )
    plan = _plan(engine, sql, {"ns": "n", "sid": "s"})
    # partitions merge in seq order (Merge Append), each read backwards: no Sort node
    assert not re.search(r"(^|->\s+)Sort\b", plan, re.M) and "TEMP B-TREE" not in plan, plan


# -- namespaces ---------------------------------------------------------------------


def counts(store: ArchiveStore) -> dict[str, int]:
    """``stats()`` without the circuit breaker's part."""
    return {k: v for k, v in store.stats().items() if k != "breaker"}


def test_namespaces_are_isolated(make: Callable[..., ArchiveStore]) -> None:
    a, b = make(), make()
    a.save("same", [USER], metadata={"who": "a"}, user_id="u")
    b.save("same", [ASSISTANT, msg(1)], metadata={"who": "b"}, user_id="u")
    assert a.load("same") == [USER]
    assert b.load("same") == [ASSISTANT, msg(1)]
    assert a.get("same").metadata == {"who": "a"}
    assert a.list(user_id="u").ids == ["same"]
    assert a.delete("same") is True
    assert not a.exists("same")
    assert b.load("same") == [ASSISTANT, msg(1)]
    assert b.fork("same", "copy") == 1
    assert not a.exists("copy")
    assert counts(b) == {"sessions": 2, "expired_sessions": 0, "tombstones": 0, "messages": 4}
    assert counts(a) == {"sessions": 0, "expired_sessions": 0, "tombstones": 1, "messages": 0}


# -- expiry and seqs ----------------------------------------------------------------


def test_purge_expired_removes_rows(make: Callable[..., ArchiveStore], clock: FakeClock) -> None:
    store = make()
    for i in range(5):
        store.save(f"short{i}", [USER, ASSISTANT], ttl=10)
    store.save("forever", [USER])
    clock.advance(11)
    assert counts(store) == {"sessions": 6, "expired_sessions": 5, "tombstones": 0, "messages": 11}
    assert store.purge_expired(batch_size=2) == 5
    assert counts(store) == {"sessions": 1, "expired_sessions": 0, "tombstones": 0, "messages": 1}
    assert store.purge_expired() == 0


def test_seqs_only_grow(store: ArchiveStore, clock: FakeClock) -> None:
    store.save("s1", [msg(0), msg(1)])
    store.append("s1", msg(2))
    assert _seqs(store, "s1") == [0, 1, 2]
    store.save("s1", [msg(3)])
    assert _seqs(store, "s1") == [3]
    store.append("s1", msg(4), msg(5))
    assert _seqs(store, "s1") == [3, 4, 5]
    snap = store.snapshot("s1")
    assert snap is not None
    assert (snap.base_seq, snap.next_seq, snap.seqs) == (3, 6, (3, 4, 5))
    store.delete("s1")
    store.append("s1", msg(6))
    assert _seqs(store, "s1") == [0]


def test_trim_deletes_rows_and_keeps_seqs(make: Callable[..., ArchiveStore]) -> None:
    store = make(max_messages=3)
    system = {"role": "system", "content": "rules"}
    store.save("s1", [system, msg(0)])
    for i in range(1, 6):
        store.append("s1", msg(i))
    assert store.load("s1") == [system, msg(4), msg(5)]
    assert _seqs(store, "s1") == [0, 5, 6]
    store.append("s1", *[msg(i) for i in range(6, 12)])
    assert store.load("s1") == [system, msg(10), msg(11)]
    assert store.count("s1") == 3
    assert store.stats()["messages"] == 3


# -- SQLite ---------------------------------------------------------------------------


def test_sqlite_connections_use_wal_and_foreign_keys(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    store = ArchiveStore(engine, namespace=f"ns-{uuid.uuid4().hex[:8]}")
    try:
        store.save("s1", [USER])
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        store.delete("s1")
    finally:
        engine.dispose()


def test_sqlite_appends_from_two_engines_serialise(sqlite_url: str) -> None:
    """Two engines on one file behave like two processes: BEGIN IMMEDIATE serialises them."""
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    engines = [sa.create_engine(sqlite_url) for _ in range(2)]
    stores = [ArchiveStore(e, namespace=namespace) for e in engines]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(100):
                stores[n % 2].append("hot", {"role": "user", "content": "x", "w": n, "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors[:1]
        history = stores[0].load("hot")
        assert len(history) == 400
        assert stores[1].get("hot").version == 400
        for n in range(4):
            assert [m["i"] for m in history if m["w"] == n] == list(range(100))
    finally:
        for e in engines:
            e.dispose()


# -- the tiered layer -----------------------------------------------------------------


def test_write_receipts(store: ArchiveStore, clock: FakeClock) -> None:
    batch = prepare_batch([USER, ASSISTANT], store.limits)
    first = store.write_save(
        "s1", batch, ttl_ms=60_000, metadata=None, user_id=None, expected_version=None
    )
    now = int(clock() * 1000)
    assert first == WriteReceipt(1, 0, 2, now, now, now + 60_000, 60_000)
    clock.advance(1)
    second = store.write_append(
        "s1", prepare_batch([msg(1)], store.limits), ttl_ms=None, expected_version=1
    )
    assert (second.version, second.first_seq, second.next_seq) == (2, 2, 3)
    assert (second.created_ms, second.updated_ms) == (now, now + 1000)
    assert (second.expires_ms, second.ttl_ms) == (now + 60_000, 60_000)
    third = store.write_save(
        "s1", batch, ttl_ms=None, metadata=None, user_id=None, expected_version=None
    )
    assert (third.version, third.first_seq, third.next_seq) == (3, 3, 5)


def test_snapshot_and_history_pages(store: ArchiveStore) -> None:
    store.save("s1", [msg(i) for i in range(10)], metadata={"t": 1}, user_id="u")
    assert store.snapshot("missing") is None
    snap = store.snapshot("s1", 3)
    assert snap is not None
    assert snap.messages == (msg(7), msg(8), msg(9))
    assert snap.seqs == (7, 8, 9)
    assert snap.kinds == "mmm"
    assert (snap.message_count, snap.next_seq, snap.version) == (10, 10, 1)
    assert snap.metadata == {"t": 1} and snap.user_id == "u"
    assert snap.nbytes == sum(resident_nbytes(orjson.dumps(m)) for m in snap.messages)
    assert not snap.complete
    page = pairs(store.history_page("s1", None, 4))
    assert page == [(i, msg(i)) for i in range(6, 10)]
    assert pairs(store.history_page("s1", 6, 4)) == [(i, msg(i)) for i in range(2, 6)]
    assert pairs(store.history_page("s1", 2, 4)) == [(0, msg(0)), (1, msg(1))]
    assert pairs(store.history_page("s1", 0, 4)) == []
    assert store.history_page("missing", None, 4) is None


def test_list_keys_match_list(store: ArchiveStore, clock: FakeClock) -> None:
    for i in range(5):
        store.save(f"s{i}", [USER])
        clock.advance(1)
    keys = store.list_keys(None, 3, None, "desc")
    assert [sid for _, sid in keys] == ["s4", "s3", "s2"]
    rest = store.list_keys(None, 3, keys[-1], "desc")
    assert [sid for _, sid in rest] == ["s1", "s0"]


def _receipt(version: int, first: int, n: int, created: int) -> WriteReceipt:
    return WriteReceipt(version, first, first + n, created, created + version, None, None)


def test_mirror_lands_writes_by_seq_in_any_order(store: ArchiveStore) -> None:
    created = 1_700_000_000_000
    batches = {v: prepare_batch([msg(v)], store.limits) for v in range(1, 5)}
    save = prepare_batch([msg(0), msg(1)], store.limits)
    assert store.mirror(
        "s1",
        save,
        _receipt(1, 0, 2, created),
        replace=True,
        metadata=FrozenDict({"m": 1}),
        user_id="u",
    )
    # appends v3 and v4 arrive before v2; v3 arrives twice
    assert store.mirror("s1", batches[3], _receipt(3, 3, 1, created), replace=False)
    assert store.mirror("s1", batches[4], _receipt(4, 4, 1, created), replace=False)
    assert store.mirror("s1", batches[3], _receipt(3, 3, 1, created), replace=False)
    assert store.mirror("s1", batches[2], _receipt(2, 2, 1, created), replace=False)
    session = store.get("s1")
    assert session.messages == [msg(0), msg(1), msg(2), msg(3), msg(4)]
    assert (session.version, session.message_count) == (4, 5)
    assert session.metadata == {"m": 1} and session.user_id == "u"
    # a save (v6) and an append after it (v7) land; the older save (v5) then changes nothing
    assert store.mirror("s1", batches[1], _receipt(6, 6, 1, created), replace=True)
    assert store.mirror("s1", batches[2], _receipt(7, 7, 1, created), replace=False)
    assert store.mirror("s1", save, _receipt(5, 5, 2, created), replace=True)
    assert store.load("s1") == [msg(1), msg(2)]
    assert store.get("s1").version == 7
    # a write of an older incarnation is stale; a newer incarnation replaces everything
    assert not store.mirror("s1", batches[1], _receipt(9, 0, 1, created - 1), replace=True)
    assert store.mirror("s1", batches[4], _receipt(1, 0, 1, created + 10), replace=False)
    assert store.load("s1") == [msg(4)]
    assert store.get("s1").version == 1
    # an append to a session this tier never saw leaves a gap: reported as False
    assert not store.mirror("gap", batches[1], _receipt(5, 5, 1, created), replace=False)


def test_mirrored_appends_leave_the_row_as_a_recount_would(
    store: ArchiveStore, engine: sa.Engine, clock: FakeClock
) -> None:
    """Appends mirrored after every stored seq (one statement on PostgreSQL) keep
    the count, the leading system run, the next seq and the expiry exact; what
    the statement does not take (a repeat, an older write, a detached row)
    goes the general way and changes nothing it must not."""
    created = int(clock.now * 1000)
    roles = ["system", "system", "user", "system", "assistant"]
    batches = [prepare_batch([msg(i, role)], store.limits) for i, role in enumerate(roles)]
    assert store.mirror("s1", batches[0], _receipt(1, 0, 1, created), replace=True)
    for version in range(2, 6):
        first = version - 1
        ttl = 3_600_000 if version == 3 else None
        receipt = WriteReceipt(
            version, first, first + 1, created, created + version,
            created + version + ttl if ttl else None, ttl,
        )
        assert store.mirror("s1", batches[first], receipt, replace=False)
    expected = (5, 5, 2, 5)
    table = schema.sessions
    query = sa.select(table.c.version, table.c.message_count, table.c.lead,
                      table.c.next_seq).where(table.c.namespace == store.namespace,
                                              table.c.session_id == "s1")

    def row() -> tuple[Any, ...]:
        with engine.connect() as conn:
            return tuple(conn.execute(query).one())

    assert row() == expected
    assert store.get("s1").expires_at is None  # the last write had no TTL
    assert store.load("s1") == [msg(i, role) for i, role in enumerate(roles)]
    # the same write again, then an older one: nothing changes
    assert store.mirror("s1", batches[4], _receipt(5, 4, 1, created), replace=False)
    assert store.mirror("s1", batches[3], _receipt(4, 3, 1, created), replace=False)
    assert row() == expected
    # a newer write of a detached session is refused, as every write to it is
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.namespace == store.namespace,
                                            table.c.session_id == "s1").values(detached=True))
    with pytest.raises(SessionFenced):
        store.mirror("s1", batches[2], _receipt(6, 5, 1, created), replace=False)
    assert row() == expected


def test_mirror_metadata_and_restore(make: Callable[..., ArchiveStore]) -> None:
    source, target = make(), make()
    source.save("s1", [msg(0), msg(1), msg(2)], metadata={"a": 1}, user_id="u", ttl=3600)
    snap = source.snapshot("s1")
    assert snap is not None
    assert target.restore(snap) is True
    restored, original = target.get("s1"), source.get("s1")
    for field in (
        "messages",
        "metadata",
        "user_id",
        "created_at",
        "updated_at",
        "version",
        "expires_at",
        "message_count",
    ):
        assert getattr(restored, field) == getattr(original, field), field
    assert target.snapshot("s1") == snap
    receipt = WriteReceipt(
        2, 3, 3, snap.created_ms, snap.updated_ms + 5, snap.expires_ms, snap.ttl_ms
    )
    assert target.mirror_metadata("s1", FrozenDict({"a": 2}), receipt)
    assert target.get("s1").metadata == {"a": 2}
    assert target.get("s1").version == 2
    assert not target.mirror_metadata("other", FrozenDict({}), receipt)
    # restoring an older snapshot again changes nothing
    assert target.restore(snap) is True
    assert target.get("s1").version == 2
    assert target.get("s1").metadata == {"a": 2}


def test_dead_pooled_connections_cost_reads_nothing(pg_url: str) -> None:
    """After a database restart, a read retries on a fresh connection; a write fails once."""
    app = f"ts-kill-{uuid.uuid4().hex[:8]}"
    store = ArchiveStore.from_url(
        pg_url,
        namespace=app,
        engine_options={
            "pool_size": 1,
            "max_overflow": 0,
            "connect_args": {"application_name": app},
        },
    )

    def kill() -> None:
        with store.engine.connect() as conn:  # the pool's one connection, returned after
            conn.execute(sa.text("SELECT 1"))
        admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :app"
                ),
                {"app": app},
            ).scalar()
        admin.dispose()
        assert killed == 1

    try:
        store.save("s1", [USER])
        kill()
        assert store.load("s1") == [USER]
        kill()
        with pytest.raises(BackendUnavailable):
            store.append("s1", ASSISTANT)
        store.append("s1", ASSISTANT)
        assert store.load("s1") == [USER, ASSISTANT]
    finally:
        store.close()
