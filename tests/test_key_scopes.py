"""Key scopes that cannot collide: distinct (prefix, namespace) pairs share nothing.

Redis keys are ``<prefix>:<namespace>:<rest>``; neither part may hold ``:``
(nor, being ids, ``{`` ``}`` or whitespace), so the first two fields of a key
name its scope. A pair that could alias another (``P:a``/``u`` against
``P``/``a``) is rejected. Within one scope the key roles cannot meet either:
every key but ``buckets`` starts with its bucket's hash tag
``{<namespace>.<b>}:``, followed by a role that ends where its argument
begins (``m:``, ``h:``, ``x:``, ``d:``, ``o:``, ``l:`` per session, ``u:``
per user, ``lease:`` and ``cur:`` per task) or by a fixed name (``idx``,
``exp``, ``own``, ``obx``, the channel ``inval``). The archive compares
namespaces exactly (no patterns), so ``a``, ``a:b``, ``a_`` and ``a%`` are
unrelated.

Each test on real servers writes the same session and user ids into several
near-identical scopes and checks that listing, loading, expiry
(:func:`tieredstore.maintenance.expire`), search, export and erasure
(:func:`tieredstore.query.erase`) in one never see or touch another.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from tieredstore import ArchiveStore, InvalidInput, RedisStore, TieredStore
from tieredstore.aio import AsyncTieredStore
from tieredstore.maintenance import expire
from tieredstore.query import ArchiveQuery, erase
from tieredstore.tiers.redis import RedisKeys

SIDS = ["s1", "idx", "exp", "own", "inval", "u:U", "lease:expire", "m", "h:x", "obx"]
USERS = ["U", "idx", "u", "maint"]
TASKS = ["expire", "trim", "archive_idle", "reconcile"]


def message(scope: int, sid: str) -> dict[str, Any]:
    return {"role": "user", "content": f"common words from scope{scope} about {sid}"}


# -- pure: the names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "namespace"),
    [("P:a", "u"), ("P", "a:u"), ("a:", "b"), ("a", ":b"), ("P{x}", "a"), ("P", "{a}"),
     ("", "a"), ("P", ""), ("P a", "b"), ("P", "a\ud800")],
)
def test_parts_that_could_alias_another_scope_are_rejected(prefix: str, namespace: str) -> None:
    with pytest.raises(InvalidInput):
        RedisKeys(prefix, namespace)


def test_the_measured_collision_is_rejected_before_any_write(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    namespace = f"ks{uuid.uuid4().hex[:8]}"
    for build in (
        lambda: RedisStore(redis_client, prefix=f"{redis_prefix}:{namespace}", namespace="u"),
        lambda: TieredStore.from_clients(redis=redis_client, prefix=f"{redis_prefix}:{namespace}",
                                         namespace="u", memory_max_bytes=None),
        lambda: AsyncTieredStore.from_clients(redis=redis.asyncio.Redis(),
                                              prefix=f"{redis_prefix}:{namespace}",
                                              namespace="u", memory_max_bytes=None),
    ):
        with pytest.raises(InvalidInput, match="':'"):
            build()
    # ... so P/a's per-user index keys belong to P/a alone.
    keys = RedisKeys(redis_prefix, namespace)
    for b in range(keys.buckets):
        assert keys.user(b, "x") == f"{redis_prefix}:{namespace}:{{{namespace}.{b}}}:u:x"


def names(keys: RedisKeys, sids: list[str], users: list[str]) -> dict[str, tuple[str, str]]:
    """Every key and channel name of a scope, with the role and argument it serves."""
    out: dict[str, tuple[str, str]] = {}

    def add(name: str, role: str, arg: str = "") -> None:
        assert name not in out, f"{name!r} is both {out[name]} and {(role, arg)}"
        out[name] = (role, arg)

    add(keys.channel, "channel")
    add(keys.layout, "layout")
    for b in range(keys.buckets):
        arg = str(b)
        add(keys.idx(b), "idx", arg)
        add(keys.exp(b), "exp", arg)
        add(keys.own(b), "own", arg)
        add(keys.obx(b), "obx", arg)
        add(keys.bucket_channel(b), "bucket channel", arg)
        for task in TASKS:
            add(keys.lease(b, task), "lease", f"{b} {task}")
            add(keys.cursor(b, task), "cursor", f"{b} {task}")
        for user in users:
            add(keys.user(b, user), "user", f"{b} {user}")
    for sid in sids:
        add(keys.messages(sid), "messages", sid)
        add(keys.meta(sid), "meta", sid)
        add(keys.spill(sid), "spill", sid)
        add(keys.tombstone(sid), "tombstone", sid)
        add(keys.outbox(sid), "outbox", sid)
        add(keys.lock(sid), "lock", sid)
        for user in users:
            assert keys.user_of(sid, user) == keys.user(keys.bucket(sid), user)
    return out


part = st.text(alphabet="aAu-_.:/@%{}é", min_size=1, max_size=4)
ident = st.text(alphabet="aAu-_.:/@%xidexpownmaintcursor", min_size=1, max_size=10)


def _valid(prefix: str, namespace: str, buckets: int) -> RedisKeys | None:
    try:
        return RedisKeys(prefix, namespace, buckets)
    except InvalidInput:
        return None


@settings(max_examples=300, deadline=None, database=None)
@given(a=st.tuples(part, part), b=st.tuples(part, part),
       buckets=st.tuples(st.sampled_from([1, 3, 16]), st.sampled_from([1, 3, 16])),
       sids=st.lists(ident, max_size=6, unique=True),
       users=st.lists(ident, max_size=6, unique=True))
def test_distinct_scopes_never_share_a_name(
    a: tuple[str, str], b: tuple[str, str], buckets: tuple[int, int], sids: list[str],
    users: list[str]
) -> None:
    keys_a, keys_b = _valid(*a, buckets[0]), _valid(*b, buckets[1])
    for keys in (keys_a, keys_b):
        if keys is not None:
            own = names(keys, sids, users)  # within a scope: no two roles meet
            for name in own:  # the first two fields name the scope
                assert tuple(name.split(":", 2)[:2]) == (keys.prefix, keys.namespace)
    if keys_a is not None and keys_b is not None and a != b:
        assert not set(names(keys_a, sids, users)) & set(names(keys_b, sids, users))


# -- Redis and the archive together ------------------------------------------------------


@pytest.fixture
def scopes(redis_client: redis.Redis, redis_prefix: str, pg_engine: sa.Engine
           ) -> Iterator[list[TieredStore]]:
    """Near-identical scopes on one Redis and one database, all holding the same ids."""
    base = f"ks{uuid.uuid4().hex[:8]}"
    pairs = [
        (redis_prefix, base),
        (redis_prefix, base + "u"),
        (redis_prefix, base + "-u"),
        (redis_prefix, base + "_"),
        (redis_prefix, base + "%"),
        (redis_prefix, base.upper()),
        (redis_prefix + "-u", base + "x"),
        (redis_prefix + "u", base + "y"),
    ]
    stores = [
        TieredStore.from_clients(redis=redis_client, engine=pg_engine, prefix=prefix,
                                 namespace=namespace, memory_max_bytes=None,
                                 durability="write_through")
        for prefix, namespace in pairs
    ]
    try:
        for i, store in enumerate(stores):
            for j, sid in enumerate(SIDS):
                store.save(sid, [message(i, sid)], user_id=USERS[j % len(USERS)])
        yield stores
    finally:
        for store in stores:
            store.close()
        for prefix in {p for p, _ in pairs} - {redis_prefix}:  # the fixture cleans the rest
            for key in redis_client.scan_iter(match=f"{prefix}:*", count=1000):
                redis_client.delete(key)


def _owned(store: TieredStore, scope: int) -> None:
    """``store`` sees exactly the sessions of its own scope, through every read."""
    assert set(store.list(limit=100).ids) == set(SIDS)
    for j, user in enumerate(USERS):
        expected = {sid for k, sid in enumerate(SIDS) if k % len(USERS) == j}
        assert set(store.list(user_id=user, limit=100).ids) == expected
    for sid in SIDS:
        assert store.load(sid) == [message(scope, sid)]
    query = ArchiveQuery(store.archive)
    hits = query.search("common", limit=100).hits
    assert len(hits) == len(SIDS)
    assert all(f"scope{scope} " in hit.snippet.replace("<mark>", "").replace("</mark>", "")
               for hit in hits)
    assert {s.session_id for s in query.sessions(limit=100)} == set(SIDS)
    lines = [orjson.loads(line) for user in USERS for line in query.export(user_id=user)]
    lines += [orjson.loads(line) for line in query.export(session_ids=SIDS)]
    assert {r["session_id"] for r in lines} == set(SIDS)
    contents = [r["message"]["content"] for r in lines if r["type"] == "message"]
    assert contents and all(f"scope{scope} " in c for c in contents)


def test_reads_searches_and_exports_stay_in_their_scope(scopes: list[TieredStore]) -> None:
    for i, store in enumerate(scopes):
        _owned(store, i)


def test_redis_keys_of_every_scope_parse_back_to_it(
    scopes: list[TieredStore], redis_client: redis.Redis
) -> None:
    for store in scopes:
        keys = store.redis.keys
        found = list(redis_client.scan_iter(match=keys.root + "*", count=1000))
        assert found
        for key in found:
            prefix, namespace, _ = key.decode().split(":", 2)
            assert (prefix, namespace) == (keys.prefix, keys.namespace)


def test_expiry_in_one_scope_leaves_the_others_alone(scopes: list[TieredStore]) -> None:
    first, others = scopes[0], scopes[1:]
    for store in scopes:
        store.save("short", [message(0, "short")], ttl=0.2, user_id="U")
    time.sleep(0.5)
    # max_batches=None: one call works through every bucket, then the archive
    result = expire(first, now=time.time() + 1, max_batches=None)
    assert result.changed >= 1 and not result.remaining
    keys = first.redis.keys
    assert first.redis.client.zscore(keys.idx(keys.bucket("short")), "short") is None
    for store in others:
        # Expired but not purged: its index entries and archive row are still there.
        keys = store.redis.keys
        assert store.redis.client.zscore(keys.idx(keys.bucket("short")), "short") is not None
        assert "short" in ArchiveQuery(store.archive).session_ids("U")
    for i, store in enumerate(scopes):
        expire(store, now=time.time() + 1, max_batches=None)
        assert "short" not in ArchiveQuery(store.archive).session_ids("U")
        _owned(store, i)


def test_erase_and_delete_in_one_scope_leave_the_others_alone(
    scopes: list[TieredStore],
) -> None:
    first, others = scopes[0], scopes[1:]
    report = erase(first, "U")
    owned_by_u = {sid for k, sid in enumerate(SIDS) if k % len(USERS) == 0}
    assert set(report.session_ids) == owned_by_u
    assert report.redis_sessions == report.archive_sessions == len(owned_by_u)
    assert first.list(user_id="U").ids == []
    first.delete("idx")
    for i, store in enumerate(others, start=1):
        _owned(store, i)


def test_invalidations_go_to_their_own_scope_only(scopes: list[TieredStore]) -> None:
    client = scopes[0].redis.client
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(*(store.redis.invalidation_channel for store in scopes[1:]))
        for _ in scopes[1:]:
            assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        scopes[0].save("s1", [message(0, "again")])
        scopes[0].delete("u:U")
        assert pubsub.get_message(timeout=0.5) is None
        scopes[1].append("s1", message(1, "more"))
        got = pubsub.get_message(timeout=5)
        assert got is not None and got["channel"] == scopes[1].redis.invalidation_channel.encode()
    finally:
        pubsub.close()


# -- the archive alone --------------------------------------------------------------------


@pytest.fixture(params=["pg", "sqlite"])
def archive_engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    if request.param == "pg":
        yield request.getfixturevalue("pg_engine")
    else:
        engine = sa.create_engine(request.getfixturevalue("sqlite_url"))
        yield engine
        engine.dispose()


def test_archive_namespaces_are_compared_exactly(archive_engine: sa.Engine) -> None:
    base = f"ks{uuid.uuid4().hex[:8]}"
    namespaces = [base, base + ":b", base + "_", base + "%", base.upper(), base + "é",
                  base[:-1] + "_", base[:-1] + "%"]
    stores = [TieredStore(archive=ArchiveStore(archive_engine, namespace=ns), listen=False)
              for ns in namespaces]
    try:
        for i, store in enumerate(stores):
            for j, sid in enumerate(SIDS):
                store.save(sid, [message(i, sid)], user_id=USERS[j % len(USERS)])
        for i, store in enumerate(stores):
            _owned(store, i)
        for store in stores:
            store.save("short", [message(0, "short")], ttl=60, user_id="U")
        expire(stores[0], now=time.time() + 120)
        assert "short" not in ArchiveQuery(stores[0].archive).session_ids("U")
        assert all("short" in ArchiveQuery(s.archive).session_ids("U") for s in stores[1:])
        erase(stores[0], "U")
        for i, store in enumerate(stores[1:], start=1):
            store.delete("short")
            _owned(store, i)
    finally:
        for store in stores:
            store.close()


def test_query_namespaces_are_validated(archive_engine: sa.Engine) -> None:
    for bad in ("", "a b", "a{b}", "\ud800", 5):
        with pytest.raises(InvalidInput):
            ArchiveQuery(archive_engine, namespace=bad)  # type: ignore[arg-type]
    assert ArchiveQuery(archive_engine).namespace == "default"
