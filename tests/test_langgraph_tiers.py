"""The checkpoint tiers: hot window and archival, races with delete_thread, TTL,
retention, the memory tier, Redis down, the key layout, the worker task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from redis.crc import key_slot

from tests.conftest import REDIS_URL, FakeClock
from tests.servers import RedisServer
from tieredstore import ArchiveStore, RedisStore
from tieredstore.errors import BackendUnavailable, InvalidInput, InvalidSessionId
from tieredstore.integrations.langgraph import TieredCheckpointSaver
from tieredstore.integrations.langgraph.cold import ColdCheckpoints
from tieredstore.integrations.langgraph.hot import HotCheckpoints
from tieredstore.integrations.langgraph.keys import CheckpointKeys
from tieredstore.integrations.langgraph.maintenance import CheckpointSettings, maintain_checkpoints
from tieredstore.schema import checkpoint_threads, checkpoint_writes, checkpoints
from tieredstore.tiers.redis.keys import RedisKeys

ROOT = Path(__file__).resolve().parent.parent
Make = Callable[..., TieredCheckpointSaver]


@pytest.fixture
def namespace() -> str:
    return f"lg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make(redis_client: Any, redis_prefix: str, pg_engine: Any,
         namespace: str) -> Iterator[Make]:
    """Savers on the shared Redis and PostgreSQL in this test's namespace."""
    made: list[TieredCheckpointSaver] = []

    def build(*, clock: FakeClock | None = None, **options: Any) -> TieredCheckpointSaver:
        redis = RedisStore(redis_client, namespace=namespace, prefix=redis_prefix,
                           publish=False, buckets=4)
        archive = ArchiveStore(pg_engine, namespace=namespace,
                               **({"clock": clock} if clock else {}))
        saver = TieredCheckpointSaver(redis=redis, archive=archive, **options)
        made.append(saver)
        return saver

    yield build
    for saver in made:
        saver.close()


def put(saver: TieredCheckpointSaver, thread: str, parent: Any = None, ns: str = "",
        **metadata: Any) -> Any:
    config = generate_config(thread, checkpoint_ns=ns)
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    checkpoint = generate_checkpoint(channel_values={"n": metadata.get("step", 0)},
                                     channel_versions={"n": 1})
    return saver.put(config, checkpoint, generate_metadata(**metadata), {"n": 1})


def chain(saver: TieredCheckpointSaver, thread: str, count: int, ns: str = "") -> list[Any]:
    configs, parent = [], None
    for step in range(count):
        parent = put(saver, thread, parent, ns, step=step)
        configs.append(parent)
    return configs


def ids(saver: TieredCheckpointSaver, thread: str, ns: str | None = "") -> list[str]:
    config: Any = {"configurable": {"thread_id": thread}}
    if ns is not None:
        config["configurable"]["checkpoint_ns"] = ns
    return [t.checkpoint["id"] for t in saver.list(config)]


def hot_ids(saver: TieredCheckpointSaver, thread: str) -> list[str]:
    assert saver.redis is not None
    gc = CheckpointKeys(saver.redis.keys).thread(thread)[1]
    return [m.decode().split("\x00")[1] for m in saver.redis.client.zrange(gc, 0, -1)]


def archived(engine: Any, namespace: str, thread: str) -> tuple[list[str], int, bool]:
    """The archive's checkpoint ids (ascending), write rows and whether a thread row is live."""
    with engine.connect() as conn:
        cids = conn.execute(sa.select(checkpoints.c.checkpoint_id).where(
            checkpoints.c.namespace == namespace, checkpoints.c.thread_id == thread,
        ).order_by(checkpoints.c.checkpoint_id)).scalars().all()
        writes = conn.execute(sa.select(sa.func.count()).select_from(checkpoint_writes).where(
            checkpoint_writes.c.namespace == namespace,
            checkpoint_writes.c.thread_id == thread)).scalar_one()
        row = conn.execute(sa.select(checkpoint_threads).where(
            checkpoint_threads.c.namespace == namespace,
            checkpoint_threads.c.thread_id == thread)).first()
    live = row is not None and (row.deleted_ms is None or row.created_ms >= row.deleted_ms)
    return list(cids), int(writes), live


def gone_everywhere(saver: TieredCheckpointSaver, engine: Any, namespace: str,
                    thread: str) -> bool:
    cids, writes, _ = archived(engine, namespace, thread)
    return (not hot_ids(saver, thread) and not cids and not writes
            and saver.get_tuple(generate_config(thread)) is None and not ids(saver, thread))


# -- layout --------------------------------------------------------------------------------


def test_every_key_of_a_thread_is_in_its_buckets_slot() -> None:
    keys = CheckpointKeys(RedisKeys("ts", "app", 16))
    for tid in ("t-1", "thread:with:colons", "x" * 256, "ünïcode", "{not-a-tag}".strip("{}")):
        slots = {key_slot(k.encode()) for k in keys.thread(tid)}
        assert len(slots) == 1, tid
        assert slots == {key_slot(keys.index(keys.bucket(tid)).encode())}


def test_inputs_are_checked_before_anything_is_written(make: Make) -> None:
    saver = make()
    with pytest.raises(InvalidSessionId):
        put(saver, "has space")
    with pytest.raises(InvalidInput):
        put(saver, "t", ns="bad\x00ns")
    with pytest.raises(InvalidInput):
        saver.get_tuple({"configurable": {}})
    cfg = put(saver, "t")
    with pytest.raises(InvalidInput):
        saver.put(generate_config("t"), generate_checkpoint(),
                  generate_metadata(nested={"x": "a\x00b"}), {})
    with pytest.raises(InvalidInput):
        saver.put_writes(generate_config("t"), [("ch", 1)], "task")  # no checkpoint id
    with pytest.raises(InvalidInput):
        saver.put_writes(cfg, [("ch\x00", 1)], "task")
    assert ids(saver, "t") == [cfg["configurable"]["checkpoint_id"]]


# -- the hot window and archival -----------------------------------------------------------


def test_checkpoints_beyond_the_window_move_to_the_archive(make: Make, pg_engine: Any,
                                                           namespace: str) -> None:
    saver = make(window=4)
    configs = chain(saver, "t", 12)
    all_ids = [c["configurable"]["checkpoint_id"] for c in configs]
    saver.put_writes(configs[1], [("ch", "early")], "task-1")
    result = maintain_checkpoints(saver, archive_after=3600, window=4)
    assert result.changed == 1 and result.messages == 8
    assert hot_ids(saver, "t") == all_ids[-4:]
    cids, writes, _ = archived(pg_engine, namespace, "t")
    assert cids == all_ids[:8] and writes == 1
    assert ids(saver, "t") == all_ids[::-1]
    old = saver.get_tuple(configs[1])
    assert old is not None and old.pending_writes == [("task-1", "ch", "early")]
    # A write to an archived checkpoint lands in Redis and is read with it.
    saver.put_writes(configs[1], [("ch", "late")], "task-2")
    again = saver.get_tuple(configs[1])
    assert again is not None and [w[2] for w in again.pending_writes] == ["early", "late"]
    assert [t.pending_writes for t in saver.list(generate_config("t"))][-2] == [
        ("task-1", "ch", "early"), ("task-2", "ch", "late")]
    # The next run archives that write too; nothing is duplicated.
    maintain_checkpoints(saver, archive_after=3600, window=4)
    assert archived(pg_engine, namespace, "t")[1] == 2
    assert ids(saver, "t") == all_ids[::-1]


def test_a_put_during_archival_stays_in_redis(make: Make, pg_engine: Any,
                                              namespace: str) -> None:
    saver = make()
    hot, cold = saver.tiers.hot, saver.tiers.cold
    assert hot is not None and cold is not None
    first = chain(saver, "t", 2)
    (captured,) = hot.capture_many(["t"], "all")
    assert captured is not None
    newer = put(saver, "t", first[-1], step=2)  # written after the capture
    assert cold.absorb([captured.copy]) == [True]
    assert hot.evict_many([captured], "all") == [False]
    tup = saver.get_tuple(generate_config("t"))
    assert tup is not None and tup.config["configurable"]["checkpoint_id"] == newer[
        "configurable"]["checkpoint_id"]
    maintain_checkpoints(saver, archive_after=0)
    assert not hot_ids(saver, "t") and len(archived(pg_engine, namespace, "t")[0]) == 3


def test_an_archived_thread_written_again_keeps_its_history(make: Make, pg_engine: Any,
                                                            namespace: str) -> None:
    saver = make()
    older = chain(saver, "t", 3)
    maintain_checkpoints(saver, archive_after=0)
    assert not hot_ids(saver, "t")
    # A put without a read first: a new Redis generation; the archive still has the rest.
    newest = put(saver, "t", older[-1], step=3)
    expected = [c["configurable"]["checkpoint_id"] for c in [*older, newest]][::-1]
    assert ids(saver, "t") == expected
    maintain_checkpoints(saver, archive_after=0)
    assert ids(saver, "t") == expected
    assert archived(pg_engine, namespace, "t")[0] == expected[::-1]


# -- delete_thread against copies in flight ------------------------------------------------


def test_delete_while_the_worker_archives(make: Make, pg_engine: Any, namespace: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The delete runs between the worker's read of the thread and its archive
    transaction (and, second time, between the transaction and the eviction)."""
    saver = make()
    for stage in ("absorb", "evict"):
        thread = f"t-{stage}"
        chain(saver, thread, 3)
        target = ColdCheckpoints if stage == "absorb" else HotCheckpoints
        name = "absorb" if stage == "absorb" else "evict_many"
        original = getattr(target, name)

        def racing(self: Any, *args: Any, _original: Any = original, _thread: str = thread,
                   **kwargs: Any) -> Any:
            saver.delete_thread(_thread)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(target, name, racing)
        maintain_checkpoints(saver, archive_after=0)
        monkeypatch.setattr(target, name, original)
        assert gone_everywhere(saver, pg_engine, namespace, thread), stage
        # The thread's id is usable again: a new generation, after the tombstone.
        cfg = put(saver, thread)
        assert ids(saver, thread) == [cfg["configurable"]["checkpoint_id"]]


def test_delete_while_a_read_promotes(make: Make, pg_engine: Any, namespace: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    saver = make()
    chain(saver, "t", 3)
    maintain_checkpoints(saver, archive_after=0)
    original = HotCheckpoints.promote
    outcomes: list[int] = []

    def racing(self: HotCheckpoints, *args: Any, **kwargs: Any) -> int:
        saver.delete_thread("t")
        outcomes.append(original(self, *args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(HotCheckpoints, "promote", racing)
    read = saver.get_tuple(generate_config("t"))  # read before the delete: it may be served
    monkeypatch.setattr(HotCheckpoints, "promote", original)
    assert read is not None and outcomes == [-1]  # the tombstone refused the promotion
    assert gone_everywhere(saver, pg_engine, namespace, "t")


def test_a_write_through_mirror_after_a_delete_is_refused(make: Make, pg_engine: Any,
                                                          namespace: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The delete lands between the Redis write and its archive mirror."""
    saver = make(durability="write_through")
    original = ColdCheckpoints.mirror
    taken: list[bool] = []

    def racing(self: ColdCheckpoints, copy: Any) -> bool:
        saver.tiers.delete(copy.thread_id)
        taken.append(original(self, copy))
        return taken[-1]

    monkeypatch.setattr(ColdCheckpoints, "mirror", racing)
    cfg = put(saver, "t")
    saver.put_writes(cfg, [("ch", 1)], "task")
    monkeypatch.setattr(ColdCheckpoints, "mirror", original)
    assert taken == [False, False]
    assert gone_everywhere(saver, pg_engine, namespace, "t")


# -- TTL, expiry, retention ----------------------------------------------------------------


def test_ttl_is_set_on_every_write_and_expires_the_archive_copy(make: Make, pg_engine: Any,
                                                                namespace: str) -> None:
    clock = FakeClock()
    saver = make(ttl=60, clock=clock)
    cfg = put(saver, "t")
    saver.put_writes(cfg, [("ch", 1)], "task")
    assert saver.redis is not None
    for key in CheckpointKeys(saver.redis.keys).thread("t")[:4]:
        assert 0 < saver.redis.client.pttl(key) <= 60_000
    maintain_checkpoints(saver, archive_after=0)
    assert saver.get_tuple(generate_config("t")) is not None  # promoted back, with its TTL
    maintain_checkpoints(saver, archive_after=0)
    clock.advance(61)
    assert saver.get_tuple(generate_config("t")) is None  # expired in the archive
    result = maintain_checkpoints(saver, archive_after=0, now=clock())
    assert result.changed == 1
    assert archived(pg_engine, namespace, "t") == ([], 0, False)


def test_a_hot_thread_keeps_its_archived_checkpoints_past_their_archived_expiry(
        make: Make) -> None:
    """The archive's copy carries the expiry of its last archival; while the thread
    lives on in Redis, Redis's expiry governs it."""
    clock = FakeClock()
    saver = make(ttl=60, window=2, clock=clock)
    configs = chain(saver, "t", 5)
    maintain_checkpoints(saver, archive_after=3600, window=2)
    clock.advance(120)  # the archive's clock only: Redis keeps the thread
    old = saver.get_tuple(configs[0])
    assert old is not None and old.checkpoint["id"] == configs[0]["configurable"][
        "checkpoint_id"]
    assert len(ids(saver, "t")) == 5
    maintain_checkpoints(saver, archive_after=3600, window=2, now=clock())
    assert len(ids(saver, "t")) == 5  # expiry spares it too


def test_retention_deletes_idle_archived_threads_but_not_hot_ones(make: Make, pg_engine: Any,
                                                                  namespace: str) -> None:
    clock = FakeClock()
    saver = make(clock=clock)
    chain(saver, "idle", 2)
    chain(saver, "busy", 2)
    maintain_checkpoints(saver, archive_after=0)
    assert saver.get_tuple(generate_config("busy")) is not None  # promoted: alive in Redis
    later = clock() + 3 * 86_400
    result = maintain_checkpoints(saver, archive_after=30 * 86_400, retention_days=2, now=later)
    assert result.changed == 1 and result.skipped == 1
    assert archived(pg_engine, namespace, "idle")[0] == []
    assert len(archived(pg_engine, namespace, "busy")[0]) == 2


def test_settings_from_the_environment() -> None:
    assert CheckpointSettings.from_env({}) == CheckpointSettings(60.0, 10)
    env = {"TIEREDSTORE_CHECKPOINT_INTERVAL": "5", "TIEREDSTORE_CHECKPOINT_WINDOW": "3"}
    assert CheckpointSettings.from_env(env) == CheckpointSettings(5.0, 3)
    with pytest.raises(InvalidInput, match="TIEREDSTORE_CHECKPOINT_WINDOW"):
        CheckpointSettings.from_env({"TIEREDSTORE_CHECKPOINT_WINDOW": "0"})


# -- the memory tier, Redis down -----------------------------------------------------------


def test_the_memory_tier_is_coherent_across_processes(make: Make) -> None:
    mine, theirs = make(memory_max_bytes=2**20), make()
    first = put(mine, "t", step=0)
    memory = mine.tiers.memory
    assert memory is not None
    tup = mine.get_tuple(generate_config("t"))
    assert tup is not None and memory.hits == 1
    newer = put(theirs, "t", first, step=1)  # another process moves the thread on
    tup = mine.get_tuple(generate_config("t"))
    assert tup is not None and tup.config["configurable"]["checkpoint_id"] == newer[
        "configurable"]["checkpoint_id"]
    assert tup.checkpoint["channel_values"] == {"n": 1} and memory.hits == 1
    assert mine.get_tuple(generate_config("t")) is not None and memory.hits == 2


def test_redis_down_reads_come_from_the_archive_and_writes_fail(pg_engine: Any,
                                                                namespace: str) -> None:
    server = RedisServer().start()
    try:
        saver = TieredCheckpointSaver(
            redis=RedisStore.from_url(server.url, namespace=namespace, socket_timeout=1,
                                      socket_connect_timeout=1),
            archive=ArchiveStore(pg_engine, namespace=namespace), durability="write_through")
        configs = chain(saver, "t", 3)
        server.stop()
        tup = saver.get_tuple(generate_config("t"))
        assert tup is not None and tup.config["configurable"]["checkpoint_id"] == configs[-1][
            "configurable"]["checkpoint_id"]
        assert len(ids(saver, "t")) == 3
        with pytest.raises(BackendUnavailable):
            put(saver, "t", configs[-1])
        with pytest.raises(BackendUnavailable):
            saver.delete_thread("t")  # nothing done: the archive keeps the thread
        assert len(ids(saver, "t")) == 3
        saver.close()
    finally:
        server.close()


# -- whole threads -------------------------------------------------------------------------


def test_copy_and_prune_reach_every_tier(make: Make, pg_engine: Any, namespace: str) -> None:
    saver = make(window=2)
    configs = chain(saver, "src", 6) + chain(saver, "src", 2, ns="child:1")
    saver.put_writes(configs[5], [("ch", "w")], "task")
    maintain_checkpoints(saver, archive_after=3600, window=2)
    saver.copy_thread("src", "dst")
    assert ids(saver, "dst", None) == ids(saver, "src", None)
    assert len(ids(saver, "dst")) == 6
    saver.prune(["dst"], strategy="keep_latest")
    assert ids(saver, "dst") == [configs[5]["configurable"]["checkpoint_id"]]
    assert ids(saver, "dst", "child:1") == [configs[7]["configurable"]["checkpoint_id"]]
    latest = saver.get_tuple(generate_config("dst"))
    assert latest is not None and latest.pending_writes == [("task", "ch", "w")]
    assert len(archived(pg_engine, namespace, "dst")[0]) <= 2
    put(saver, "delta", counters_since_delta_snapshot={"messages": [1, 1]})
    with pytest.raises(NotImplementedError):
        saver.prune(["src", "delta"], strategy="keep_latest")
    assert len(ids(saver, "src")) == 6  # refused before anything was pruned


def test_list_without_a_thread_walks_every_thread(make: Make) -> None:
    saver = make(window=1)
    chain(saver, "a", 3)
    chain(saver, "b", 2)
    maintain_checkpoints(saver, archive_after=3600, window=1)
    listed = list(saver.list(None))
    assert len(listed) == 5
    assert [t.checkpoint["id"] for t in listed] == sorted(
        (t.checkpoint["id"] for t in listed), reverse=True)
    assert {t.config["configurable"]["thread_id"] for t in saver.list(None, filter={"step": 1})
            } == {"a", "b"}
    assert len(list(saver.list(None, limit=2))) == 2


# -- the worker ----------------------------------------------------------------------------


def test_the_worker_task_archives_and_beat_schedules_it(make: Make, pg_url: str,
                                                         redis_prefix: str,
                                                         namespace: str) -> None:
    from worker.app import create_app

    entry = create_app({"TIEREDSTORE_CHECKPOINT_INTERVAL": "7"}).conf.beat_schedule[
        "tieredstore-checkpoints"]
    assert entry["task"] == "tieredstore.checkpoints"
    assert entry["schedule"].total_seconds() == 7
    saver = make()
    chain(saver, "t", 3)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TIEREDSTORE_REDIS_URL": REDIS_URL,
           "TIEREDSTORE_DATABASE_URL": pg_url, "TIEREDSTORE_NAMESPACE": namespace,
           "TIEREDSTORE_PREFIX": redis_prefix, "TIEREDSTORE_BUCKETS": "4",
           "TIEREDSTORE_ARCHIVE_AFTER": "0"}
    probe = ("import json; from tieredstore.worker import tasks; "
             "print(json.dumps(tasks.checkpoints.apply().get()))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["task"] == "checkpoints" and summary["result"]["changed"] == 1
    assert not hot_ids(saver, "t") and len(ids(saver, "t")) == 3
