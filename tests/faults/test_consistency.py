"""The tiers agree under races and faults: nothing acknowledged lost, nothing deleted back.

Every scenario runs against the real servers (private Redis servers and TCP
proxies on loopback ports where a server must fail) and prints its figures.
Races are forced two ways: deterministically, by running the other party
between two steps of a copy, and statistically, by running both parties
concurrently for many rounds.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.servers import RedisServer, TcpProxy
from tieredstore import ArchiveStore, BackendUnavailable, SessionNotFound
from tieredstore.maintenance import archive_idle
from tieredstore.maintenance import reconcile as reconcile_task
from tieredstore.store import TieredStore
from tieredstore.tiers.archive import ArchiveCopy

ROUNDS = 200


def msg(i: int | str) -> dict[str, Any]:
    return {"role": "user", "content": f"m{i}"}


@pytest.fixture
def namespace() -> str:
    return f"faults-{uuid.uuid4().hex[:10]}"


def gone_everywhere(store: TieredStore, archive: ArchiveStore, sid: str) -> bool:
    """Not readable (from a store with no memory tier), not listed, not archived."""
    try:
        store.load(sid)
        return False
    except SessionNotFound:
        pass
    listed = set(store.list(limit=10_000).ids)
    return sid not in listed and not archive.exists(sid)


# -- delete against copies in flight -----------------------------------------------------


def test_delete_beats_a_promotion_in_flight(
    make_tiered: Any, pg_engine: Any, namespace: str
) -> None:
    """A read took the archive's copy; the delete runs; the promotion must not bring it back."""
    store = make_tiered(memory_max_bytes=None)
    archive = ArchiveStore(pg_engine, namespace=namespace)
    archive.save("cold", [msg(1), msg(2)])
    snap = archive.snapshot("cold")
    assert snap is not None
    assert store.delete("cold") is True
    assert store.redis is not None
    assert store.redis.promote(snap) == -1
    assert gone_everywhere(store, archive, "cold")
    # a new session under the same id is a new generation, with a clean history
    store.append("cold", msg(3))
    assert store.load("cold", full=True) == [msg(3)]
    assert store.get("cold").version == 1


def test_delete_racing_promoting_reads_resurrects_nothing(
    make_tiered: Any, pg_engine: Any, namespace: str
) -> None:
    readers = [make_tiered(memory_max_bytes=None) for _ in range(2)]
    deleter = make_tiered(memory_max_bytes=None)
    checker = make_tiered(memory_max_bytes=None)
    archive = ArchiveStore(pg_engine, namespace=namespace)
    resurrected = 0
    for i in range(ROUNDS):
        sid = f"r{i}"
        archive.save(sid, [msg(i)])
        barrier = threading.Barrier(3)

        def read(store: TieredStore, sid: str, barrier: threading.Barrier) -> None:
            barrier.wait()
            with contextlib.suppress(SessionNotFound):
                store.load(sid)

        threads = [threading.Thread(target=read, args=(r, sid, barrier)) for r in readers]
        for thread in threads:
            thread.start()
        barrier.wait()
        deleter.delete(sid)
        for thread in threads:
            thread.join()
        resurrected += not gone_everywhere(checker, archive, sid)
    print(f"\ndelete vs promoting read: {ROUNDS} rounds, {resurrected} resurrected")
    assert resurrected == 0


def test_delete_beats_an_archival_in_flight(
    make_tiered: Any, pg_engine: Any, namespace: str
) -> None:
    """archive_idle captured the session; the delete runs; the absorb must not bring it back."""
    store = make_tiered(memory_max_bytes=None)
    archive = ArchiveStore(pg_engine, namespace=namespace)
    store.save("hot", [msg(1)])
    hot = store.redis
    (captured,) = hot.capture_many(["hot"])
    assert captured is not None
    store.delete("hot")
    assert archive.absorb_many([captured.copy()]) == [False]
    assert hot.evict_many(hot.keys.bucket("hot"), [captured]) == [False]
    assert gone_everywhere(store, archive, "hot")
    # and the spill/window copy of the old generation cannot continue a new one
    store.append("hot", msg(2))
    assert archive.absorb_many([captured.copy()]) == [False]
    assert store.load("hot", full=True) == [msg(2)]


def test_delete_racing_archive_idle_resurrects_nothing(
    make_tiered: Any, pg_engine: Any, namespace: str
) -> None:
    writer = make_tiered(memory_max_bytes=None)
    worker = make_tiered(memory_max_bytes=None)
    checker = make_tiered(memory_max_bytes=None)
    archive = ArchiveStore(pg_engine, namespace=namespace)
    sids = [f"a{i}" for i in range(ROUNDS)]
    for sid in sids:
        writer.save(sid, [msg(sid), msg(sid + "-2")])
    running = threading.Event()
    running.set()
    failures: list[BaseException] = []

    def archiver() -> None:
        try:
            while running.is_set():
                archive_idle(worker, archive_after=0, batch_size=7, max_batches=4)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    thread = threading.Thread(target=archiver)
    thread.start()
    try:
        for sid in sids:
            writer.delete(sid)
    finally:
        running.clear()
        thread.join()
    assert not failures, failures
    archive_idle(worker, archive_after=0, now=time.time() + 1)
    resurrected = [sid for sid in sids if not gone_everywhere(checker, archive, sid)]
    # a later append starts a new history (version 1), never the deleted one's
    writer.append(sids[0], msg("new"))
    print(f"\ndelete vs archive_idle: {ROUNDS} rounds, {len(resurrected)} resurrected")
    assert resurrected == []
    assert checker.get(sids[0]).version == 1
    assert checker.load(sids[0], full=True) == [msg("new")]


# -- save after archival ---------------------------------------------------------------------


def test_save_after_archival_replaces_the_whole_history(make_tiered: Any) -> None:
    store = make_tiered(memory_max_bytes=None, max_messages=3)
    for i in range(6):
        store.append("s", msg(i))
    assert archive_idle(store, archive_after=0, now=time.time() + 1).changed == 1
    store.append("s", msg(6))  # promoted back to Redis, then written
    store.save("s", [msg("a"), msg("b")])
    full = store.load("s", full=True)
    print(f"\nsave after archival: full history {len(full)} messages (saved 2)")
    assert full == [msg("a"), msg("b")]
    assert store.history("s").messages == [msg("a"), msg("b")]
    assert store.history_all("s") == [msg("a"), msg("b")]


# -- write_through: Redis partitioned and healed ---------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


class AppServer:
    """One application server: its own connection to Redis through its own proxy."""

    def __init__(self, redis_port: int, engine: Any, namespace: str) -> None:
        self.proxy = TcpProxy(redis_port).up()
        self.client = redis.Redis(
            host="127.0.0.1", port=self.proxy.port, socket_timeout=1, socket_connect_timeout=1
        )
        self.store = TieredStore.from_clients(
            redis=self.client, engine=engine, namespace=namespace, durability="write_through"
        )
        self.versions: list[int] = []
        self.acked: list[dict[str, Any]] = []

    def append(self, message: dict[str, Any]) -> None:
        self.versions.append(self.store.append("s", message))
        self.acked.append(message)

    def wait_for_redis(self, timeout: float = 20.0) -> None:
        """Until this server reaches Redis again (its breaker closes after the cool-down);
        its first call then reconciles what the archive took meanwhile."""
        assert self.store.redis is not None
        deadline = time.monotonic() + timeout
        while True:
            self.store.list()  # always asks Redis (a read could be a memory hit)
            if self.store.redis.breaker.state == "closed":
                return
            assert time.monotonic() < deadline, "Redis did not come back"
            time.sleep(0.05)

    def close(self) -> None:
        self.store.close()
        self.client.close()
        self.proxy.down()


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def test_write_through_partition_heal_one_server(
    private_redis: RedisServer, pg_engine: Any, namespace: str
) -> None:
    app = AppServer(private_redis.port, pg_engine, namespace)
    try:
        for i in range(5):
            app.append(msg(i))
        app.store.save("doomed", [msg("d")])
        app.proxy.down()  # Redis keeps its copy (version 5) but this server cannot reach it
        for i in range(5, 10):
            app.append(msg(i))
        assert app.store.delete("doomed") is True
        assert set(app.store.list().ids) == {"s"}  # listed from the archive meanwhile
        app.proxy.up()
        app.append(msg(10))  # while the breaker still fails fast: the archive takes it
        app.wait_for_redis()
        for i in range(11, 15):
            app.append(msg(i))
        fresh = TieredStore.from_clients(
            redis=app.client, engine=pg_engine, namespace=namespace, memory_max_bytes=None
        )
        full = fresh.load("s", full=True)
        assert not fresh.exists("doomed"), "the stale Redis copy of a deleted session was used"
        assert set(fresh.list().ids) == {"s"}
        fresh.close()
        lost = [m for m in app.acked if m not in full]
        print(f"\nwrite_through heal, one server: {len(app.acked)} acknowledged, "
              f"{len(lost)} lost, versions {app.versions}")
        assert full == app.acked
        assert strictly_increasing(app.versions)
    finally:
        app.close()


def test_write_through_partition_heal_two_servers(
    private_redis: RedisServer, pg_engine: Any, namespace: str
) -> None:
    a = AppServer(private_redis.port, pg_engine, namespace)
    b = AppServer(private_redis.port, pg_engine, namespace)
    try:
        for i in range(4):
            (a if i % 2 else b).append(msg(f"before-{i}"))
        a.proxy.down()  # only A loses Redis: A writes to the archive, B to Redis
        for i in range(6):
            (a if i % 2 else b).append(msg(f"split-{i}"))
        b.proxy.down()  # now both lose it
        for i in range(4):
            (a if i % 2 else b).append(msg(f"dark-{i}"))
        a.proxy.up()
        b.proxy.up()
        a.wait_for_redis()
        b.wait_for_redis()
        for i in range(4):
            (a if i % 2 else b).append(msg(f"after-{i}"))
        reconcile_task(a.store)
        fresh = TieredStore.from_clients(
            redis=a.client, engine=pg_engine, namespace=namespace, memory_max_bytes=None
        )
        full = fresh.load("s", full=True)
        archived = ArchiveStore(pg_engine, namespace=namespace).load("s")
        fresh.close()
        acked = a.acked + b.acked
        lost = [m for m in acked if m not in full]
        print(f"\nwrite_through heal, two servers: {len(acked)} acknowledged, {len(lost)} lost; "
              f"versions A {a.versions}, B {b.versions}")
        assert lost == []
        contents = sorted(m["content"] for m in acked)
        assert sorted(m["content"] for m in full) == contents, "a message is duplicated"
        assert sorted(m["content"] for m in archived) == contents
        for server in (a, b):
            assert strictly_increasing(server.versions)
            # each server's own messages keep the order it wrote them in
            assert [m for m in full if m in server.acked] == server.acked
    finally:
        a.close()
        b.close()


# -- write_through: the archive cut ------------------------------------------------------------


def test_write_through_archive_cut_reaches_the_archive_after_heal(
    make_tiered: Any, proxied_pg: tuple[TcpProxy, Any], pg_engine: Any, namespace: str
) -> None:
    proxy, engine = proxied_pg
    direct = ArchiveStore(pg_engine, namespace=namespace)
    store = make_tiered(engine=engine, durability="write_through", max_messages=4)
    acked = []
    for i in range(3):
        store.append("s", msg(i))
        acked.append(msg(i))
    proxy.down()
    for i in range(3, 13):  # acknowledged though the archive is unreachable
        store.append("s", msg(i))
        acked.append(msg(i))
    assert store.redis is not None
    assert store.redis.outbox_sessions() == ["s"]
    proxy.up()
    engine.dispose()
    deadline = time.monotonic() + 20
    while True:  # the archive's breaker fails calls fast until its cool-down ends
        try:
            result = reconcile_task(store)
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline, "the archive did not come back"
            time.sleep(0.1)
    in_archive = direct.load("s")
    print(f"\nwrite_through with the archive cut: {len(acked)} acknowledged, "
          f"{len(in_archive)} in the archive after the worker ran ({result.messages} drained)")
    assert in_archive == acked
    assert store.load("s", full=True) == acked
    assert store.redis.outbox_sessions() == []


def test_the_next_write_drains_the_outbox(
    make_tiered: Any, proxied_pg: tuple[TcpProxy, Any], pg_engine: Any, namespace: str
) -> None:
    proxy, engine = proxied_pg
    direct = ArchiveStore(pg_engine, namespace=namespace)
    store = make_tiered(engine=engine, durability="write_through")
    store.save("s", [msg(0)], metadata={"a": 1})
    proxy.down()
    store.append("s", msg(1))
    store.merge_metadata("s", {"b": 2})
    proxy.up()
    engine.dispose()
    store.append("s", msg(2))
    assert direct.load("s") == [msg(0), msg(1), msg(2)]
    assert direct.get("s").metadata == {"a": 1, "b": 2}
    assert store.redis is not None and store.redis.outbox_sessions() == []


# -- races with the worker -----------------------------------------------------------------------


def test_writes_racing_archive_idle_are_reflected_exactly(make_tiered: Any) -> None:
    """4 threads merge/append/save/delete their own sessions while archive_idle loops."""
    worker = make_tiered(memory_max_bytes=None)
    checker = make_tiered(memory_max_bytes=None)
    running = threading.Event()
    running.set()
    failures: list[BaseException] = []
    expected: dict[str, tuple[list[dict[str, Any]], dict[str, Any]] | None] = {}
    ops = 0

    def archiver() -> None:
        try:
            while running.is_set():
                archive_idle(worker, archive_after=0, batch_size=5, max_batches=2)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    def client(n: int) -> None:
        nonlocal ops
        store = make_tiered(memory_max_bytes=None)
        sids = [f"t{n}-{k}" for k in range(3)]
        state: dict[str, tuple[list[dict[str, Any]], dict[str, Any]] | None] = dict.fromkeys(sids)
        try:
            for step in range(60):
                sid = sids[step % 3]
                current = state[sid]
                kind = step % 7
                if current is None or kind in (0, 1, 2):
                    store.append(sid, msg(f"{n}-{step}"))
                    history, meta = current or ([], {})
                    state[sid] = ([*history, msg(f"{n}-{step}")], meta)
                elif kind in (3, 4):
                    merged = store.merge_metadata(sid, {f"k{step}": step})
                    history, meta = current
                    meta = {**meta, f"k{step}": step}
                    assert dict(merged) == meta
                    state[sid] = (history, meta)
                elif kind == 5:
                    store.save(sid, [msg(f"{n}-{step}-saved")])
                    state[sid] = ([msg(f"{n}-{step}-saved")], current[1])
                else:
                    store.delete(sid)
                    state[sid] = None
                ops += 1
        except BaseException as exc:
            failures.append(exc)
        expected.update(state)

    thread = threading.Thread(target=archiver)
    thread.start()
    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        for c in clients:
            c.start()
        for c in clients:
            c.join()
    finally:
        running.clear()
        thread.join()
    assert not failures, failures
    wrong = []
    for sid, want in expected.items():
        if want is None:
            if checker.exists(sid):
                wrong.append(sid)
            continue
        history, meta = want
        got = checker.get(sid)
        if checker.load(sid, full=True) != history or dict(got.metadata) != meta:
            wrong.append(sid)
    print(f"\nwrites racing archive_idle: {ops} operations on {len(expected)} sessions, "
          f"{len(wrong)} wrong")
    assert wrong == []


def test_merge_after_eviction_re_promotes(make_tiered: Any) -> None:
    """merge_metadata on a session the worker just evicted is not SessionNotFound."""
    store = make_tiered(memory_max_bytes=None)
    store.save("m", [msg(1)], metadata={"a": 1})
    archive_idle(store, archive_after=0, now=time.time() + 1)
    assert store.redis is not None and not store.redis.exists("m")
    assert store.merge_metadata("m", {"b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(SessionNotFound):
        store.merge_metadata("never", {"b": 2})
    with pytest.raises(BackendUnavailable):
        raise BackendUnavailable("redis", "sanity: the typed error is importable")


def test_late_copy_of_a_replaced_generation_is_refused(pg_engine: Any, namespace: str) -> None:
    """Absorbing a copy of an older generation after the id was deleted and re-created."""
    archive = ArchiveStore(pg_engine, namespace=namespace)
    archive.save("g", [msg(1)])
    old = archive.snapshot("g")
    assert old is not None
    archive.delete("g")
    archive.save("g", [msg(2)])
    assert archive.absorb_many([ArchiveCopy.of(old)]) == [False]
    assert archive.load("g") == [msg(2)]


@pytest.mark.parametrize("same_content", [False, True], ids=["other-content", "same-content"])
def test_write_through_keeps_a_write_redis_lost_and_the_one_reusing_its_seq(
    make_tiered: Any, pg_engine: Any, namespace: str, same_content: bool
) -> None:
    """Redis goes back to a state before an acknowledged write (a replica that never
    got it took over); the next write is numbered over it. The archive notices the
    seq used twice, the session is reconciled, and both writes stay, in order."""
    store = make_tiered(durability="write_through", memory_max_bytes=None)
    other = make_tiered(durability="write_through", memory_max_bytes=None)
    direct = ArchiveStore(pg_engine, namespace=namespace)
    store.save("s", [msg(0)])
    assert store.redis is not None
    before = store.redis.snapshot("s")
    assert before is not None
    store.append("s", msg(1))  # acknowledged: in Redis and the archive
    lost_version = store.get("s").version
    client = store.redis.client
    client.delete(*store.redis.keys_of("s"))  # Redis forgets it ...
    assert store.redis.restore(before)  # ... and holds the older state again
    second = msg(1) if same_content else msg(2)
    version = other.append("s", second)  # numbered at the lost write's seq
    assert version > lost_version
    expected = [msg(0), msg(1), second]
    assert direct.load("s") == expected
    assert store.load("s", full=True) == expected
    assert other.load("s") == expected
    assert store.get("s").version >= version
    store.append("s", msg(3))
    assert direct.load("s") == [*expected, msg(3)]


def test_a_fenced_copy_reconciled_twice_is_absorbed_once(
    make_tiered: Any, proxied_pg: tuple[TcpProxy, Any], pg_engine: Any, namespace: str
) -> None:
    """Redis kept a write the archive missed (outbox); the archive took another while
    Redis was away (detached). The first reconciliation absorbs the outbox into a new
    generation but its promotion to Redis never happens (Redis fails again) and the
    archive is detached once more: the second reconciliation of the same fenced copy
    must not append the outbox's message a second time."""
    from tieredstore.core import prepare_batch

    proxy, engine = proxied_pg
    direct = ArchiveStore(pg_engine, namespace=namespace)
    store = make_tiered(engine=engine, durability="write_through", memory_max_bytes=None)
    store.save("s", [msg(0)])
    proxy.down()
    store.append("s", msg(1))  # acknowledged by Redis alone: it waits in the outbox
    proxy.up()
    engine.dispose()
    assert store.redis is not None and store.redis.outbox_sessions() == ["s"]
    limits = direct.limits
    direct.write_append("s", prepare_batch([msg(2)], limits), ttl_ms=None,
                        expected_version=None, detached=True)  # while "Redis was away"
    fenced = store.redis.fence("s")
    assert fenced is not None and [r.batch.messages[0] for r in fenced.records] == [msg(1)]
    first = direct.reconcile("s", fenced)
    assert first.action == "promote"
    assert direct.load("s") == [msg(0), msg(2), msg(1)]
    direct.write_append("s", prepare_batch([msg(3)], limits), ttl_ms=None,
                        expected_version=None, detached=True)  # Redis failed again
    second = direct.reconcile("s", fenced)  # the same fenced copy, never replaced
    assert second.action == "promote" and second.version > first.version
    assert direct.load("s") == [msg(0), msg(2), msg(1), msg(3)]
