"""The bucketed key layout of the Redis tier, on standalone Redis and on a cluster.

A namespace's sessions live in B buckets (recorded at ``P:buckets``, fixed
per namespace); ``list`` merges every bucket's keyset; the per-user indexes
are kept right when another store object changed a session's owner (each
store only guesses the owner, the scripts know it); maintenance finds a
session's user index through the bucket's ``own`` hash; and on a Redis
Cluster every key of a bucket lives on the node owning the bucket's slot.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.conftest import REDIS_URL, LoopThread
from tieredstore import ConfigurationError, Message, RedisStore
from tieredstore.tiers.redis import AsyncRedisStore, RedisKeys


def text(content: str) -> Message:
    return Message(role="user", content=content)


def unique(stem: str = "bk") -> str:
    return f"{stem}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make(redis_client: redis.Redis, redis_prefix: str) -> Iterator[Callable[..., RedisStore]]:
    made: list[RedisStore] = []

    def build(**options: Any) -> RedisStore:
        options.setdefault("namespace", unique())
        store = RedisStore(redis_client, prefix=redis_prefix, **options)
        made.append(store)
        return store

    yield build
    for store in made:
        store.close()


def everything(client: redis.Redis, keys: RedisKeys) -> dict[bytes, bytes | None]:
    """Every key of a namespace with its serialized value."""
    return {key: client.dump(key) for key in client.scan_iter(match=keys.root + "*", count=1000)}


def idx(store: RedisStore, sid: str) -> str:
    return store.keys.idx(store.keys.bucket(sid))


def own(store: RedisStore, sid: str) -> str:
    return store.keys.own(store.keys.bucket(sid))


# -- the bucket count is fixed per namespace ------------------------------------------------


def test_a_namespace_refuses_another_bucket_count(
    make: Callable[..., RedisStore], redis_client: redis.Redis
) -> None:
    namespace = unique()
    first = make(namespace=namespace, buckets=16)
    first.save("a", [text("a")], ttl=60, user_id="u")
    assert redis_client.get(first.keys.layout) == b"16"
    before = everything(redis_client, first.keys)
    wrong = make(namespace=namespace, buckets=8)
    calls: list[Callable[[], object]] = [
        lambda: wrong.save("b", [text("b")], user_id="u"),
        lambda: wrong.append("a", text("more")),
        lambda: wrong.load("a"),
        lambda: wrong.list(),
        lambda: wrong.delete("a"),
        lambda: wrong.purge_expired(),
    ]
    for call in calls:  # refused on its first call, and on every call after it
        with pytest.raises(ConfigurationError, match="16 buckets") as info:
            call()
        assert info.value.backend == "redis" and "buckets=8" in str(info.value)
    assert everything(redis_client, first.keys) == before  # nothing written
    same = make(namespace=namespace, buckets=16)
    same.save("b", [text("b")], user_id="u")
    assert same.load("a") == [text("a")]
    assert sorted(same.list(user_id="u").ids) == ["a", "b"]
    assert redis_client.get(first.keys.layout) == b"16"


def test_the_first_store_of_a_namespace_records_its_count(
    make: Callable[..., RedisStore], redis_client: redis.Redis
) -> None:
    namespace = unique()
    eight = make(namespace=namespace, buckets=8)
    assert not eight.exists("x")  # a read records the count too
    assert redis_client.get(eight.keys.layout) == b"8"
    eight.save("x", [text("x")])
    with pytest.raises(ConfigurationError, match="8 buckets"):
        make(namespace=namespace).load("x")  # the default, 16
    assert make(namespace=namespace, buckets=8).load("x") == [text("x")]
    # another namespace under the same prefix is unaffected
    assert make().list().ids == []


def test_the_async_store_refuses_the_same(
    make: Callable[..., RedisStore], redis_client: redis.Redis, redis_prefix: str
) -> None:
    namespace = unique()
    make(namespace=namespace).save("a", [text("a")])
    before = everything(redis_client, RedisKeys(redis_prefix, namespace))

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            wrong = AsyncRedisStore(client, prefix=redis_prefix, namespace=namespace, buckets=4)
            with pytest.raises(ConfigurationError, match="16 buckets"):
                await wrong.save("b", [text("b")])
            right = AsyncRedisStore(client, prefix=redis_prefix, namespace=namespace)
            assert await right.load("a") == [text("a")]
        finally:
            await client.aclose()

    asyncio.run(main())
    assert everything(redis_client, RedisKeys(redis_prefix, namespace)) == before


# -- list over every bucket --------------------------------------------------------------


def _tie(store: RedisStore, client: redis.Redis, sids: list[str], score: int) -> None:
    """Give sessions the same last-activity score, as a busy server would: in
    their bucket's index and, for a session with a user, in the user's index."""
    for sid in sids:
        client.zadd(idx(store, sid), {sid: score})
        owner = client.hget(store.keys.meta(sid), "user")
        if owner is not None:
            client.zadd(store.keys.user_of(sid, owner.decode()), {sid: score})
        client.hset(store.keys.meta(sid), "updated", score)


def _pages(store: RedisStore, order: Any, limit: int, user_id: str | None = None) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(user_id=user_id, limit=limit, cursor=cursor, order=order)
        assert len(page.ids) <= limit
        seen += page.ids
        cursor = page.next_cursor
        if cursor is None:
            return seen


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_list_pages_through_every_bucket_exactly_once(
    make: Callable[..., RedisStore], redis_client: redis.Redis, order: Any
) -> None:
    store = make()
    k = store.keys
    sids = [f"b{i:03d}" for i in range(500)]
    owners = {sid: ("ua", "ub", None)[i % 3] for i, sid in enumerate(sids)}
    for sid in sids:
        store.save(sid, [], user_id=owners[sid])
    in_bucket: dict[int, list[str]] = {}
    for sid in sids:
        in_bucket.setdefault(k.bucket(sid), []).append(sid)
    assert set(in_bucket) == set(range(k.buckets))  # every bucket holds sessions
    # ties inside each bucket, and the same scores in several buckets
    for b, members in in_bucket.items():
        _tie(store, redis_client, members[: 2 * len(members) // 3], 1_700_000_000_000 + b % 4)
    scored = [(int(redis_client.zscore(idx(store, sid), sid) or 0), sid) for sid in sids]
    expected = [sid for _, sid in sorted(scored, reverse=order == "desc")]
    assert len({score for score, _ in scored}) < len(sids) - 250  # many ties indeed
    for limit in (7, 64):
        assert _pages(store, order, limit) == expected
    assert store.list(limit=1000, order=order).ids == expected
    for name in ("ua", "ub"):
        mine = [sid for sid in expected if owners[sid] == name]
        assert _pages(store, order, 5, user_id=name) == mine
        assert store.list(user_id=name, limit=1000, order=order).ids == mine
    assert store.list(user_id="nobody").ids == []


# -- owners changed by another store object --------------------------------------------------


def _indexed_users(client: redis.Redis, store: RedisStore, sid: str, *users: str) -> set[str]:
    """Which of ``users``' indexes hold ``sid``."""
    return {u for u in users if client.zscore(store.keys.user_of(sid, u), sid) is not None}


def test_an_owner_change_made_elsewhere_reaches_the_user_indexes(
    make: Callable[..., RedisStore], redis_client: redis.Redis
) -> None:
    namespace = unique()
    a, b = make(namespace=namespace), make(namespace=namespace)
    # The index entries are checked before any list call, which would drop
    # stale entries lazily (a user's entry whose score differs from idx).
    a.save("s", [text("1")], user_id="u1")
    assert a.list(user_id="u1").ids == ["s"]
    b.save("s", [text("2")], user_id="u2")
    assert _indexed_users(redis_client, a, "s", "u1", "u2") == {"u2"}
    a.append("s", text("3"))  # a still believes the owner is u1
    assert a.load("s") == [text("2"), text("3")]
    assert _indexed_users(redis_client, a, "s", "u1", "u2") == {"u2"}
    assert redis_client.zscore(a.keys.user_of("s", "u2"), "s") == redis_client.zscore(
        idx(a, "s"), "s"
    )
    assert redis_client.hget(own(a, "s"), "s") == b"u2"
    for store in (a, b):
        assert store.list(user_id="u1").ids == [] and store.list(user_id="u2").ids == ["s"]
    a.save("s", [text("4")])  # no user given: the session keeps u2
    assert _indexed_users(redis_client, a, "s", "u1", "u2") == {"u2"}
    assert a.get("s").user_id == "u2" and a.list(user_id="u2").ids == ["s"]
    b.save("s", [text("5")], user_id="u3")
    a.merge_metadata("s", {"k": 1})  # a's guess is stale again
    assert _indexed_users(redis_client, a, "s", "u1", "u2", "u3") == {"u3"}
    assert redis_client.zscore(a.keys.user_of("s", "u3"), "s") == redis_client.zscore(
        idx(a, "s"), "s"
    )
    assert redis_client.hget(own(a, "s"), "s") == b"u3"
    assert a.list(user_id="u3").ids == ["s"] and a.list(user_id="u2").ids == []
    assert a.delete("s")
    for name in ("u1", "u2", "u3"):
        assert a.list(user_id=name).ids == [] and b.list(user_id=name).ids == []
    assert _indexed_users(redis_client, a, "s", "u1", "u2", "u3") == set()
    assert redis_client.hlen(own(a, "s")) == 0


def test_fork_onto_a_destination_another_user_owned(
    make: Callable[..., RedisStore], redis_client: redis.Redis
) -> None:
    namespace = unique()
    a, b = make(namespace=namespace), make(namespace=namespace)
    a.save("src", [text("src")], user_id="u1")
    a.save("dst", [text("old")], user_id="u2")  # a remembers u2 for dst
    b.save("dst", [text("older")], ttl=0.05, user_id="u3")
    time.sleep(0.15)  # dst expired; its index entries (u3's included) are still there
    assert redis_client.zscore(a.keys.user_of("dst", "u3"), "dst") is not None
    a.fork("src", "dst")
    assert _indexed_users(redis_client, a, "dst", "u1", "u2", "u3") == {"u1"}
    assert redis_client.hget(own(a, "dst"), "dst") == b"u1"
    assert a.load("dst") == [text("src")] and a.get("dst").user_id == "u1"
    assert sorted(a.list(user_id="u1").ids) == ["dst", "src"]
    assert a.list(user_id="u2").ids == [] and a.list(user_id="u3").ids == []


def test_restore_onto_a_session_another_user_owned(
    make: Callable[..., RedisStore], redis_client: redis.Redis
) -> None:
    namespace = unique()
    a, b = make(namespace=namespace), make(namespace=namespace)
    source = make()
    source.save("r", [text("copy")], user_id="u3", metadata={"k": 1})
    taken = source.snapshot("r")
    assert taken is not None
    a.save("r", [text("old")], user_id="u1")  # a remembers u1
    b.save("r", [text("older")], ttl=0.05, user_id="u2")
    time.sleep(0.15)
    assert a.restore(taken)
    assert _indexed_users(redis_client, a, "r", "u1", "u2", "u3") == {"u3"}
    assert redis_client.hget(own(a, "r"), "r") == b"u3"
    assert a.load("r") == [text("copy")] and a.get("r").user_id == "u3"
    assert a.list(user_id="u3").ids == ["r"]
    assert a.list(user_id="u1").ids == [] and a.list(user_id="u2").ids == []
    # a copy without a user leaves no owner behind
    b.save("r2", [text("x")], ttl=0.05, user_id="u2")
    time.sleep(0.15)
    assert a.restore(replace(taken, sid="r2", user_id=None))
    assert _indexed_users(redis_client, a, "r2", "u2") == set()
    assert not redis_client.hexists(own(a, "r2"), "r2")
    assert a.list(user_id="u2").ids == []


def test_the_async_store_follows_an_owner_change_too(
    make: Callable[..., RedisStore], redis_client: redis.Redis, redis_prefix: str,
    loop_thread: LoopThread, async_redis_client: Any,
) -> None:
    namespace = unique()
    other = make(namespace=namespace)
    store = AsyncRedisStore(async_redis_client, prefix=redis_prefix, namespace=namespace)
    loop_thread.run(store.save("s", [text("1")], user_id="u1"))
    other.save("s", [text("2")], user_id="u2")
    loop_thread.run(store.append("s", text("3")))
    assert _indexed_users(redis_client, other, "s", "u1", "u2") == {"u2"}
    assert other.list(user_id="u1").ids == [] and other.list(user_id="u2").ids == ["s"]
    assert loop_thread.run(store.delete("s"))
    assert _indexed_users(redis_client, other, "s", "u1", "u2") == set()
    assert other.list(user_id="u2").ids == [] and redis_client.hlen(own(other, "s")) == 0


# -- maintenance through the own hash ---------------------------------------------------------


def test_purge_expired_removes_sessions_from_their_users_index(
    make: Callable[..., RedisStore], redis_client: redis.Redis
) -> None:
    store = make()
    k = store.keys
    sids = [f"e{i}" for i in range(40)]
    for i, sid in enumerate(sids):
        store.save(sid, [text("a")], ttl=0.05, user_id="u" if i % 2 else "v")
    store.save("live", [text("a")], ttl=60, user_id="u")
    assert len({k.bucket(sid) for sid in sids}) > 8
    time.sleep(0.15)
    # no list ran (it would drop the entries lazily): the user indexes still hold them
    held = sum(redis_client.zcard(k.user(b, u)) for b in range(k.buckets) for u in "uv")
    assert held == 41
    crowded = max(range(k.buckets), key=lambda b: sum(k.bucket(s) == b for s in sids))
    due = sum(k.bucket(s) == crowded for s in sids)
    assert due >= 3
    assert store.purge_batch(crowded, 2) == 2  # one bucket, at most a batch
    assert store.purge_expired(batch_size=2) == 38
    home = k.bucket("live")
    for b in range(k.buckets):
        assert redis_client.zcard(k.user(b, "v")) == 0
        assert redis_client.zcard(k.user(b, "u")) == (b == home)
        assert redis_client.hgetall(k.own(b)) == ({b"live": b"u"} if b == home else {})
        assert redis_client.zcard(k.exp(b)) == (b == home)
    assert store.list(user_id="u").ids == ["live"] and store.list().ids == ["live"]
    assert all(redis_client.exists(*k.session(sid)) == 0 for sid in sids)


def test_sweep_buries_sessions_whose_hash_vanished(
    make: Callable[..., RedisStore], redis_client: redis.Redis
) -> None:
    store = make()
    k = store.keys
    b = k.bucket("ghost")
    # a neighbour in the same bucket, whose keys lost their TTL
    kept = next(s for s in (f"kept{i}" for i in range(1000)) if k.bucket(s) == b)
    store.save("ghost", [text("a")], user_id="u")
    store.save(kept, [text("a")], ttl=60, user_id="u")
    redis_client.delete(k.meta("ghost"))  # by hand, behind the store's back
    redis_client.persist(k.messages(kept))
    before = everything(redis_client, k)
    assert store.sweep(b, 0, 100, dry_run=True) == (2, 1, 1, 0)
    assert everything(redis_client, k) == before  # a dry run only counts
    assert store.sweep(b, 0, 100) == (2, 1, 1, 0)
    assert redis_client.zscore(k.idx(b), "ghost") is None
    assert redis_client.zscore(k.user(b, "u"), "ghost") is None
    assert not redis_client.hexists(k.own(b), "ghost")
    assert redis_client.exists(*k.session("ghost")) == 0  # its list went too
    assert redis_client.pexpiretime(k.messages(kept)) == redis_client.pexpiretime(k.meta(kept))
    assert store.list(user_id="u").ids == [kept]
    # a hash whose expiry has passed by its own field counts as expired
    redis_client.hset(k.meta(kept), "expires", 1)
    assert store.sweep(b, 0, 100) == (1, 0, 0, 1)
    assert redis_client.zcard(k.user(b, "u")) == 0 and redis_client.hlen(k.own(b)) == 0
    assert store.sweep(b, 0, 100) == (0, 0, 0, 0)


# -- on a Redis Cluster --------------------------------------------------------------------


def _cluster_keys(client: RedisCluster, root: str) -> dict[str, str]:
    """Every key under ``root`` on the cluster's primaries, with the node holding it."""
    found: dict[str, str] = {}
    for node in client.get_primaries():
        for key in node.redis_connection.scan_iter(match=root + "*", count=1000):
            assert key.decode() not in found
            found[key.decode()] = node.name
    return found


def test_a_cluster_store_keeps_every_bucket_on_its_slot(
    cluster_client: RedisCluster, redis_prefix: str
) -> None:
    namespace = unique()
    store = RedisStore(cluster_client, prefix=redis_prefix, namespace=namespace,
                       max_messages=3, spill=True)
    other = RedisStore(cluster_client, prefix=redis_prefix, namespace=namespace)
    k = store.keys
    sids = [f"c{i:03d}" for i in range(160)]
    assert {k.bucket(sid) for sid in sids} == set(range(k.buckets))
    owners = {sid: f"u{i % 3}" for i, sid in enumerate(sids)}
    try:
        for i, sid in enumerate(sids):
            store.save(sid, [text("a")], ttl=60 if i % 2 else None, user_id=owners[sid],
                       metadata={"i": i})
            store.append(sid, text("b"), text("c"), text("d"))  # trims into the spill list
        for sid in sids[::10]:  # another store moves them; ours still believes the old owner
            owners[sid] = "moved"
            other.save(sid, [text("x")], user_id="moved")
            store.append(sid, text("y"))
            store.merge_metadata(sid, {"m": True})
        forks = [(src, f"f-{src}") for src in sids[:20]]
        assert any(k.bucket(src) != k.bucket(dst) for src, dst in forks)
        for src, dst in forks:  # across buckets, so across slots
            store.fork(src, dst)
            owners[dst] = owners[src]
        gone = sids[1::7]
        for sid in gone:
            assert store.delete(sid)
            del owners[sid]
        for sid in sids[2::9]:  # expired, then purged
            if sid in owners:
                store.save(sid, [text("e")], ttl=0.05, user_id=owners[sid])
                del owners[sid]
        time.sleep(0.15)
        assert store.purge_expired() > 0
        assert sorted(_pages(store, "desc", 9)) == sorted(owners)
        for name in ("u0", "u1", "u2", "moved"):
            mine = sorted(sid for sid, owner in owners.items() if owner == name)
            assert sorted(_pages(store, "asc", 4, user_id=name)) == mine
        assert store.exists_many([*sids[:3], "missing"]) == [
            sid in owners for sid in [*sids[:3], "missing"]
        ]
        assert store.stats()["indexed_sessions"] == len(owners)
        # every key is in its bucket's slot, on the node owning that slot
        found = _cluster_keys(cluster_client, k.root)
        assert found.pop(k.layout) == cluster_client.get_node_from_key(k.layout).name
        buckets_seen: set[int] = set()
        for key, node in found.items():
            b = next(i for i, t in enumerate(k.tags) if key.startswith(t))
            buckets_seen.add(b)
            assert cluster_client.keyslot(key) == cluster_client.keyslot(k.idx(b))
            assert cluster_client.keyslot(key) == key_slot(f"{namespace}.{b}".encode())
            assert cluster_client.get_node_from_key(key).name == node
        assert buckets_seen == set(range(k.buckets))
        assert len(set(found.values())) > 1  # the buckets spread over the primaries
        for sid in owners:
            assert k.meta(sid) in found and k.idx(k.bucket(sid)) in found
        for sid in gone:
            assert k.meta(sid) not in found and k.tombstone(sid) in found
    finally:
        other.close()
        store.close()


def test_an_async_cluster_store_spans_the_buckets(
    async_cluster_client: Any, cluster_client: RedisCluster, redis_prefix: str,
    loop_thread: LoopThread,
) -> None:
    namespace = unique()
    sids = [f"a{i:03d}" for i in range(80)]

    async def main() -> tuple[list[str], list[str], list[str]]:
        store = AsyncRedisStore(async_cluster_client, prefix=redis_prefix, namespace=namespace)
        assert {store.keys.bucket(sid) for sid in sids} == set(range(store.keys.buckets))
        for i, sid in enumerate(sids):
            await store.save(sid, [text("a")], user_id=f"u{i % 2}")
            await store.append(sid, text("b"))
        await store.fork(sids[0], "copy")
        for sid in sids[::4]:
            await store.delete(sid)
        everyone = (await store.list(limit=1000)).ids
        mine = (await store.list(user_id="u1", limit=1000)).ids
        paged: list[str] = []
        cursor = None
        while True:
            page = await store.list(user_id="u0", limit=6, cursor=cursor, order="asc")
            paged += page.ids
            cursor = page.next_cursor
            if cursor is None:
                break
        await store.aclose()
        return everyone, mine, paged

    everyone, mine, paged = loop_thread.run(main())
    left = {sid: i % 2 for i, sid in enumerate(sids) if i % 4}
    assert sorted(everyone) == sorted([*left, "copy"])
    assert sorted(mine) == sorted(sid for sid, u in left.items() if u == 1)
    assert sorted(paged) == sorted([*(sid for sid, u in left.items() if u == 0), "copy"])
    assert len(paged) == len(set(paged))
    keys = RedisKeys(redis_prefix, namespace)
    for key in _cluster_keys(cluster_client, keys.root):
        if key != keys.layout:
            b = next(i for i, t in enumerate(keys.tags) if key.startswith(t))
            assert cluster_client.keyslot(key) == key_slot(f"{namespace}.{b}".encode())
