"""What is special to ``RedisStore``; the shared contract lives in test_conformance.

Key layout and hash tags, one ``EVALSHA`` per operation (observed on the
server with ``MONITOR``), equal expiry on both per-session keys, server-side
time, the index's keyset pagination and lazy cleanup, the Lua trim against
:func:`tieredstore.policy.plan_trim`, construction, and a dead port.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from tests.conftest import REDIS_URL
from tieredstore import BackendUnavailable, InvalidInput, Message, RedisStore, SessionNotFound
from tieredstore.codec import decode_entry
from tieredstore.policy import leading_system, plan_trim
from tieredstore.tiers.redis import SCRIPTS, RedisKeys

PREFIX = f"tsredis-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    """A one-connection client, so MONITOR can tell its commands apart."""
    c = redis.Redis.from_url(REDIS_URL, max_connections=1)
    yield c
    for key in c.scan_iter(match=f"{PREFIX}:*", count=1000):
        c.delete(key)
    c.close()


@pytest.fixture
def make(client: redis.Redis) -> Iterator[Any]:
    made: list[RedisStore] = []

    def build(**options: Any) -> RedisStore:
        options.setdefault("namespace", f"ns{uuid.uuid4().hex[:10]}")
        store = RedisStore(client, prefix=PREFIX, **options)
        made.append(store)
        return store

    yield build
    for store in made:
        store.close()


@pytest.fixture
def store(make: Any) -> RedisStore:
    s: RedisStore = make()
    return s


def user(text: str) -> Message:
    return Message(role="user", content=text)


@contextmanager
def server_commands(client: redis.Redis) -> Iterator[list[str]]:
    """Names of the commands ``client`` sends inside the block, as the server saw them."""
    for script in SCRIPTS.values():  # so no NOSCRIPT/SCRIPT LOAD detour is counted
        client.script_load(script)
    port = str(client.client_info()["addr"]).rsplit(":", 1)[1]
    marker = f"end-{uuid.uuid4().hex}"
    seen: list[str] = []
    ready = threading.Event()
    watcher = redis.Redis.from_url(REDIS_URL)

    def watch() -> None:
        with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
            ready.set()
            for command in monitor.listen():
                if str(command.get("client_port")) != port:
                    continue
                text = str(command["command"])
                if marker in text:
                    return
                seen.append(text.split(" ", 1)[0].upper())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield seen
    finally:
        client.echo(marker)
        thread.join(10)
        watcher.close()
    assert not thread.is_alive()


# -- key layout ----------------------------------------------------------------


def test_key_layout_and_hash_tags(store: RedisStore, client: redis.Redis) -> None:
    ns = store.keys.namespace
    store.save("s-1", [user("hi")], ttl=60, user_id="alice", metadata={"title": "T"})
    root = f"{PREFIX}:{ns}:"
    m, h = f"{root}{{s-1}}:m", f"{root}{{s-1}}:h"
    assert client.type(m) == b"list"
    assert client.type(h) == b"hash"
    assert client.type(root + "idx") == b"zset"
    assert client.type(root + "exp") == b"zset"
    assert client.type(root + "u:alice") == b"zset"
    fields = client.hgetall(h)
    assert fields[b"version"] == b"1"
    assert fields[b"user"] == b"alice"
    assert fields[b"lead"] == b"0"
    assert fields[b"m:title"] == b'"T"'
    assert int(fields[b"expires"]) - int(fields[b"created"]) == 60_000
    kind, _, message = decode_entry(client.lindex(m, 0))  # type: ignore[arg-type]
    assert (kind, message) == ("m", user("hi"))
    assert client.zscore(root + "idx", "s-1") == int(fields[b"updated"])
    assert client.zscore(root + "exp", "s-1") == int(fields[b"expires"])


@pytest.mark.parametrize("sid", ["a", "s-123", "user:42:chat", "émoji-🙂", "x" * 256])
def test_one_sessions_keys_share_a_cluster_slot(sid: str) -> None:
    keys = RedisKeys("ts", "ns")
    m, h = keys.session(sid)
    assert key_slot(m.encode()) == key_slot(h.encode()) == key_slot(sid.encode())


def test_empty_history_has_a_hash_and_no_list(store: RedisStore, client: redis.Redis) -> None:
    store.save("empty", [])
    m, h = store.keys.session("empty")
    assert client.exists(m) == 0 and client.exists(h) == 1
    assert store.load("empty") == [] and store.count("empty") == 0


@pytest.mark.parametrize("bad", ["", "a b", "a{b", "a}b", "a*b"])
def test_prefix_and_namespace_are_validated(client: redis.Redis, bad: str) -> None:
    with pytest.raises(InvalidInput):
        RedisStore(client, prefix=bad)
    with pytest.raises(InvalidInput):
        RedisStore(client, namespace=bad)
    with pytest.raises(InvalidInput):
        RedisStore(client, namespace="a:b")


# -- round trips -------------------------------------------------------------------


def test_every_write_is_one_evalsha(store: RedisStore, client: redis.Redis) -> None:
    writes: list[Callable[[], object]] = [
        lambda: store.save("w", [user("a")], ttl=60, user_id="u1", metadata={"k": 1}),
        lambda: store.append("w", user("b"), Message(role="system", content="s")),
        lambda: store.append("w", user("c"), ttl=30, expected_version=2),
        lambda: store.merge_metadata("w", {"k": None, "j": [1, 2]}),
        lambda: store.fork("w", "w2"),
        lambda: store.delete("w2"),
        lambda: store.delete("never-existed"),
    ]
    for write in writes:
        with server_commands(client) as seen:
            write()
        assert seen == ["EVALSHA"]


@pytest.mark.parametrize("sliding", [False, True])
def test_every_read_is_one_evalsha(make: Any, client: redis.Redis, sliding: bool) -> None:
    store: RedisStore = make(sliding_ttl=sliding)
    store.save("r", [user(str(i)) for i in range(50)], ttl=60, user_id="u")
    reads: list[Callable[[], object]] = [
        lambda: store.load("r"),
        lambda: store.load("r", last=20),
        lambda: store.get("r"),
        lambda: store.get("r", last=0),
        lambda: store.count("r"),
        lambda: store.exists("r"),
        lambda: store.exists("missing"),
        lambda: store.list(limit=10),
        lambda: store.list(user_id="u", limit=10),
    ]
    for read in reads:
        with server_commands(client) as seen:
            read()
        assert seen == ["EVALSHA"]


def test_a_conflicting_write_writes_nothing(store: RedisStore, client: redis.Redis) -> None:
    from tieredstore import VersionConflict

    store.save("c", [user("a")])
    before = {k: client.dump(k) for k in store.keys.session("c")}
    with pytest.raises(VersionConflict) as info:
        store.append("c", user("b"), expected_version=5)
    assert (info.value.expected, info.value.actual) == (5, 1)
    assert {k: client.dump(k) for k in store.keys.session("c")} == before


# -- time and TTL ------------------------------------------------------------------------


def test_both_keys_carry_the_same_expiry(store: RedisStore, client: redis.Redis) -> None:
    store.save("t", [user("a")], ttl=100)
    m, h = store.keys.session("t")
    assert client.pexpiretime(m) == client.pexpiretime(h) > 0
    store.append("t", user("b"), ttl=200)
    assert client.pexpiretime(m) == client.pexpiretime(h)
    # a history saved empty gets its list later: the list inherits the expiry
    store.save("t2", [], ttl=100)
    store.append("t2", user("a"))
    m2, h2 = store.keys.session("t2")
    assert client.pexpiretime(m2) == client.pexpiretime(h2) > 0
    expires_at = store.get("t2").expires_at
    assert expires_at is not None
    assert int(expires_at.timestamp() * 1000) == client.pexpiretime(h2)


def test_absurd_ttls_are_rejected_not_lost(store: RedisStore) -> None:
    with pytest.raises(InvalidInput):
        store.save("forever", [user("a")], ttl=1e17)
    with pytest.raises(InvalidInput):
        store.append("forever", user("a"), ttl=1e17)
    assert not store.exists("forever")
    store.save("forever", [user("a")], ttl=999 * 365 * 86_400)
    assert store.load("forever") == [user("a")]


def test_no_ttl_means_no_expiry(store: RedisStore, client: redis.Redis) -> None:
    store.save("p", [user("a")])
    store.append("p", user("b"))
    assert [client.pttl(k) for k in store.keys.session("p")] == [-1, -1]
    assert store.get("p").expires_at is None


def test_times_come_from_the_redis_server(make: Any, client: redis.Redis) -> None:
    store = make(clock=lambda: 0.0)  # a wildly wrong app clock is ignored
    store.save("clock", [user("a")], ttl=60)
    seconds, micros = client.time()
    server_ms = seconds * 1000 + micros // 1000
    session = store.get("clock")
    assert abs(session.created_at.timestamp() * 1000 - server_ms) < 5_000
    assert session.expires_at is not None
    assert session.expires_at > session.created_at


def test_sliding_read_moves_both_keys_and_the_index(make: Any, client: redis.Redis) -> None:
    store = make(sliding_ttl=True)
    store.save("slide", [user("a")], ttl=60)
    m, h = store.keys.session("slide")
    client.pexpire(m, 5_000)
    client.pexpire(h, 5_000)
    store.load("slide", last=1)
    assert client.pexpiretime(m) == client.pexpiretime(h)
    assert client.pttl(h) > 50_000
    assert client.zscore(store.keys.exp, "slide") == client.pexpiretime(h)


def test_expired_sessions_leave_list_and_index(store: RedisStore, client: redis.Redis) -> None:
    store.save("gone", [user("a")], ttl=0.05, user_id="u")
    store.save("kept", [user("a")], user_id="u")
    time.sleep(0.1)
    with pytest.raises(SessionNotFound):
        store.load("gone")
    assert store.list().ids == ["kept"]
    assert client.zscore(store.keys.idx, "gone") is None  # dropped lazily by list
    assert store.list(user_id="u").ids == ["kept"]
    assert client.zscore(store.keys.user("u"), "gone") is None


def test_purge_expired_and_stats(store: RedisStore, client: redis.Redis) -> None:
    for i in range(5):
        store.save(f"e{i}", [user("a")], ttl=0.05, user_id="u")
    store.save("live", [user("a")], ttl=60)
    assert store.stats()["indexed_sessions"] == 6
    time.sleep(0.1)
    assert store.purge_expired(batch_size=2) == 5
    assert store.purge_expired() == 0
    stats = store.stats()
    assert stats["indexed_sessions"] == 1
    assert stats["expiring_sessions"] == 1
    assert stats["used_memory"] > 0
    assert client.zcard(store.keys.user("u")) == 0
    assert client.hlen(store.keys.own) == 0


def test_recreated_session_leaves_the_old_users_listing(store: RedisStore) -> None:
    store.save("moved", [user("a")], ttl=0.05, user_id="old")
    time.sleep(0.1)
    store.save("moved", [user("b")], user_id="new")
    assert store.list(user_id="old").ids == []
    assert store.list(user_id="new").ids == ["moved"]
    store.save("moved", [user("c")], user_id="newer")
    assert store.list(user_id="new").ids == []
    assert store.list(user_id="newer").ids == ["moved"]


# -- listing --------------------------------------------------------------------------


def _tie(store: RedisStore, client: redis.Redis, sids: list[str], score: int) -> None:
    """Give sessions the same last-activity score, as a busy server would."""
    for sid in sids:
        client.zadd(store.keys.idx, {sid: score})
        client.hset(store.keys.meta(sid), "updated", score)


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_pages_through_ties_exactly_once(
    store: RedisStore, client: redis.Redis, order: Any
) -> None:
    sids = [f"t{i:02d}" for i in range(23)]
    for sid in sids:
        store.save(sid, [])
    _tie(store, client, sids[5:18], 1_700_000_000_000)
    expected = sorted(
        ((int(client.zscore(store.keys.idx, s) or 0), s) for s in sids),
        reverse=order == "desc",
    )
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(limit=4, cursor=cursor, order=order)
        seen += page.ids
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [s for _, s in expected]


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_cursor_survives_its_session_moving(
    store: RedisStore, client: redis.Redis, order: Any
) -> None:
    """When the cursor's own session is written or deleted, paging goes on from its place."""
    sids = [f"c{i:02d}" for i in range(12)]
    for sid in sids:
        store.save(sid, [])
    _tie(store, client, sids, 1_700_000_000_000)
    first = store.list(limit=5, order=order)
    assert first.next_cursor is not None
    store.delete(first.ids[-1])
    rest = store.list(limit=100, cursor=first.next_cursor, order=order)
    everything = sorted(sids, reverse=order == "desc")
    assert first.ids + rest.ids == everything


def test_list_skips_many_dead_entries_across_scan_budgets(
    store: RedisStore, client: redis.Redis
) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(2500):  # index entries of sessions that expired long ago
        pipe.zadd(store.keys.idx, {f"dead{i}": 2_000_000_000_000 + i})
        pipe.zadd(store.keys.exp, {f"dead{i}": 1})
    pipe.execute()
    store.save("alive", [])
    assert store.list(limit=10).ids == ["alive"]
    assert client.zcard(store.keys.idx) == 1


def test_a_page_of_ten_thousand(store: RedisStore, client: redis.Redis) -> None:
    """Big pages are fetched in chunks (Lua's unpack() is limited to ~8000 values)."""
    sids = [f"p{i:05d}" for i in range(9000)]
    pipe = client.pipeline(transaction=False)
    for i, sid in enumerate(sids):  # index entries are enough: list never reads sessions
        pipe.zadd(store.keys.idx, {sid: 1_700_000_000_000 + i})
    pipe.execute()
    page = store.list(limit=10_000)
    assert page.ids == sids[::-1] and page.next_cursor is None
    first = store.list(limit=8500, order="asc")
    assert first.ids == sids[:8500] and first.next_cursor is not None
    assert store.list(limit=8500, order="asc", cursor=first.next_cursor).ids == sids[8500:]


# -- trim -----------------------------------------------------------------------------


KINDS = {"s": "system", "t": "tool", "m": "user"}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.text(alphabet="smt", min_size=1, max_size=6), min_size=1, max_size=8),
    max_messages=st.integers(min_value=1, max_value=8),
    start_with_save=st.booleans(),
    ttl=st.sampled_from([None, 60]),
)
def test_lua_trim_agrees_with_plan_trim(
    make: Any,
    client: redis.Redis,
    batches: list[str],
    max_messages: int,
    start_with_save: bool,
    ttl: int | None,
) -> None:
    store = make(max_messages=max_messages)
    sid = f"trim-{uuid.uuid4().hex[:8]}"
    expected: list[tuple[str, int]] = []
    counter = 0
    for n, kinds in enumerate(batches):
        batch = []
        for kind in kinds:
            batch.append((kind, counter))
            counter += 1
        messages = [Message(role=KINDS[k], content=str(i)) for k, i in batch]
        if n == 0 and start_with_save:
            store.save(sid, messages, ttl=ttl)
            current = batch
        else:
            store.append(sid, *messages, ttl=ttl if n == 0 else None)
            current = expected + batch
        lead, drop = plan_trim([k for k, _ in current], max_messages)
        expected = current[:lead] + current[lead + drop :]
        stored = [
            decode_entry(cast(bytes, e)) for e in client.lrange(store.keys.messages(sid), 0, -1)
        ]
        assert [(k, int(m["content"])) for k, _, m in stored] == expected
        lead_field = client.hget(store.keys.meta(sid), "lead")
        assert lead_field is not None
        assert int(lead_field) == leading_system([k for k, _ in expected])
        m, h = store.keys.session(sid)
        assert (client.pexpiretime(h) > 0) == (ttl is not None)
        if expected:  # the list can be trimmed away entirely (a lone call's results)
            assert client.pexpiretime(m) == client.pexpiretime(h)
    store.delete(sid)


def test_trim_keeps_a_long_system_prefix(make: Any) -> None:
    store = make(max_messages=3)
    system = [Message(role="system", content=f"s{i}") for i in range(2500)]
    store.save("sys", system)
    store.append("sys", *(user(str(i)) for i in range(5)))
    loaded = store.load("sys")
    assert loaded[:2500] == system and loaded[2500:] == [user("4")]


# -- construction and failure ------------------------------------------------------------


def test_from_url_owns_and_closes_its_client() -> None:
    store = RedisStore.from_url(REDIS_URL, prefix=PREFIX, namespace="fromurl")
    store.save("u1", [user("a")])
    assert store.load("u1") == [user("a")]
    assert store.delete("u1")
    connection = store.client.connection_pool._available_connections[0]
    assert connection._sock is not None
    store.close()
    store.close()  # idempotent
    assert connection._sock is None


def test_given_client_and_pool_stay_open(client: redis.Redis) -> None:
    with RedisStore(client, prefix=PREFIX, namespace="given") as store:
        store.save("c1", [])
        assert store.delete("c1")
    assert client.ping()
    pool = redis.ConnectionPool.from_url(REDIS_URL)
    with RedisStore(connection_pool=pool, prefix=PREFIX, namespace="pooled") as store:
        store.save("c2", [])
        assert store.delete("c2")
    assert redis.Redis(connection_pool=pool).ping()
    pool.disconnect()


def test_from_url_splits_client_and_store_options() -> None:
    store = RedisStore.from_url(
        REDIS_URL, prefix=PREFIX, namespace="split", max_messages=2, socket_timeout=5
    )
    assert store.max_messages == 2
    assert store.client.connection_pool.connection_kwargs["socket_timeout"] == 5
    store.close()


def test_construction_errors(client: redis.Redis) -> None:
    text_client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    with pytest.raises(InvalidInput, match="decode_responses"):
        RedisStore(text_client)
    text_client.close()
    with pytest.raises(InvalidInput, match="decode_responses"):
        RedisStore.from_url(REDIS_URL + "?decode_responses=True")
    with pytest.raises(InvalidInput):
        RedisStore(client, url=REDIS_URL)


def test_unreachable_redis_raises_backend_unavailable() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    calls: list[Callable[[], object]] = [
        lambda: store.save("x", [user("a")]),
        lambda: store.append("x", user("a")),
        lambda: store.load("x"),
        lambda: store.get("x"),
        lambda: store.count("x"),
        lambda: store.exists("x"),
        lambda: store.merge_metadata("x", {"a": 1}),
        lambda: store.delete("x"),
        lambda: store.fork("x", "y"),
        lambda: store.list(),
        lambda: store.purge_expired(),
        lambda: store.stats(),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailable) as info:
            call()
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
        assert info.value.backend == "redis"
    store.close()
