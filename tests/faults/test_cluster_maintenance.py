"""Maintenance on a real Redis Cluster: expire, archive_idle and trim end to end,
two workers splitting one backlog by bucket leases, and a crashed lease holder.

Sessions are spread over every bucket (so over every primary). The two-worker
test runs on standalone Redis too. See ``test_cluster`` for the cluster source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from tests.faults.cluster_support import (
    archive_rows,
    archived_sessions,
    cluster_nodes_of,
    msg,
    session_keys,
    spanning_namespace,
    spread_ids,
    wait_until,
)
from tests.test_maintenance import check_tool_pairs, conversation
from tieredstore import ArchiveStore, SessionNotFound
from tieredstore.codec import encode_json
from tieredstore.maintenance import MaintenanceResult, archive_idle, expire, trim
from tieredstore.policy import message_kind, plan_trim_bytes
from tieredstore.store import TieredStore
from tieredstore.tiers.redis import DEFAULT_BUCKETS, bucket_of

Factory = Callable[..., TieredStore]


@pytest.fixture
def namespace(cluster_client: RedisCluster) -> str:
    """A fresh namespace with buckets on every primary."""
    return spanning_namespace(cluster_client, "cmaint", DEFAULT_BUCKETS)


@pytest.fixture
def make_store(make_tiered: Factory, cluster_client: RedisCluster) -> Factory:
    """TieredStores (no memory tier) over the cluster (or ``redis=``) and the run's PostgreSQL."""

    def make(**options: Any) -> TieredStore:
        options.setdefault("redis", cluster_client)
        options.setdefault("memory_max_bytes", None)
        return make_tiered(**options)

    return make


def archive_all(store: TieredStore, **limits: Any) -> MaintenanceResult:
    """archive_idle for every session, including those written this millisecond."""
    return archive_idle(store, archive_after=0, now=time.time() + 1, **limits)


def hot(store: TieredStore, sid: str) -> bool:
    assert store.redis is not None
    return bool(store.redis.exists(sid))


def listed(store: TieredStore, user_id: str | None = None) -> set[str]:
    page = store.list(user_id=user_id, limit=1000)
    assert page.next_cursor is None
    return set(page.ids)


# -- expire, archive_idle, trim end to end ------------------------------------------------


def test_expire_then_archive_idle_across_every_bucket(
    make_store: Factory, cluster_client: RedisCluster, pg_engine: Any, namespace: str
) -> None:
    store = make_store(max_messages=4)
    assert store.redis is not None
    keys = store.redis.keys
    short = spread_ids("s", DEFAULT_BUCKETS, 2)
    long = spread_ids("l", DEFAULT_BUCKETS, 2)
    forever = spread_ids("f", DEFAULT_BUCKETS, 1)
    assert len(cluster_nodes_of(cluster_client, short + long, keys)) == len(
        cluster_client.get_primaries())
    history = {}
    owner = {}
    for group, ttl in ((short, 0.3), (long, 3600), (forever, None)):
        for n, sid in enumerate(group):
            history[sid] = [msg(f"{sid}-{j}") for j in range(2 + n % 5)]  # some spill
            owner[sid] = f"u{n % 3}"
            store.save(sid, history[sid], user_id=owner[sid], ttl=ttl, metadata={"n": n})
    archive = ArchiveStore(pg_engine, namespace=namespace)
    archive.save("cold-short", [msg("cold")], ttl=0.3, user_id="u0")
    archive.save("cold-long", [msg("cold")], ttl=3600, user_id="u0")
    history["cold-long"], owner["cold-long"] = [msg("cold")], "u0"
    time.sleep(0.5)  # Redis expires by its own clock: past every short TTL

    # One call for every bucket: no batch limit, a sweep budget above the index's size.
    result = expire(store, batch_size=200, max_batches=None)
    assert (result.changed, result.repaired, result.remaining) == (len(short) + 1, 0, False)
    live = set(long) | set(forever) | {"cold-long"}
    for sid in [*short, "cold-short"]:
        with pytest.raises(SessionNotFound):
            store.get(sid)
        assert not cluster_client.exists(*keys.session(sid))
        assert cluster_client.zscore(keys.idx(keys.bucket(sid)), sid) is None
        assert cluster_client.zscore(keys.exp(keys.bucket(sid)), sid) is None
    assert listed(store) == live
    for user in ("u0", "u1", "u2"):
        assert listed(store, user) == {sid for sid in live if owner[sid] == user}, user

    result = archive_all(store, batch_size=7)
    assert (result.changed, result.skipped, result.remaining) == (len(long) + len(forever), 0,
                                                                  False)
    assert session_keys(cluster_client, keys.root) == [], "Redis kept session keys"
    assert listed(store) == live
    for user in ("u0", "u1", "u2"):
        assert listed(store, user) == {sid for sid in live if owner[sid] == user}, user
    for sid in live:
        session = store.get(sid)
        assert store.load(sid, full=True) == history[sid], sid
        assert session.user_id == owner[sid]
        assert (session.expires_at is None) == (sid in forever), sid
    # the reads promoted every session back to Redis; archiving again moves each once more
    assert archive_all(store).changed == len(live)
    assert session_keys(cluster_client, keys.root) == []
    assert expire(store, max_batches=None).changed == 0


def test_trim_across_every_bucket_keeps_history_archived(
    make_store: Factory, cluster_client: RedisCluster
) -> None:
    store = make_store()
    assert store.redis is not None
    sessions = {sid: conversation(sid, 2 + n % 4)
                for n, sid in enumerate(spread_ids("t", DEFAULT_BUCKETS, 2))}
    for sid, messages in sessions.items():
        store.save(sid, messages)
    result = trim(store, max_messages=7, batch_size=3, max_batches=None)
    assert (result.skipped, result.remaining) == (0, False)
    assert result.changed == sum(len(m) > 7 for m in sessions.values()) > 0
    for sid, messages in sessions.items():
        kinds = "".join(message_kind(m) for m in messages)
        lead, drop = plan_trim_bytes(kinds, [len(encode_json(m)) for m in messages], 7, None)
        window = store.load(sid)
        assert window == messages[:lead] + messages[lead + drop:], sid
        check_tool_pairs(window)
        assert store.load(sid, full=True) == messages, "trimmed messages must stay archived"
    assert trim(store, max_messages=7).changed == 0


# -- two workers at once; a crashed lease holder ---------------------------------------------


@pytest.fixture(params=["cluster", "standalone"])
def backend(request: pytest.FixtureRequest) -> tuple[Any, Callable[[], Any]]:
    """``(the run's client, a factory of fresh clients of the same server)``."""
    from tests.conftest import REDIS_URL

    if request.param == "cluster":
        url = request.getfixturevalue("cluster_url")
        return request.getfixturevalue("cluster_client"), lambda: RedisCluster.from_url(url)
    return request.getfixturevalue("redis_client"), lambda: redis.Redis.from_url(REDIS_URL)


def test_two_workers_archive_a_backlog_exactly_once(
    backend: tuple[Any, Callable[[], Any]], make_store: Factory, pg_engine: Any,
    namespace: str,
) -> None:
    client, fresh_client = backend
    writer = make_store(redis=client)
    sids = [f"w{i}" for i in range(2000)]
    for sid in sids:
        writer.save(sid, [msg(f"{sid}-0"), msg(f"{sid}-1")])
    clients = [fresh_client() for _ in range(2)]
    try:
        workers = [make_store(redis=c) for c in clients]
        barrier = threading.Barrier(2)
        results: list[MaintenanceResult] = []
        errors: list[BaseException] = []

        def work(store: TieredStore) -> None:
            try:
                barrier.wait()
                results.append(archive_all(store, batch_size=50, max_batches=None))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in clients:
            c.close()
    assert not errors, errors
    print(f"\ntwo workers, {len(sids)} sessions: archived "
          f"{[r.changed for r in results]}, skipped {[r.skipped for r in results]}")
    assert sum(r.changed for r in results) == len(sids)
    assert sum(r.skipped for r in results) == 0
    assert all(r.changed > 0 for r in results), "one worker did everything: no overlap"
    assert sum(r.messages for r in results) == 2 * len(sids)
    rows = archive_rows(pg_engine, namespace)
    assert set(rows) == set(sids) == archived_sessions(pg_engine, namespace)
    assert all(seqs == [0, 1] for seqs in rows.values()), "a message archived twice"
    assert writer.redis is not None
    assert session_keys(client, writer.redis.keys.root) == [], "Redis kept session keys"
    assert writer.load(sids[7], full=True) == [msg(f"{sids[7]}-0"), msg(f"{sids[7]}-1")]


def test_a_crashed_lease_holder_blocks_only_its_bucket_until_expiry(
    make_store: Factory, cluster_client: RedisCluster
) -> None:
    store = make_store()
    assert store.redis is not None
    keys = store.redis.keys
    sids = spread_ids("c", DEFAULT_BUCKETS, 4)
    for sid in sids:
        store.save(sid, [msg(sid)])
    dead = bucket_of(sids[0], DEFAULT_BUCKETS)
    held = [sid for sid in sids if keys.bucket(sid) == dead]
    lease = keys.lease(dead, "archive_idle")
    # A worker took the bucket and died: its lease outlives it for ttl_ms.
    assert store.redis.claim_buckets([dead], "archive_idle", "dead", ttl_ms=3000) == [dead]
    meanwhile = archive_all(store, batch_size=5, max_batches=None)
    assert cluster_client.get(lease) == b"dead", "precondition: the lease outlived the call"
    print(f"\nbucket {dead} leased by a dead worker: {meanwhile.changed} archived, "
          f"remaining={meanwhile.remaining}")
    assert meanwhile.changed == len(sids) - len(held)
    assert all(hot(store, sid) for sid in held), "the leased bucket was worked"
    assert not any(hot(store, sid) for sid in sids if sid not in held)
    wait_until(lambda: not cluster_client.exists(lease), timeout=30, what="the lease expired")
    later = archive_all(store, batch_size=5, max_batches=None)
    assert (later.changed, later.skipped, later.remaining) == (len(held), 0, False)
    assert session_keys(cluster_client, keys.root) == []
    for sid in sids:
        assert store.load(sid, full=True) == [msg(sid)]



@pytest.mark.parametrize("task", ["expire", "trim"])
def test_repeated_calls_finish_a_lap(make_store: Factory, task: str) -> None:
    """Calls repeated while ``remaining`` holds finish a lap over every bucket, then
    report no work left (the ``expire`` docstring). 160 sessions in 16 buckets, 20
    index entries (expire) or 2 buckets (trim) per call: 8 calls make a lap, 40 allow
    five laps."""
    store = make_store()
    for sid in spread_ids("e", DEFAULT_BUCKETS, 10):
        store.save(sid, [msg(sid)], ttl=3600)
    if task == "expire":
        calls = [expire(store, batch_size=10, max_batches=2) for _ in range(40)]
    else:
        calls = [trim(store, max_messages=5, batch_size=10, max_batches=2) for _ in range(40)]
    print(f"\n{task}, 160 sessions: remaining in {sum(r.remaining for r in calls)} "
          f"of {len(calls)} calls")
    assert not all(r.remaining for r in calls)
