"""The maintenance functions, called directly against the real Redis and PostgreSQL."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tieredstore import ArchiveStore, InvalidInput, SessionNotFound
from tieredstore.codec import split_entry
from tieredstore.maintenance import MaintenanceSettings, archive_idle, expire, trim
from tieredstore.policy import message_kind, plan_trim_bytes
from tieredstore.store import TieredStore

Factory = Callable[..., TieredStore]


def msg(sid: str, i: int, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": f"{sid} message {i}"}


@pytest.fixture(scope="module")
def pg_engine(pg_database: Callable[[], str]) -> Iterator[Any]:
    """A database of this module's own: its bulk rows must not skew the shared one's plans."""
    from tieredstore import migrate

    url = pg_database()
    migrate(url)
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def namespace() -> str:
    return f"maint-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_store(redis_client: Any, redis_prefix: str, pg_engine: Any,
               namespace: str) -> Iterator[Factory]:
    made: list[TieredStore] = []

    def make(**options: Any) -> TieredStore:
        options.setdefault("memory_max_bytes", None)
        store = TieredStore.from_clients(redis=redis_client, engine=pg_engine,
                                         namespace=namespace, prefix=redis_prefix, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def redis_history(store: TieredStore, sid: str) -> list[tuple[int, bytes]]:
    """(seq, encoded message) of the window and spill list, as stored in Redis."""
    m, _, x = store.redis.keys.session(sid)
    out = []
    for entry in [*store.redis.client.lrange(x, 0, -1), *store.redis.client.lrange(m, 0, -1)]:
        _, seq, _, payload = split_entry(entry)
        out.append((seq, bytes(payload)))
    return out


def archive_history(engine: Any, namespace: str, sid: str) -> list[tuple[int, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT seq, payload FROM tieredstore_messages "
            "WHERE namespace = :ns AND session_id = :sid ORDER BY seq"),
            {"ns": namespace, "sid": sid})
        return [(row.seq, bytes(row.payload)) for row in rows]


def archive_all(store: TieredStore, **limits: Any) -> Any:
    """archive_idle for every session, including those written this millisecond."""
    return archive_idle(store, archive_after=0, now=time.time() + 1, **limits)


def is_hot(store: TieredStore, sid: str) -> bool:
    client, keys = store.redis.client, store.redis.keys
    indexed = client.zscore(index(store, sid), sid) is not None
    return bool(client.exists(*keys.session(sid))) or indexed


def index(store: TieredStore, sid: str, name: str = "idx") -> str:
    """The key of one of the indexes of ``sid``'s bucket (idx, exp, own)."""
    keys = store.redis.keys
    return str(getattr(keys, name)(keys.bucket(sid)))


def every_bucket(store: TieredStore, command: str, name: str) -> int:
    """``command`` (ZCARD, HLEN) summed over one index of every bucket."""
    keys, client = store.redis.keys, store.redis.client
    return sum(int(client.execute_command(command, getattr(keys, name)(b)))
               for b in range(keys.buckets))


# -- archive_idle -------------------------------------------------------------------------


def test_archive_idle_moves_window_and_spill_then_evicts(make_store: Factory, pg_engine: Any,
                                                          namespace: str) -> None:
    store = make_store(max_messages=5, buckets=1)  # one bucket: batches as counted below
    full: dict[str, list[dict[str, Any]]] = {}
    for i in range(30):
        sid = f"s{i}"
        full[sid] = [msg(sid, j) for j in range(3 + i % 6)]
        store.save(sid, full[sid], metadata={"n": i}, user_id=f"u{i % 3}", ttl=3600)
    assert store.redis.spilled("s5"), "the store should have spilled past max_messages"
    result = archive_all(store, batch_size=7)
    assert (result.scanned, result.changed, result.skipped) == (30, 30, 0)
    assert result.batches == 5 and not result.remaining
    assert result.messages == sum(len(v) for v in full.values())
    for sid, messages in full.items():
        assert not is_hot(store, sid)
        assert store.load(sid, full=True) == messages
        session = ArchiveStore(pg_engine, namespace=namespace).get(sid)
        assert session.metadata["n"] == int(sid[1:]) and session.user_id == f"u{int(sid[1:]) % 3}"
        assert session.expires_at is not None
    assert every_bucket(store, "ZCARD", "exp") == 0
    assert every_bucket(store, "HLEN", "own") == 0


def test_archive_idle_only_takes_idle_sessions(make_store: Factory) -> None:
    store = make_store()
    store.save("old", [msg("old", 0)])
    store.save("new", [msg("new", 0)])
    assert archive_idle(store, archive_after=3600).changed == 0
    assert is_hot(store, "old") and is_hot(store, "new")
    later = time.time() + 7200
    result = archive_idle(store, archive_after=3600, now=later)
    assert result.changed == 2 and not is_hot(store, "old")


def test_archive_idle_is_idempotent_after_a_crash_between_commit_and_evict(
        make_store: Factory, pg_engine: Any, namespace: str) -> None:
    """A run killed after its archive commit leaves sessions in both tiers; the next run
    absorbs them again (nothing duplicated) and evicts them."""
    store = make_store(max_messages=4)
    for i in range(20):
        store.save(f"c{i}", [msg(f"c{i}", j) for j in range(6)])
    captured = [cap for i in range(20) for cap in store.redis.capture_many([f"c{i}"]) if cap]
    assert store.archive.absorb_many([cap.copy() for cap in captured]) == [True] * 20
    result = archive_all(store)
    assert result.changed == 20
    for i in range(20):
        rows = archive_history(pg_engine, namespace, f"c{i}")
        assert [seq for seq, _ in rows] == list(range(6))
        assert store.load(f"c{i}", full=True) == [msg(f"c{i}", j) for j in range(6)]
    again = archive_all(store)
    assert (again.scanned, again.changed) == (0, 0)


def test_archive_idle_keeps_sessions_that_changed(make_store: Factory) -> None:
    """The compare-and-delete: a write between the copy and the eviction keeps the session."""
    store = make_store()
    store.save("busy", [msg("busy", 0)])
    hot = store.redis
    (cap,) = hot.capture_many(["busy"])
    assert cap is not None
    store.archive.absorb_many([cap.copy()])
    store.append("busy", msg("busy", 1))
    assert hot.evict_many(hot.keys.bucket("busy"), [cap]) == [False]
    assert store.load("busy") == [msg("busy", 0), msg("busy", 1)]
    assert archive_all(store).changed == 1
    assert store.load("busy", full=True) == [msg("busy", 0), msg("busy", 1)]


def test_archive_idle_dry_run_changes_nothing(make_store: Factory, pg_engine: Any,
                                              namespace: str) -> None:
    store = make_store()
    for i in range(12):
        store.save(f"d{i}", [msg(f"d{i}", 0)])
    result = archive_all(store, batch_size=5, dry_run=True)
    assert (result.scanned, result.changed, result.dry_run) == (12, 12, True)
    assert all(is_hot(store, f"d{i}") for i in range(12))
    assert store.archive.stats()["sessions"] == 0


def test_archive_idle_is_bounded(make_store: Factory) -> None:
    store = make_store(buckets=1)  # one bucket, so one batch holds batch_size sessions
    for i in range(25):
        store.save(f"b{i}", [msg(f"b{i}", 0)])
    first = archive_all(store, batch_size=10, max_batches=1)
    assert (first.changed, first.remaining) == (10, True)
    rest = archive_all(store, batch_size=10)
    assert (rest.changed, rest.remaining) == (15, False)


def test_archive_idle_needs_both_tiers(redis_client: Any, redis_prefix: str) -> None:
    store = TieredStore.from_clients(redis=redis_client, prefix=redis_prefix,
                                     namespace="no-archive", memory_max_bytes=None)
    with pytest.raises(InvalidInput):
        archive_all(store)
    store.close()


@pytest.mark.slow
def test_archive_race_appends_are_never_lost_or_duplicated(make_store: Factory, pg_engine: Any,
                                                          namespace: str) -> None:
    """1 000 idle sessions archived while threads append to a random half of them."""
    store = make_store(max_messages=15)
    sids = [f"r{i:04d}" for i in range(1000)]
    base = 20
    for sid in sids:
        store.save(sid, [msg(sid, j) for j in range(base)])
    rng = random.Random(7)
    targets = rng.sample(sids, 500)
    appended: dict[str, int] = dict.fromkeys(sids, 0)
    running = threading.Event()
    running.set()
    errors: list[BaseException] = []

    def appender(chunk: list[str]) -> None:
        local = random.Random(hash(chunk[0]))
        try:
            while running.is_set():
                sid = local.choice(chunk)
                store.append(sid, msg(sid, base + appended[sid]))
                appended[sid] += 1  # one thread per session: no race on the counter
                time.sleep(local.random() * 0.002)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(targets[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    try:
        first = archive_all(store, batch_size=50)
    finally:
        running.clear()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert sum(appended.values()) > 100, "the appenders barely ran"
    assert first.changed > 0
    assert first.skipped > 0, "no append landed between copy and evict: the race was not hit"
    while archive_all(store, batch_size=200).changed:
        pass
    for sid in sids:
        expected = [msg(sid, j) for j in range(base + appended[sid])]
        assert store.load(sid, full=True) == expected, sid
        # Each message exactly once across the tiers: one seq per message, same bytes.
        by_seq: dict[int, bytes] = {}
        for seq, payload in [*archive_history(pg_engine, namespace, sid),
                             *redis_history(store, sid)]:
            assert by_seq.setdefault(seq, payload) == payload
        assert len(by_seq) == len(expected)
        assert len(set(by_seq.values())) == len(expected)


# -- expire -------------------------------------------------------------------------------


def test_expire_removes_expired_sessions_everywhere(make_store: Factory, pg_engine: Any,
                                                    namespace: str) -> None:
    store = make_store()
    for i in range(8):
        store.save(f"short{i}", [msg("short", i)], ttl=0.3, user_id="owner")
        store.save(f"long{i}", [msg("long", i)], ttl=3600, user_id="owner")
    store.save("forever", [msg("forever", 0)], user_id="owner")
    # an archived-only session that expires, and one that does not
    archive = ArchiveStore(pg_engine, namespace=namespace)
    archive.save("cold-short", [msg("cold", 0)], ttl=0.3)
    archive.save("cold-long", [msg("cold", 1)], ttl=3600)
    before = {sid: store.get(sid) for sid in [*(f"long{i}" for i in range(8)), "forever",
                                              "cold-long"]}
    time.sleep(0.45)
    result = expire(store, batch_size=3)
    assert result.changed == 9 and not result.remaining
    keys, client = store.redis.keys, store.redis.client
    for sid in [*(f"short{i}" for i in range(8)), "cold-short"]:
        assert client.zscore(index(store, sid), sid) is None
        assert client.zscore(index(store, sid, "exp"), sid) is None
        assert client.zscore(keys.user_of(sid, "owner"), sid) is None
        assert not client.hexists(index(store, sid, "own"), sid)
        assert not client.exists(*keys.session(sid))
        assert archive_history(pg_engine, namespace, sid) == []
        with pytest.raises(SessionNotFound):
            store.get(sid)
    for sid, session in before.items():
        after = store.get(sid)
        assert (after.version, after.messages, after.expires_at) == (
            session.version, session.messages, session.expires_at)
    assert client.zscore(keys.user_of("forever", "owner"), "forever") is not None
    assert expire(store).changed == 0


def test_expire_keeps_an_archived_copy_of_a_session_live_in_redis(
        make_store: Factory, pg_engine: Any, namespace: str) -> None:
    """The archive's expiry is as old as the last archival: a session that lives on in
    Redis keeps its archived history, which takes the Redis expiry."""
    store = make_store()
    store.save("promoted", [msg("p", 0)], ttl=3600)
    archive_all(store)
    store.append("promoted", msg("p", 1), ttl=7200)  # back in Redis with a longer TTL
    redis_expiry = store.redis.snapshot("promoted", 0).expires_ms
    later = time.time() + 5000  # the archive's copy has expired by then, Redis's has not
    result = expire(store, now=later)
    assert result.changed == 0
    with pg_engine.connect() as conn:
        expires = conn.execute(sa.text(
            "SELECT expires_ms FROM tieredstore_sessions WHERE namespace = :ns "
            "AND session_id = 'promoted'"), {"ns": namespace}).scalar_one()
    assert expires == redis_expiry
    assert store.load("promoted", full=True) == [msg("p", 0), msg("p", 1)]


def test_expire_repairs_the_index(make_store: Factory) -> None:
    store = make_store()
    store.save("ok", [msg("ok", 0)], ttl=3600)
    store.save("lost-ttl", [msg("lost", 0)], ttl=3600)
    store.save("no-ttl", [msg("none", 0)])
    keys, client = store.redis.keys, store.redis.client
    client.zadd(index(store, "ghost"), {"ghost": 1})  # an index entry whose keys are gone
    client.persist(keys.meta("lost-ttl"))
    client.persist(keys.messages("lost-ttl"))
    client.zrem(index(store, "lost-ttl", "exp"), "lost-ttl")
    dry = expire(store, dry_run=True)
    assert dry.repaired == 2 and client.zscore(index(store, "ghost"), "ghost") is not None
    result = expire(store)
    assert result.repaired == 2
    assert client.zscore(index(store, "ghost"), "ghost") is None
    assert client.pttl(keys.meta("lost-ttl")) > 0 and client.pttl(keys.messages("lost-ttl")) > 0
    assert client.zscore(index(store, "lost-ttl", "exp"), "lost-ttl") is not None
    assert client.pttl(keys.meta("no-ttl")) == -1, "a session without a TTL must keep none"
    assert store.load("ok") == [msg("ok", 0)]
    assert expire(store).repaired == 0


def test_expire_dry_run_changes_nothing(make_store: Factory) -> None:
    store = make_store()
    store.save("gone", [msg("gone", 0)], ttl=0.2)
    time.sleep(0.3)
    result = expire(store, dry_run=True)
    assert result.dry_run and result.changed >= 1
    assert store.redis.client.zscore(index(store, "gone"), "gone") is not None
    assert expire(store).changed == 1


# -- trim ---------------------------------------------------------------------------------


def conversation(sid: str, turns: int) -> list[dict[str, Any]]:
    """A system prompt, then turns of user -> assistant tool call -> tool results -> answer."""
    out: list[dict[str, Any]] = [{"role": "system", "content": "be brief"}]
    for t in range(turns):
        call = f"{sid}-{t}"
        function = {"name": "f", "arguments": "{}"}
        out += [
            {"role": "user", "content": f"{sid} question {t}"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call + "a", "type": "function", "function": function},
                {"id": call + "b", "type": "function", "function": function},
            ]},
            {"role": "tool", "tool_call_id": call + "a", "content": "x" * (10 + t)},
            {"role": "tool", "tool_call_id": call + "b", "content": "y" * (20 + t)},
            {"role": "assistant", "content": f"{sid} answer {t}"},
        ]
    return out


def check_tool_pairs(messages: list[Any]) -> None:
    """Every tool result follows the assistant message that called it."""
    called: set[str] = set()
    for message in messages:
        for call in message.get("tool_calls") or []:
            called.add(call["id"])
        if message["role"] == "tool":
            assert message["tool_call_id"] in called, f"orphan tool result {message}"


@pytest.mark.parametrize("limit", [{"max_messages": 7}, {"max_bytes": 400},
                                   {"max_messages": 9, "max_bytes": 600}])
def test_trim_enforces_limits_keeping_trimmed_messages_in_the_archive(
        make_store: Factory, limit: dict[str, int]) -> None:
    store = make_store()
    sessions = {f"t{i}": conversation(f"t{i}", 2 + i % 5) for i in range(12)}
    for sid, messages in sessions.items():
        store.save(sid, messages)
    result = trim(store, batch_size=5, **limit)
    assert result.changed > 0 and not result.remaining
    from tieredstore.codec import encode_json

    for sid, messages in sessions.items():
        window = store.load(sid)
        kinds = "".join(message_kind(m) for m in messages)
        sizes = [len(encode_json(m)) for m in messages]
        lead, drop = plan_trim_bytes(kinds, sizes, limit.get("max_messages"),
                                     limit.get("max_bytes"))
        assert window == messages[:lead] + messages[lead + drop:], sid
        check_tool_pairs(window)
        assert window[0]["role"] == "system"
        assert store.load(sid, full=True) == messages, "trimmed messages must stay archived"
    assert trim(store, batch_size=5, **limit).changed == 0


def test_trim_without_keeping_trims_the_archive_too(make_store: Factory, pg_engine: Any,
                                                    namespace: str) -> None:
    store = make_store()
    cold = ArchiveStore(pg_engine, namespace=namespace)
    cold.save("cold", conversation("cold", 4))
    store.save("hot", conversation("hot", 4))
    result = trim(store, max_messages=6, keep_trimmed=False)
    assert result.changed == 2
    for sid in ("hot", "cold"):
        history = store.load(sid, full=True)
        assert len(history) <= 6
        check_tool_pairs(history)
        assert history[-1]["content"] == f"{sid} answer 3"
    assert len(archive_history(pg_engine, namespace, "cold")) == len(store.load("cold"))


def test_trim_archives_and_drains_spill_lists(make_store: Factory) -> None:
    store = make_store(max_messages=4)
    store.save("spilly", [msg("spilly", j) for j in range(10)])
    assert len(store.redis.spilled("spilly")) == 6
    result = trim(store)
    assert result.changed == 0 and result.skipped == 0
    assert store.redis.spilled("spilly") == []
    assert store.load("spilly", full=True) == [msg("spilly", j) for j in range(10)]


def test_trim_dry_run_changes_nothing(make_store: Factory) -> None:
    store = make_store()
    store.save("long", conversation("long", 5))
    before = store.get("long")
    result = trim(store, max_messages=3, dry_run=True)
    assert result.changed == 1 and result.messages > 0
    after = store.get("long")
    assert (after.version, after.messages) == (before.version, before.messages)


def test_settings_from_environment() -> None:
    settings = MaintenanceSettings.from_env({
        "TIEREDSTORE_ARCHIVE_AFTER": "60", "TIEREDSTORE_BATCH_SIZE": "100",
        "TIEREDSTORE_TRIM_KEEP": "false", "TIEREDSTORE_TRIM_MAX_BYTES": "4096",
    })
    assert (settings.archive_after, settings.batch_size) == (60.0, 100)
    assert (settings.trim_keep, settings.trim_max_bytes) == (False, 4096)
    assert MaintenanceSettings.from_env({}).trim_keep is None
    with pytest.raises(InvalidInput):
        MaintenanceSettings.from_env({"TIEREDSTORE_LOCK_TTL": "10",
                                      "TIEREDSTORE_TIME_BUDGET": "60"})


def test_retention_settings_and_their_beat_entries() -> None:
    from worker.schedule import beat_schedule

    plain = MaintenanceSettings.from_env({})
    assert plain.retention_days is None and plain.partitions_ahead == 3
    assert "tieredstore-retain" not in beat_schedule(plain, "q")  # nothing to retain
    assert beat_schedule(plain, "q")["tieredstore-partitions"]["task"] == "tieredstore.partitions"
    kept = MaintenanceSettings.from_env({
        "TIEREDSTORE_RETENTION_DAYS": "365", "TIEREDSTORE_RETAIN_INTERVAL": "600",
        "TIEREDSTORE_PARTITIONS_AHEAD": "6", "TIEREDSTORE_PARTITIONS_INTERVAL": "3600"})
    assert (kept.retention_days, kept.partitions_ahead) == (365.0, 6)
    entry = beat_schedule(kept, "q")["tieredstore-retain"]
    assert entry["task"] == "tieredstore.retain" and entry["options"]["expires"] == 600.0
    with pytest.raises(InvalidInput):
        MaintenanceSettings(retention_days=-1.0)


def test_expire_reports_remaining_until_its_sweep_finished_a_lap(make_store: Factory) -> None:
    """A bounded call sweeps part of the index and says so; calls repeated while
    ``remaining`` holds visit every entry of every bucket (here: repair each ghost)."""
    store = make_store(buckets=4)
    for i in range(120):
        store.save(f"e{i}", [msg(f"e{i}", 0)], ttl=3600)
    keys, client = store.redis.keys, store.redis.client
    ghosts = [f"ghost{i}" for i in range(12)]
    for ghost in ghosts:
        client.zadd(index(store, ghost), {ghost: 1})
    calls, result = 0, expire(store, batch_size=10, max_batches=2)
    calls += 1
    assert result.remaining, "one small call cannot sweep 132 entries"
    while result.remaining:
        result = expire(store, batch_size=10, max_batches=2)
        calls += 1
        assert calls < 100, "the sweep never finished its lap"
    assert all(client.zscore(index(store, g), g) is None for g in ghosts)
    assert store.redis.count_indexed() == 120
    assert all(store.load(f"e{i}") == [msg(f"e{i}", 0)] for i in range(0, 120, 17))
    assert keys.buckets == 4


def test_maintenance_scripts_take_at_most_a_chunk_of_sessions_each(make_store: Factory) -> None:
    """However large the batch, no single script handles more than SCRIPT_CHUNK sessions
    (so none holds Redis for long); the batch as a whole still does all of its work."""
    from tieredstore.tiers.redis.records import Call, Calls
    from tieredstore.tiers.redis.upkeep import SCRIPT_CHUNK

    store = make_store(buckets=1)
    sids = [f"c{i:03d}" for i in range(2 * SCRIPT_CHUNK + 50)]
    for sid in sids:
        store.save(sid, [msg(sid, 0)], ttl=3600)
    hot, upkeep = store.redis, store.redis._upkeep
    seen: list[int] = []

    def drive(plan: Any) -> Any:
        try:
            call = next(plan)
            while True:
                for each in (call.calls if isinstance(call, Calls) else [call]):
                    if isinstance(each, Call) and each.script in ("capture", "evict"):
                        per = 3 if each.script == "capture" else 4
                        seen.append((len(each.keys) - (0 if per == 3 else 3)) // per)
                call = plan.send(hot._send(call))
        except StopIteration as stop:
            return stop.value

    captured = drive(upkeep.capture_many(sids))
    assert [cap.sid for cap in captured] == sids
    archived = store.archive.absorb_many([cap.copy() for cap in captured])
    assert all(archived)
    assert drive(upkeep.evict_many(0, captured)) == [True] * len(sids)
    assert seen and max(seen) <= SCRIPT_CHUNK and sum(seen) == 2 * len(sids)
    assert hot.count_indexed() == 0
