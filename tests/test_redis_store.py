"""What is special to ``RedisStore``; the shared contract lives in test_conformance.

Key layout (buckets and their hash tags), one ``EVALSHA`` per write and read
and one per bucket for ``list`` (observed on the server with ``MONITOR``),
equal expiry on every per-session key, server-side time, the index's keyset
pagination and lazy cleanup, the Lua trim against
:func:`tieredstore.policy.plan_trim` (seqs and spill included), what
``TieredStore`` uses (receipts, seqs, snapshot/restore, ``create=False``,
invalidations, spill and history pages, ``list_keys``/``exists_many``, one
round trip each), construction, and a dead port.
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from tests.conftest import REDIS_URL
from tieredstore import (
    BackendUnavailable,
    FrozenDict,
    InvalidInput,
    Limits,
    Message,
    RedisStore,
    SessionNotFound,
)
from tieredstore.codec import decode_entry, encode_json, resident_nbytes
from tieredstore.coherence import decode_invalidation
from tieredstore.core import Batch, prepare_batch
from tieredstore.policy import leading_system, plan_trim
from tieredstore.tiers.redis import SCRIPTS, RedisKeys
from tieredstore.tiers.transfer import Snapshot, WriteReceipt

PREFIX = f"tsredis-{uuid.uuid4().hex[:10]}"


def pairs(part: Any) -> Any:
    """The ``(seq, message)`` pairs of a history part (``None`` stays ``None``)."""
    return None if part is None else part.pairs


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


TRANSACTION_EXISTS = ["MULTI", "TIME", "HMGET", "EXEC"]
"""What the server sees for ``exists`` without a sliding TTL: one transaction, no script."""


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


def idx(store: RedisStore, sid: str) -> str:
    """The activity index of ``sid``'s bucket."""
    return store.keys.idx(store.keys.bucket(sid))


def exp(store: RedisStore, sid: str) -> str:
    """The expiry index of ``sid``'s bucket."""
    return store.keys.exp(store.keys.bucket(sid))


def tag(namespace: str, sid: str, buckets: int = 16) -> str:
    """The bucket hash tag of ``sid``, computed without :class:`RedisKeys`."""
    return f"{PREFIX}:{namespace}:{{{namespace}.{zlib.crc32(sid.encode()) % buckets}}}:"


def test_key_layout_and_hash_tags(store: RedisStore, client: redis.Redis) -> None:
    ns = store.keys.namespace
    store.save("s-1", [user("hi")], ttl=60, user_id="alice", metadata={"title": "T"})
    root, t = f"{PREFIX}:{ns}:", tag(ns, "s-1")
    m, h = f"{t}m:s-1", f"{t}h:s-1"
    assert client.get(root + "buckets") == b"16"  # recorded by the store's first call
    assert client.type(m) == b"list"
    assert client.type(h) == b"hash"
    assert client.type(t + "idx") == b"zset"
    assert client.type(t + "exp") == b"zset"
    assert client.type(t + "u:alice") == b"zset"
    assert client.hgetall(t + "own") == {b"s-1": b"alice"}
    assert client.zscore(t + "u:alice", "s-1") == client.zscore(t + "idx", "s-1")
    fields = client.hgetall(h)
    assert fields[b"version"] == b"1"
    assert fields[b"user"] == b"alice"
    assert fields[b"lead"] == b"0"
    assert fields[b"m:title"] == b'"T"'
    assert int(fields[b"expires"]) - int(fields[b"created"]) == 60_000
    assert fields[b"n"] == b"1" and fields[b"b"] == b"0"
    kind, seq, _, message = decode_entry(client.lindex(m, 0))  # type: ignore[arg-type]
    assert (kind, seq, message) == ("m", 0, user("hi"))
    assert client.zscore(t + "idx", "s-1") == int(fields[b"updated"])
    assert client.zscore(t + "exp", "s-1") == int(fields[b"expires"])
    # nothing of the session outside its bucket: the root holds only the layout
    names = {key.decode() for key in client.scan_iter(match=root + "*", count=1000)}
    assert names == {root + "buckets", m, h, t + "idx", t + "exp", t + "own", t + "u:alice"}


@pytest.mark.parametrize("sid", ["a", "s-123", "user:42:chat", "émoji-🙂", "x" * 256])
@pytest.mark.parametrize("buckets", [1, 16, 1024])
def test_one_sessions_keys_share_a_cluster_slot(sid: str, buckets: int) -> None:
    """All of a session's keys and its bucket's index keys hash to the bucket's slot."""
    keys = RedisKeys("ts", "ns", buckets)
    b = keys.bucket(sid)
    assert b == zlib.crc32(sid.encode()) % buckets
    assert keys.tag(sid) == f"ts:ns:{{ns.{b}}}:"
    slot = key_slot(f"ns.{b}".encode())
    names = [
        *keys.session(sid),
        *keys.writes(sid),
        keys.messages(sid),
        keys.meta(sid),
        keys.spill(sid),
        keys.tombstone(sid),
        keys.outbox(sid),
        keys.lock(sid),
        keys.user_of(sid, "alice"),
        keys.user_of(sid, "u:{x}"),
        keys.idx(b),
        keys.exp(b),
        keys.own(b),
        keys.obx(b),
        keys.user(b, "alice"),
        keys.lease(b, "expire"),
        keys.cursor(b, "trim"),
        keys.bucket_channel(b),
    ]
    assert {key_slot(name.encode()) for name in names} == {slot}
    assert keys.user_of(sid, "alice") == keys.user(b, "alice")
    assert keys.writes(sid)[5:] == [keys.idx(b), keys.exp(b), keys.own(b), keys.obx(b)]


def test_buckets_spread_over_slots() -> None:
    keys = RedisKeys("ts", "ns")
    assert len({key_slot(keys.idx(b).encode()) for b in range(keys.buckets)}) > 1
    assert {keys.bucket(f"s{i}") for i in range(1000)} == set(range(16))


def test_empty_history_has_a_hash_and_no_list(store: RedisStore, client: redis.Redis) -> None:
    store.save("empty", [])
    m, h, _ = store.keys.session("empty")
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
    with server_commands(client) as seen:
        store.exists("warm")
    assert seen == ["EVALSHA", *TRANSACTION_EXISTS]  # the first call checks the layout, once
    writes: list[Callable[[], object]] = [
        lambda: store.save("w", [user("a")], ttl=60, user_id="u1", metadata={"k": 1}),
        lambda: store.append("w", user("b"), Message(role="system", content="s")),
        lambda: store.append("w", user("c"), ttl=30, expected_version=2),
        lambda: store.merge_metadata("w", {"k": None, "j": [1, 2]}),
        lambda: store.delete("w2"),
        lambda: store.delete("never-existed"),
    ]
    for write in writes:
        with server_commands(client) as seen:
            write()
        assert seen == ["EVALSHA"]
    # source and copy may live in different buckets: one script reads, one writes
    with server_commands(client) as seen:
        store.fork("w", "w2")
    assert seen == ["EVALSHA", "EVALSHA"]


def test_a_write_meeting_an_undeclared_owner_calls_again(
    store: RedisStore, client: redis.Redis
) -> None:
    """Another store object moved the session to another user: the script asks
    for that user's index and writes nothing; the second call writes."""
    store.save("o", [user("a")], user_id="u1")
    other = RedisStore(prefix=PREFIX, namespace=store.keys.namespace, url=REDIS_URL)
    try:
        other.save("o", [user("b")], user_id="u2")
    finally:
        other.close()
    with server_commands(client) as seen:
        store.append("o", user("c"))
    assert seen == ["EVALSHA", "EVALSHA"]
    assert store.list(user_id="u2").ids == ["o"] and store.list(user_id="u1").ids == []


@pytest.mark.parametrize("sliding", [False, True])
def test_every_read_is_one_round_trip(make: Any, client: redis.Redis, sliding: bool) -> None:
    store: RedisStore = make(sliding_ttl=sliding)
    store.save("r", [user(str(i)) for i in range(50)], ttl=60, user_id="u")
    reads: list[tuple[bool, Callable[[], object]]] = [  # (does it slide the TTL?, the read)
        (True, lambda: store.load("r")),
        (True, lambda: store.load("r", last=20)),
        (True, lambda: store.get("r")),
        (True, lambda: store.get("r", last=0)),
        (False, lambda: store.count("r")),
        (False, lambda: store.exists("r")),
        (False, lambda: store.exists("missing")),
    ]
    for slides, read in reads:
        with server_commands(client) as seen:
            read()
        if sliding and slides:  # the read extends the TTL: the read script does both
            assert seen == ["EVALSHA"]
        else:  # no script: one MULTI/EXEC of plain reads (one round trip, see bench_redis)
            assert seen[0] == "MULTI" and seen[-1] == "EXEC", seen
            assert set(seen[1:-1]) <= {"TIME", "HMGET", "HGETALL", "LRANGE", "LLEN"}, seen
    # list: one script per bucket, pipelined (one round trip, see below)
    for listing in (lambda: store.list(limit=10), lambda: store.list(user_id="u", limit=10)):
        with server_commands(client) as seen:
            listing()
        assert seen == ["EVALSHA"] * store.bucket_count


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
    m, h, _ = store.keys.session("t")
    assert client.pexpiretime(m) == client.pexpiretime(h) > 0
    store.append("t", user("b"), ttl=200)
    assert client.pexpiretime(m) == client.pexpiretime(h)
    # a history saved empty gets its list later: the list inherits the expiry
    store.save("t2", [], ttl=100)
    store.append("t2", user("a"))
    m2, h2, _ = store.keys.session("t2")
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
    assert [client.pttl(k) for k in store.keys.session("p")[:2]] == [-1, -1]
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
    m, h, _ = store.keys.session("slide")
    client.pexpire(m, 5_000)
    client.pexpire(h, 5_000)
    store.load("slide", last=1)
    assert client.pexpiretime(m) == client.pexpiretime(h)
    assert client.pttl(h) > 50_000
    assert client.zscore(exp(store, "slide"), "slide") == client.pexpiretime(h)


def test_expired_sessions_leave_list_and_index(store: RedisStore, client: redis.Redis) -> None:
    store.save("gone", [user("a")], ttl=0.05, user_id="u")
    store.save("kept", [user("a")], user_id="u")
    time.sleep(0.1)
    with pytest.raises(SessionNotFound):
        store.load("gone")
    assert store.list().ids == ["kept"]
    assert client.zscore(idx(store, "gone"), "gone") is None  # dropped lazily by list
    assert store.list(user_id="u").ids == ["kept"]
    assert client.zscore(store.keys.user_of("gone", "u"), "gone") is None


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
    assert stats["used_memory"] > 0 and stats["buckets"] == 16
    k = store.keys
    assert len({k.bucket(f"e{i}") for i in range(5)}) > 1  # the purge crossed buckets
    assert all(client.zcard(k.user(b, "u")) == 0 for b in range(k.buckets))
    assert all(client.hlen(k.own(b)) == 0 for b in range(k.buckets))


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
    """Give sessions the same last-activity score, as a busy server would: in
    their bucket's index and, for a session with a user, in the user's index."""
    for sid in sids:
        client.zadd(idx(store, sid), {sid: score})
        owner = client.hget(store.keys.meta(sid), "user")
        if owner is not None:
            client.zadd(store.keys.user_of(sid, owner.decode()), {sid: score})
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
        ((int(client.zscore(idx(store, s), s) or 0), s) for s in sids),
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
    k = store.keys
    home = k.bucket("alive")
    # index entries of sessions that expired long ago, all in one bucket, so that
    # its walk spends more than two scan budgets
    dead = [s for s in (f"dead{i}" for i in range(100_000)) if k.bucket(s) == home][:2500]
    assert len(dead) == 2500
    pipe = client.pipeline(transaction=False)
    for i, sid in enumerate(dead):
        pipe.zadd(k.idx(home), {sid: 2_000_000_000_000 + i})
        pipe.zadd(k.exp(home), {sid: 1})
    pipe.execute()
    store.save("alive", [])
    assert store.list(limit=10).ids == ["alive"]
    assert client.zcard(k.idx(home)) == 1
    assert sum(client.zcard(k.idx(b)) for b in range(k.buckets)) == 1


def test_a_page_of_ten_thousand(store: RedisStore, client: redis.Redis) -> None:
    """Big pages are fetched in chunks (Lua's unpack() is limited to ~8000 values)."""
    sids = [f"p{i:05d}" for i in range(9000)]
    pipe = client.pipeline(transaction=False)
    for i, sid in enumerate(sids):  # index entries are enough: list never reads sessions
        pipe.zadd(idx(store, sid), {sid: 1_700_000_000_000 + i})
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
    calls=st.lists(
        st.tuples(st.booleans(), st.text(alphabet="smt", min_size=1, max_size=6)),
        min_size=1,
        max_size=8,
    ),
    max_messages=st.integers(min_value=1, max_value=8),
    ttl=st.sampled_from([None, 60]),
    spill=st.booleans(),
)
def test_lua_trim_agrees_with_plan_trim(
    make: Any,
    client: redis.Redis,
    calls: list[tuple[bool, str]],
    max_messages: int,
    ttl: int | None,
    spill: bool,
) -> None:
    """Saves and appends against a model: the window, its seqs, the lead, the
    spill list and the expiry of every key. Message i carries content i, and
    since seqs never restart within a session's life, its seq must be i too."""
    store = make(max_messages=max_messages, spill=spill)
    sid = f"trim-{uuid.uuid4().hex[:8]}"
    window: list[tuple[str, int]] = []
    spilled: list[tuple[str, int]] = []
    base = counter = 0
    for n, (is_save, kinds) in enumerate(calls):
        batch = []
        for kind in kinds:
            batch.append((kind, counter))
            counter += 1
        messages = [Message(role=KINDS[k], content=str(i)) for k, i in batch]
        if is_save:
            store.save(sid, messages, ttl=ttl if n == 0 else None)
            current, spilled, base = batch, [], batch[0][1]
        else:
            store.append(sid, *messages, ttl=ttl if n == 0 else None)
            current = window + batch
        lead, drop = plan_trim([k for k, _ in current], max_messages)
        window = current[:lead] + current[lead + drop :]
        if spill:
            spilled += current[lead : lead + drop]
        m, h, x = store.keys.session(sid)
        stored = [decode_entry(cast(bytes, e)) for e in client.lrange(m, 0, -1)]
        assert [(k, int(msg["content"])) for k, _, _, msg in stored] == window
        assert [seq for _, seq, _, _ in stored] == [i for _, i in window]
        assert [(e.kind, e.seq) for e in store.spilled(sid)] == spilled
        fields = client.hgetall(h)
        assert int(fields[b"lead"]) == leading_system([k for k, _ in window])
        assert (int(fields[b"n"]), int(fields[b"b"])) == (counter, base)
        history = pairs(store.history_page(sid, None, 1000))
        assert history is not None
        everything = sorted(window + spilled, key=lambda pair: pair[1])
        assert [seq for seq, _ in history] == [i for _, i in everything]
        if spill:  # nothing drained: the whole history since the last save
            assert [seq for seq, _ in history] == list(range(base, counter))
        assert (client.pexpiretime(h) > 0) == (ttl is not None)
        for key in (m, x):  # a list can be trimmed away entirely (a lone call's results)
            if client.exists(key):
                assert client.pexpiretime(key) == client.pexpiretime(h)
    store.delete(sid)


def test_trim_keeps_a_long_system_prefix(make: Any) -> None:
    store = make(max_messages=3)
    system = [Message(role="system", content=f"s{i}") for i in range(2500)]
    store.save("sys", system)
    store.append("sys", *(user(str(i)) for i in range(5)))
    loaded = store.load("sys")
    assert loaded[:2500] == system and loaded[2500:] == [user("4")]


# -- sequence numbers ----------------------------------------------------------------


def system(text: str) -> Message:
    return Message(role="system", content=text)


def prepared(*messages: Message) -> Batch:
    return prepare_batch(messages, Limits())


def save(store: RedisStore, sid: str, *messages: Message, **options: Any) -> WriteReceipt | None:
    options.setdefault("ttl_ms", None)
    options.setdefault("metadata", None)
    options.setdefault("user_id", None)
    options.setdefault("expected_version", None)
    return store.write_save(sid, batch=prepared(*messages), **options)


def append(store: RedisStore, sid: str, *messages: Message, **options: Any) -> WriteReceipt | None:
    options.setdefault("ttl_ms", None)
    options.setdefault("expected_version", None)
    return store.write_append(sid, batch=prepared(*messages), **options)


def snap(store: RedisStore, sid: str, last: int | None = None) -> Snapshot:
    found = store.snapshot(sid, last)
    assert found is not None
    return found


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_seqs_only_grow_across_save_append_and_trim(make: Any) -> None:
    store: RedisStore = make(max_messages=3)
    first = save(store, "s", user("0"), user("1"), ttl_ms=60_000)
    assert first is not None
    assert (first.version, first.first_seq, first.next_seq) == (1, 0, 2)
    assert first.ttl_ms == 60_000 and first.expires_ms == first.created_ms + 60_000
    second = append(store, "s", user("2"), user("3"))
    assert second is not None
    assert (second.version, second.first_seq, second.next_seq) == (2, 2, 4)
    assert (second.created_ms, second.expires_ms) == (first.created_ms, first.expires_ms)
    window = snap(store, "s")
    assert window.seqs == (1, 2, 3) and window.messages == (user("1"), user("2"), user("3"))
    assert (window.base_seq, window.next_seq, window.message_count) == (0, 4, 3)
    # a save replaces the history but goes on numbering: base_seq is its first seq
    third = save(store, "s", user("a"), user("b"))
    assert third is not None
    assert (third.version, third.first_seq, third.next_seq) == (3, 4, 6)
    window = snap(store, "s")
    assert (window.seqs, window.base_seq, window.next_seq) == ((4, 5), 4, 6)
    # a save trimmed by max_messages skips the seqs of what it dropped
    fourth = save(store, "s", *(user(str(i)) for i in range(5)))
    assert fourth is not None and (fourth.first_seq, fourth.next_seq) == (6, 11)
    assert snap(store, "s").seqs == (8, 9, 10)
    # deleting forgets everything: a re-created session starts again at 0
    store.delete("s")
    again = append(store, "s", user("new"))
    assert again is not None
    assert (again.version, again.first_seq, again.next_seq) == (1, 0, 1)
    assert again.created_ms >= first.created_ms
    assert snap(store, "s").base_seq == 0


def test_a_system_message_that_becomes_leading_keeps_its_seq(
    make: Any, client: redis.Redis
) -> None:
    store: RedisStore = make(max_messages=3)

    def window() -> tuple[tuple[int, ...], str, int]:
        current = snap(store, "s")
        lead = client.hget(store.keys.meta("s"), "lead")
        assert lead is not None
        return current.seqs, current.kinds, int(lead)

    store.save("s", [user("0"), system("1"), user("2")])
    assert window() == ((0, 1, 2), "msm", 0)
    store.append("s", user("3"))  # drops 0: the system message 1 is now leading
    assert window() == ((1, 2, 3), "smm", 1)
    store.append("s", user("4"))  # keeps the leading 1, drops 2
    assert window() == ((1, 3, 4), "smm", 1)
    store.append("s", system("5"), user("6"))  # drops 3 and 4: 5 joins the lead
    assert window() == ((1, 5, 6), "ssm", 2)
    store.append("s", user("7"))
    assert window() == ((1, 5, 7), "ssm", 2)
    assert store.load("s") == [system("1"), system("5"), user("7")]
    stored = [decode_entry(cast(bytes, e)) for e in client.lrange(store.keys.messages("s"), 0, -1)]
    assert [(seq, m["content"]) for _, seq, _, m in stored] == [(1, "1"), (5, "5"), (7, "7")]


def test_fork_keeps_the_seqs(make: Any) -> None:
    store: RedisStore = make(max_messages=2, spill=True)
    store.save("src", [user(str(i)) for i in range(4)])
    store.fork("src", "dst")
    source, copy = snap(store, "src"), snap(store, "dst")
    assert copy.seqs == source.seqs == (2, 3)
    assert (copy.next_seq, copy.base_seq, copy.version) == (4, 0, 1)
    assert store.spilled("dst") == store.spilled("src")
    receipt = append(store, "dst", user("4"))
    assert receipt is not None and receipt.first_seq == 4


# -- snapshot and restore ---------------------------------------------------------------


def test_snapshot_reads_the_window_with_its_bookkeeping(make: Any, client: redis.Redis) -> None:
    store: RedisStore = make(max_messages=5)
    messages = [system("rules"), *(user(f"m{i}") for i in range(6))]
    store.save("s", messages, ttl=60, user_id="ann", metadata={"title": "T"})
    whole, tail, none = snap(store, "s"), snap(store, "s", 2), snap(store, "s", 0)
    assert whole.messages == (system("rules"), *(user(f"m{i}") for i in range(2, 6)))
    assert (whole.seqs, whole.kinds) == ((0, 3, 4, 5, 6), "smmmm")
    assert whole.nbytes == sum(resident_nbytes(encode_json(m)) for m in whole.messages)
    assert (whole.message_count, whole.next_seq, whole.base_seq) == (5, 7, 0)
    assert (whole.user_id, whole.metadata, whole.version) == ("ann", {"title": "T"}, 1)
    assert whole.ttl_ms == 60_000 and whole.expires_ms == client.pexpiretime(store.keys.meta("s"))
    assert whole.complete
    assert tail.messages == whole.messages[-2:] and tail.seqs == (5, 6)
    assert tail.message_count == 5 and not tail.complete
    assert none.messages == () and none.message_count == 5
    assert store.snapshot("missing") is None
    # refresh slides the expiry by the stored TTL, in the same script
    for key in store.keys_of("s")[:2]:
        client.pexpire(key, 5_000)
    refreshed = store.snapshot("s", 1, refresh=True)
    assert refreshed is not None and refreshed.expires_ms is not None
    assert refreshed.expires_ms > server_ms(client) + 50_000
    assert client.pexpiretime(store.keys.meta("s")) == refreshed.expires_ms
    assert client.zscore(exp(store, "s"), "s") == refreshed.expires_ms
    with pytest.raises(InvalidInput):
        store.snapshot("s", -1)


def test_restore_round_trips_a_snapshot_onto_an_absent_session(
    make: Any, client: redis.Redis
) -> None:
    source: RedisStore = make(max_messages=4)
    source.save("r", [system("s"), *(user(str(i)) for i in range(5))], ttl=60, user_id="ann")
    source.append("r", user("5"))
    source.merge_metadata("r", {"title": "T"})
    taken = snap(source, "r")
    assert taken.seqs == (0, 4, 5, 6) and taken.version == 3
    target: RedisStore = make()
    assert target.restore(taken)
    assert snap(target, "r") == taken
    # the absolute expiry on every key, and the indexes
    m, h, x = target.keys_of("r")
    assert client.pexpiretime(m) == client.pexpiretime(h) == taken.expires_ms
    assert client.exists(x) == 0
    assert client.hget(h, "lead") == b"1"
    assert target.list().ids == ["r"] and target.list(user_id="ann").ids == ["r"]
    assert client.zscore(idx(target, "r"), "r") == taken.updated_ms
    assert client.zscore(exp(target, "r"), "r") == taken.expires_ms
    assert client.zscore(target.keys.user_of("r", "ann"), "r") == taken.updated_ms
    # present now: a second restore writes nothing
    before = {key: client.dump(key) for key in (m, h)}
    assert not target.restore(taken)
    assert {key: client.dump(key) for key in (m, h)} == before
    # and the restored session goes on where the source was
    receipt = append(target, "r", user("6"))
    assert receipt is not None
    assert (receipt.version, receipt.first_seq, receipt.created_ms) == (4, 7, taken.created_ms)


def test_restore_takes_the_hot_window_it_is_given(make: Any) -> None:
    source: RedisStore = make()
    source.save("w", [user(str(i)) for i in range(10)])
    window = snap(source, "w", 3)
    window = replace(window, message_count=3)
    target: RedisStore = make(max_messages=2)  # restore does not trim
    assert target.restore(window)
    restored = snap(target, "w")
    assert (restored.seqs, restored.next_seq, restored.message_count) == ((7, 8, 9), 10, 3)
    assert restored.expires_ms is None and restored.ttl_ms is None


def test_a_restored_expiry_without_a_ttl_survives_writes(make: Any, client: redis.Redis) -> None:
    source: RedisStore = make()
    source.save("a", [user("a")], user_id="u", metadata={"k": 1})
    expires = server_ms(client) + 60_000
    target: RedisStore = make()
    assert target.restore(replace(snap(source, "a"), expires_ms=expires, ttl_ms=None))
    target.save("a", [user("b")])
    target.append("a", user("c"))
    target.fork("a", "f")
    for sid in ("a", "f"):
        fields = client.hgetall(target.keys.meta(sid))
        assert int(fields[b"expires"]) == expires and b"ttl" not in fields
        assert fields[b"user"] == b"u" and fields[b"m:k"] == b"1"
        assert client.pexpiretime(target.keys.messages(sid)) == expires
    assert target.load("f") == [user("b"), user("c")]


def test_restore_refuses_an_expired_snapshot(make: Any, client: redis.Redis) -> None:
    source: RedisStore = make()
    source.save("e", [user("a")], ttl=60)
    taken = snap(source, "e")
    target: RedisStore = make()
    assert not target.restore(replace(taken, expires_ms=server_ms(client) - 1))
    assert client.exists(*target.keys_of("e")) == 0
    assert target.list().ids == []
    # an expired leftover here counts as absent
    target.save("e", [user("old")], ttl=0.05)
    time.sleep(0.1)
    assert target.restore(taken)
    assert target.load("e") == [user("a")]


def test_restore_onto_a_live_session_is_refused(make: Any) -> None:
    store: RedisStore = make()
    store.save("l", [user("a")])
    taken = snap(store, "l")
    store.append("l", user("b"))
    assert not store.restore(taken)
    assert store.load("l") == [user("a"), user("b")]


# -- create=False -------------------------------------------------------------------------


def test_create_false_leaves_a_missing_session_alone(make: Any, client: redis.Redis) -> None:
    store: RedisStore = make()
    with invalidations(store) as heard:
        assert save(store, "c", user("a"), create=False) is None
        assert append(store, "c", user("a"), create=False) is None
        assert append(store, "c", user("a"), create=False, expected_version=3) is None
    assert heard == []
    assert client.exists(*store.keys_of("c")) == 0
    assert client.zscore(idx(store, "c"), "c") is None
    # an expired session is missing too
    store.save("c", [user("old")], ttl=0.05)
    time.sleep(0.1)
    assert append(store, "c", user("a"), create=False) is None
    # a live one is written as usual
    store.save("c", [user("a")])
    appended = append(store, "c", user("b"), create=False)
    assert appended is not None and appended.version == 2
    saved = save(store, "c", user("c"), create=False)
    assert saved is not None and (saved.version, saved.first_seq) == (3, 2)
    assert store.load("c") == [user("c")]


# -- invalidation --------------------------------------------------------------------------


@contextmanager
def invalidations(store: RedisStore) -> Iterator[list[str]]:
    """The messages published on the store's invalidation channel inside the block."""
    listener = redis.Redis.from_url(REDIS_URL)
    pubsub = listener.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(store.invalidation_channel)
    assert pubsub.get_message(timeout=2) is not None  # the subscribe confirmation
    heard: list[str] = []
    try:
        yield heard
    finally:
        store.client.publish(store.invalidation_channel, "end")
        while True:
            message = pubsub.get_message(timeout=2)
            assert message is not None, "the end marker never arrived"
            if message["data"] == b"end":
                break
            heard.append(message["data"].decode())
        pubsub.close()
        listener.close()


def test_every_write_publishes_its_generation(make: Any) -> None:
    store: RedisStore = make(max_messages=2, spill=True)
    assert store.invalidation_channel == f"{PREFIX}:{store.keys.namespace}:inval"
    with invalidations(store) as heard:
        saved = save(store, "g", user("0"), user("1"), user("2"))
        assert saved is not None
        appended = append(store, "g", user("3"))  # trims: one message all the same
        assert appended is not None
        _, merged = store.write_merge_metadata("g", FrozenDict({"k": 1}))
        store.fork("g", "g2")
        forked = snap(store, "g2")
        store.delete("g2")
        store.delete("never")
        # reads, restores and archival helpers change nothing anyone caches
        taken = snap(store, "g")
        store.snapshot("g", refresh=True)
        store.history_page("g", None, 10)
        store.spilled("g")
        store.drain_spill("g", 0)
        store.restore(replace(taken, sid="restored"))
        store.evict("restored", created_ms=taken.created_ms, version=taken.version)
    created = saved.created_ms
    assert heard[:4] == [
        f"{created} 1 g",
        f"{created} 2 g",
        f"{created} 3 g",
        f"{forked.created_ms} 1 g2",
    ]
    assert appended.version == 2 and merged.version == 3
    assert (merged.first_seq, merged.next_seq, merged.created_ms) == (4, 4, created)
    assert len(heard) == 6
    deleted, never = (decode_invalidation(text) for text in heard[4:])
    assert deleted is not None and never is not None
    assert deleted[1] == "g2" and deleted[0][1] == 0
    assert deleted[0] > (forked.created_ms, forked.version)  # supersedes every state it had
    assert never[1] == "never" and never[0][1] == 0


def test_publish_false_publishes_nothing(make: Any) -> None:
    store: RedisStore = make(publish=False)
    with invalidations(store) as heard:
        store.save("q", [user("a")])
        store.append("q", user("b"))
        store.merge_metadata("q", {"k": 1})
        store.fork("q", "q2")
        store.delete("q")
    assert heard == []


# -- spill -------------------------------------------------------------------------------------


def test_spill_keeps_the_trimmed_entries_and_history_pages_through_them(
    make: Any, client: redis.Redis
) -> None:
    store: RedisStore = make(max_messages=3, spill=True)
    store.save("p", [user("0"), system("1"), user("2")], ttl=60)
    store.append("p", user("3"))  # spills 0; the system message 1 becomes leading
    store.append("p", user("4"), user("5"))  # spills 2 and 3
    assert snap(store, "p").seqs == (1, 4, 5)
    assert [(e.seq, e.kind, e.message) for e in store.spilled("p")] == [
        (0, "m", user("0")),
        (2, "m", user("2")),
        (3, "m", user("3")),
    ]
    assert [e.seq for e in store.spilled("p", limit=2)] == [0, 2]
    m, h, x = store.keys_of("p")
    assert client.type(x) == b"list"
    assert client.pexpiretime(x) == client.pexpiretime(h) == client.pexpiretime(m)
    everything = [user("0"), system("1"), user("2"), user("3"), user("4"), user("5")]
    assert pairs(store.history_page("p", None, 100)) == list(enumerate(everything))
    assert pairs(store.history_page("p", None, 2)) == [(4, user("4")), (5, user("5"))]
    assert pairs(store.history_page("p", 4, 2)) == [(2, user("2")), (3, user("3"))]
    assert pairs(store.history_page("p", 3, 2)) == [(1, system("1")), (2, user("2"))]
    assert pairs(store.history_page("p", 1, 2)) == [(0, user("0"))]
    assert pairs(store.history_page("p", 0, 2)) == []
    assert store.history_page("missing", None, 2) is None
    # the snapshot is the window only; a load is too
    assert snap(store, "p").message_count == 3 and len(store.load("p")) == 3


def test_drain_spill_removes_what_was_archived(make: Any, client: redis.Redis) -> None:
    store: RedisStore = make(max_messages=1, spill=True)
    store.save("d", [user(str(i)) for i in range(5)])
    created = snap(store, "d").created_ms
    assert [e.seq for e in store.spilled("d")] == [0, 1, 2, 3]
    assert store.drain_spill("d", -1) == 0
    assert store.drain_spill("d", 1) == 2
    assert [e.seq for e in store.spilled("d")] == [2, 3]
    assert pairs(store.history_page("d", None, 100)) == [(i, user(str(i))) for i in (2, 3, 4)]
    # a different incarnation's seqs are not ours to drain
    assert store.drain_spill("d", 10, created_ms=created - 1) == 0
    assert store.drain_spill("d", 2, created_ms=created) == 1
    assert store.drain_spill("d", 2) == 0
    assert store.drain_spill("d", 100) == 1
    assert store.spilled("d") == [] and client.exists(store.keys.spill("d")) == 0
    assert store.drain_spill("missing", 100) == 0


def test_a_save_replaces_the_spill_and_a_delete_removes_it(make: Any, client: redis.Redis) -> None:
    store: RedisStore = make(max_messages=2, spill=True)
    store.save("r", [user(str(i)) for i in range(4)])
    assert [e.seq for e in store.spilled("r")] == [0, 1]
    store.save("r", [user("a"), user("b")])  # the old history is obsolete
    assert store.spilled("r") == []
    assert client.exists(store.keys.spill("r")) == 0
    store.save("r", [user("a"), user("b"), user("c")], metadata={"k": [1]})  # spills its own trim
    assert [(e.seq, e.message) for e in store.spilled("r")] == [(6, user("a"))]
    assert store.load("r") == [user("b"), user("c")]
    assert store.get("r").metadata == {"k": [1]}
    assert store.delete("r")
    assert client.exists(*store.keys_of("r")) == 0


def test_without_spill_trimmed_entries_are_gone(make: Any, client: redis.Redis) -> None:
    store: RedisStore = make(max_messages=2)
    store.save("n", [user(str(i)) for i in range(4)])
    store.append("n", user("4"))
    assert client.exists(store.keys.spill("n")) == 0 and store.spilled("n") == []
    assert pairs(store.history_page("n", None, 100)) == [(3, user("3")), (4, user("4"))]


def test_evict_removes_only_the_generation_it_was_given(make: Any, client: redis.Redis) -> None:
    store: RedisStore = make(max_messages=1, spill=True)
    store.save("v", [user("a"), user("b")], ttl=60, user_id="u")
    taken = snap(store, "v")
    assert not store.evict("v", created_ms=taken.created_ms, version=taken.version - 1)
    assert not store.evict("v", created_ms=taken.created_ms + 1, version=taken.version)
    store.append("v", user("c"))
    assert not store.evict("v", created_ms=taken.created_ms, version=taken.version)
    assert store.evict("v", created_ms=taken.created_ms, version=taken.version + 1)
    assert client.exists(*store.keys_of("v")) == 0
    assert store.list().ids == [] and store.list(user_id="u").ids == []
    assert client.zscore(exp(store, "v"), "v") is None
    assert client.zscore(store.keys.user_of("v", "u"), "v") is None
    assert not client.hexists(store.keys.own(store.keys.bucket("v")), "v")
    assert not store.evict("v", created_ms=taken.created_ms, version=taken.version + 1)


def test_drop_is_a_delete(store: RedisStore, client: redis.Redis) -> None:
    store.save("x", [user("a")])
    assert store.drop("x") and not store.drop("x")
    assert client.exists(*store.keys_of("x")) == 0


# -- the tiered layer's reads -------------------------------------------------------------------


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_list_keys_is_the_keyset_behind_list(
    store: RedisStore, client: redis.Redis, order: Any
) -> None:
    for i in range(7):
        store.save(f"k{i}", [], user_id="u" if i % 2 else None)
    everything = store.list(limit=100, order=order).ids
    keys = store.list_keys(None, 3, None, order)
    assert [sid for _, sid in keys] == everything[:3]
    assert all(client.zscore(idx(store, sid), sid) == score for score, sid in keys)
    rest = store.list_keys(None, 100, keys[-1], order)
    assert [sid for _, sid in keys + rest] == everything
    assert store.list_keys(None, 100, rest[-1], order) == []
    mine = store.list_keys("u", 100, None, order)
    assert [sid for _, sid in mine] == store.list(user_id="u", limit=100, order=order).ids
    assert len(mine) == 3


def test_exists_many(store: RedisStore, client: redis.Redis) -> None:
    store.save("a", [])
    store.save("b", [user("x")], ttl=60)
    store.save("gone", [], ttl=0.05)
    store.save("stale", [], ttl=60)
    client.hset(store.keys.meta("stale"), "expires", 1)  # expired by its field, key still here
    time.sleep(0.1)
    assert store.exists_many(["a", "missing", "gone", "b", "stale"]) == [
        True,
        False,
        False,
        True,
        False,
    ]
    assert store.exists_many([]) == []


def test_keys_of(store: RedisStore) -> None:
    t = tag(store.keys.namespace, "s")
    assert store.keys_of("s") == [f"{t}m:s", f"{t}h:s", f"{t}x:s"]
    with pytest.raises(InvalidInput):
        store.keys_of("a b")


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a client wrote to a Redis connection: round trips."""
    count = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        original(self, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return count


def test_every_new_method_is_one_round_trip(
    make: Any, client: redis.Redis, sends: list[int]
) -> None:
    store: RedisStore = make(max_messages=3, spill=True)
    store.save("o", [user(str(i)) for i in range(6)], ttl=60, user_id="u")
    for script in SCRIPTS.values():  # so no NOSCRIPT/SCRIPT LOAD detour is counted
        client.script_load(script)
    taken = snap(store, "o")
    calls: list[Callable[[], object]] = [
        lambda: save(store, "o2", user("a"), create=False),
        lambda: save(store, "o2", user("a"), user("b"), user("c"), user("d")),
        lambda: append(store, "o2", user("e"), create=False),
        lambda: store.write_merge_metadata("o2", FrozenDict({"k": 1})),
        lambda: store.snapshot("o"),
        lambda: store.snapshot("o", 2, refresh=True),
        lambda: store.restore(replace(taken, sid="o3")),
        lambda: store.history_page("o", None, 2),
        lambda: store.history_page("o", 2, 100),
        lambda: store.list_keys(None, 10, None, "desc"),
        lambda: store.list_keys("u", 10, (0, ""), "asc"),
        lambda: store.exists_many(["o", "o2", "o3", "missing"]),
        lambda: store.spilled("o"),
        lambda: store.drain_spill("o", 0),
        lambda: store.evict("o3", created_ms=taken.created_ms, version=taken.version),
        lambda: store.drop("o2"),
    ]
    for call in calls:
        sends[0] = 0
        call()
        assert sends[0] == 1


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
    # No breaker: every call must try (and translate the driver's error).
    store = RedisStore.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1, breaker=False)
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
        lambda: save(store, "x", user("a")),
        lambda: append(store, "x", user("a"), create=False),
        lambda: store.write_merge_metadata("x", FrozenDict({"a": 1})),
        lambda: store.snapshot("x"),
        lambda: store.restore(
            Snapshot("x", (), (), "", FrozenDict(), None, 1, 1, 1, None, None, 0, 0)
        ),
        lambda: store.history_page("x", None, 10),
        lambda: store.list_keys(None, 10, None, "desc"),
        lambda: store.exists_many(["x"]),
        lambda: store.spilled("x"),
        lambda: store.drain_spill("x", 1),
        lambda: store.evict("x", created_ms=1, version=1),
        lambda: store.drop("x"),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailable) as info:
            call()
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
        assert info.value.backend == "redis"
    store.close()
