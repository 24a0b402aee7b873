"""What only the tiered store does: promotion, coherence, durability, degraded modes.

The contract itself is covered by the conformance suite, which runs the
tiered configurations too.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.servers import RedisServer, TcpProxy
from tieredstore import ArchiveStore, BackendUnavailable, Message, SessionNotFound
from tieredstore.store import TieredStore

USER = {"role": "user", "content": "hello"}


def msg(i: int) -> dict[str, Any]:
    return {"role": "user", "content": f"m{i}"}


@pytest.fixture
def namespace() -> str:
    return f"tiered-{uuid.uuid4().hex[:10]}"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# -- the read path ----------------------------------------------------------------


def test_reads_walk_down_the_tiers_and_promote(
    make_tiered: Any, pg_engine: Any, namespace: str
) -> None:
    archive_only = ArchiveStore(pg_engine, namespace=namespace)
    archive_only.save("cold", [USER, msg(1)], metadata={"t": 1}, user_id="u")
    store = make_tiered()
    first = store.get("cold")
    assert first.tier == "archive"
    assert first.messages == [USER, msg(1)]
    assert store.redis.snapshot("cold", None) is not None, "archive hit not promoted to Redis"
    assert store.get("cold").tier == "memory"
    other = make_tiered(memory_max_bytes=None)
    assert other.get("cold").tier == "redis"
    stats = store.stats()
    assert stats["archive"]["hits"] == 1
    assert stats["archive"]["promotions"] == 1
    assert stats["memory"]["hits"] == 1


def test_write_updates_own_memory_tier(make_tiered: Any) -> None:
    store = make_tiered()
    store.save("s", [USER])
    assert store.get("s").tier == "redis"
    store.append("s", msg(1))
    session = store.get("s")
    assert session.tier == "memory"
    assert session.messages == [USER, msg(1)]
    assert session.version == 2


def test_hot_window_keeps_full_history_in_archive(make_tiered: Any) -> None:
    for durability in ("archive", "write_through"):
        store = make_tiered(max_messages=5, durability=durability)
        sid = f"long-{durability}"
        store.save(sid, [{"role": "system", "content": "rules"}])
        for i in range(40):
            store.append(sid, msg(i))
        window = store.load(sid)
        assert window == [{"role": "system", "content": "rules"}, *[msg(i) for i in range(36, 40)]]
        full = store.load(sid, full=True)
        assert full == [{"role": "system", "content": "rules"}, *[msg(i) for i in range(40)]]
        page = store.history(sid, limit=10)
        assert page.messages == [msg(i) for i in range(30, 40)]
        older = store.history(sid, before=page.next_before, limit=100)
        assert older.messages == full[: len(full) - 10]
        assert older.next_before is None


# -- coherence ----------------------------------------------------------------------


def _reader_process(
    conn: Any, redis_url: str, pg_url: str, namespace: str, prefix: str, sid: str, rounds: int
) -> None:
    store = TieredStore.from_url(
        redis_url=redis_url, database_url=pg_url, namespace=namespace, prefix=prefix
    )
    try:
        store.load(sid)
        conn.send("ready")
        delays: list[float] = []
        stale_after_invalidation = 0
        for _ in range(rounds):
            index, created_ms, version, sent_at = conn.recv()
            wait_until(partial(_seen_at_least, store, sid, (created_ms, version)), timeout=10)
            delays.append(time.perf_counter() - sent_at)
            for _ in range(2):  # the first read refills memory from Redis, the second hits it
                history = store.load(sid)
                if history[-1] != msg(index):
                    stale_after_invalidation += 1
            conn.send("ok")
        conn.send(("done", stale_after_invalidation, delays, store.stats()))
    finally:
        store.close()


def _seen_at_least(store: TieredStore, sid: str, generation: tuple[int, int]) -> bool:
    created, version = generation
    return store._seen.superseded(sid, (created, version - 1))


def test_two_processes_never_read_stale_after_invalidation(
    make_tiered: Any, pg_url: str, namespace: str, redis_prefix: str
) -> None:
    from tests.conftest import REDIS_URL

    rounds = 1000
    writer = make_tiered()
    sid = "shared"
    writer.save(sid, [USER])
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    reader = ctx.Process(
        target=_reader_process,
        args=(theirs, REDIS_URL, pg_url, namespace, redis_prefix, sid, rounds),
    )
    reader.start()
    try:
        assert ours.poll(60), "reader did not start"
        assert ours.recv() == "ready"
        created_ms = int(writer.get(sid).created_at.timestamp() * 1000)
        for i in range(rounds):
            version = writer.append(sid, msg(i))
            ours.send((i, created_ms, version, time.perf_counter()))
            assert ours.poll(30)
            assert ours.recv() == "ok"
        assert ours.poll(30)
        tag, stale, delays, stats = ours.recv()
    finally:
        reader.join(30)
        if reader.is_alive():
            reader.kill()
    assert tag == "done"
    assert stale == 0, f"{stale} of {rounds} reads returned a history missing the acked message"
    assert len(delays) == rounds
    assert stats["invalidations_received"] >= rounds
    assert stats["memory"]["hits"] >= rounds, "reader never used its memory tier"


def _listener_client_id(client: redis.Redis, store: TieredStore) -> int:
    assert store.listener is not None
    for info in client.client_list(_type="pubsub"):
        if info.get("name") == store.listener.client_name:
            return int(info["id"])
    raise AssertionError("listener connection not found")


def test_killed_invalidation_channel_bounds_staleness_and_recovers(
    make_tiered: Any, redis_client: Any
) -> None:
    writer = make_tiered()
    reader = make_tiered(stale_after=0.5)
    assert reader.listener is not None
    writer.save("s", [USER])
    assert reader.load("s") == [USER]
    assert reader.get("s").tier == "memory"
    subscriptions = reader.listener.subscriptions
    redis_client.client_kill_filter(_id=_listener_client_id(redis_client, reader))
    writer.append("s", msg(1))
    started = time.monotonic()
    while reader.load("s")[-1] != msg(1):
        time.sleep(0.01)
    staleness = time.monotonic() - started
    assert staleness <= 0.5 + 3 * reader.listener.ping_interval, staleness
    wait_until(
        lambda: (
            reader.listener is not None
            and reader.listener.healthy
            and reader.listener.subscriptions > subscriptions
        )
    )
    assert reader.stats()["invalidation_disconnects"] >= 1
    reader.load("s")
    writer.append("s", msg(2))
    wait_until(lambda: reader.load("s")[-1] == msg(2), timeout=2)


def _promote_and_append(redis_url: str, pg_url: str, namespace: str, prefix: str) -> None:
    store = TieredStore.from_url(
        redis_url=redis_url, database_url=pg_url, namespace=namespace, prefix=prefix
    )
    try:
        session = store.get("cold")
        assert session.tier == "archive", session.tier
        store.append("cold", msg(100), msg(101))
    finally:
        store.close()


def test_archived_session_promoted_and_extended_in_another_process(
    make_tiered: Any, pg_engine: Any, pg_url: str, namespace: str, redis_prefix: str
) -> None:
    from tests.conftest import REDIS_URL

    ArchiveStore(pg_engine, namespace=namespace).save("cold", [msg(i) for i in range(30)])
    ctx = mp.get_context("spawn")
    child = ctx.Process(
        target=_promote_and_append, args=(REDIS_URL, pg_url, namespace, redis_prefix)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    store = make_tiered()
    expected = [msg(i) for i in range(30)] + [msg(100), msg(101)]
    assert store.load("cold") == expected
    assert store.get("cold").tier == "memory"
    assert store.load("cold", full=True) == expected


# -- degraded operation -------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def test_redis_restart_in_write_through_loses_nothing(
    private_redis: RedisServer, pg_engine: Any, namespace: str
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    store = TieredStore.from_clients(
        redis=client, engine=pg_engine, namespace=namespace, durability="write_through"
    )
    acked: list[int] = []
    try:
        for i in range(20):
            store.append("s", msg(i))
            acked.append(i)
        private_redis.stop()
        for i in range(20, 40):
            store.append("s", msg(i))
            acked.append(i)
        assert store.load("s") == [msg(i) for i in acked]
        assert store.get("s").tier in ("archive", "memory")
        private_redis.start()
        # Redis's circuit breaker fails calls fast for its cool-down, then probes.
        wait_until(lambda: store.redis.breaker.state != "open", timeout=10)
        for i in range(40, 60):
            store.append("s", msg(i))
            acked.append(i)
        assert store.load("s") == [msg(i) for i in acked]
        assert client.exists(*store.redis.keys_of("s")), "writes did not return to Redis"
        fresh = TieredStore.from_clients(
            redis=client, engine=pg_engine, namespace=namespace, memory_max_bytes=None
        )
        assert fresh.load("s") == [msg(i) for i in acked]
        fresh.close()
    finally:
        store.close()
        client.close()


def test_redis_down_in_archive_mode_raises_then_recovers(
    private_redis: RedisServer, pg_engine: Any, namespace: str
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    store = TieredStore.from_clients(
        redis=client, engine=pg_engine, namespace=namespace, durability="archive"
    )
    try:
        store.save("hot", [USER])
        ArchiveStore(pg_engine, namespace=namespace).save("cold", [msg(1)])
        private_redis.stop()
        with pytest.raises(BackendUnavailable):
            store.append("hot", msg(2))
        assert store.load("cold") == [msg(1)], "reads must fall back to the archive"
        private_redis.start()
        wait_until(lambda: _append_ok(store, "hot2"), timeout=10)
        assert store.load("hot2") == [msg(9)]
        with pytest.raises(SessionNotFound):
            store.load("hot")  # it lived only in the Redis that died: the documented loss
    finally:
        store.close()
        client.close()


def _append_ok(store: TieredStore, sid: str) -> bool:
    try:
        store.append(sid, msg(9))
    except BackendUnavailable:
        return False
    return True


def test_archive_down_hot_path_continues_and_recovers(
    make_tiered: Any, proxied_pg: tuple[TcpProxy, Any]
) -> None:
    proxy, engine = proxied_pg
    store = make_tiered(engine=engine)
    store.save("hot", [USER])
    proxy.down()
    store.append("hot", msg(1))
    assert store.load("hot") == [USER, msg(1)]
    with pytest.raises(BackendUnavailable):
        store.load("never-seen")
    proxy.up()
    wait_until(lambda: _load_ok(store, "hot"), timeout=10)
    with pytest.raises(SessionNotFound):
        store.load("never-seen")


def _load_ok(store: TieredStore, sid: str) -> bool:
    try:
        store.load(sid)
    except BackendUnavailable:
        return False
    return True


# -- the embedded default and the demo ----------------------------------------------


def test_embedded_default_needs_no_server(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TIEREDSTORE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TIEREDSTORE_REDIS_URL", raising=False)
    monkeypatch.delenv("TIEREDSTORE_DATABASE_URL", raising=False)
    with TieredStore() as store:
        assert store.stats()["tiers"] == ["memory", "archive"]
        store.save("s", [Message("user", "hi")])
        assert store.get("s").tier == "archive"
        assert store.get("s").tier == "memory"
    assert (tmp_path / "archive.db").exists()
    with TieredStore.from_env() as again:
        assert again.load("s") == [Message("user", "hi")]


def test_demo_command_runs_without_servers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDSTORE_")}
    env["TIEREDSTORE_DATA_DIR"] = str(tmp_path)
    env["TIEREDSTORE_REDIS_URL"] = ""
    result = subprocess.run(
        [sys.executable, "-m", "tieredstore", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "tiers: memory -> archive" in result.stdout
    assert "served by memory" in result.stdout


def test_concurrent_writers_through_tiers(make_tiered: Any) -> None:
    stores = [make_tiered(durability="write_through") for _ in range(2)]
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(100):
                stores[n % 2].append("c", {"role": "user", "content": f"{n}:{i}", "w": n, "i": i})
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    hot = stores[0].load("c")
    assert len(hot) == 400
    archived = stores[0].archive.load("c")
    assert archived == hot, "write-through archive diverged from Redis"
