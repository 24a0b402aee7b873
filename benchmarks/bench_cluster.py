"""The bucketed Redis layout at scale: ``python -m benchmarks.bench_cluster``.

(a) ``list(limit=100)`` first, middle and last page over 1 000 000 sessions
    (``--quick``: 100 000) in the default 16 buckets, on standalone Redis and
    on the Redis Cluster, next to a raw baseline measured in the same run (one
    pipelined ``ZRANGE 0 100 REV`` per bucket index: the least a merged page
    can read). Sessions are created by the real ``save`` script, pipelined
    (one small message each, to keep the servers' memory in bounds); the
    bucket spread is reported and a sample is read back with ``load``. The
    pages' cursors come from a dump of every bucket index, and each measured
    page is checked against the expected slice of that dump. Acceptance:
    middle and last page p50 at most 2x the first page's, on both servers,
    and every page under 5 ms p50 on standalone Redis.
(b) Redis memory per session, new layout against the old one (one hash tag
    per session, indexes ``P:idx``, ``P:exp``, ``P:own``, ``P:u:<user>``),
    both built in the same run on a private redis-server: the new one by the
    real ``save`` script, the old one by raw commands writing the very same
    hash fields and entries under the old key names. A typical session: 10
    messages of ~200 bytes, a user id, a one-day TTL, two metadata keys; with
    one session per user and with ten. Per session = ``MEMORY USAGE ..
    SAMPLES 0`` of every key of the namespace (session keys and indexes)
    divided by the sessions; the ``used_memory`` growth is shown as a check.
    Acceptance: new at most 1.2x old.
(c) The longest Lua script while maintenance (``expire``, ``trim``,
    ``archive_idle``, default batch sizes) works through a backlog (50 000
    sessions of 12 messages, ``--quick``: 10 000; a fifth of them expired;
    trim to 8 messages; then everything archived) on a private redis-server
    with ``slowlog-log-slower-than 100`` (µs), the slow log drained after
    every call; the archive is a scratch PostgreSQL database. Reported per
    phase and script: max duration, scripts over 1 ms and 10 ms, and
    ``EVALSHA``'s mean from ``INFO commandstats``. Not gated. ``expire`` and
    ``trim`` are called until ``remaining`` is false or, failing that, until
    every bucket has finished a lap (whether ``remaining`` ever went false
    is reported).

Keys live under a unique prefix on the shared servers, removed after each
part; the private server is stopped by its PID. Results go to
``benchmarks/results/cluster.json``; the exit status is non-zero when an
acceptance check fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from benchmarks.common import (
    PG_ADMIN_URL,
    Laps,
    bulk_save,
    cluster_client,
    delete_prefix,
    interleaved,
    load_scripts,
    no_gc,
    percentile,
    primaries,
    private_redis,
    redis_client,
    scratch_database,
    summary_ns,
)
from tieredstore import Message, RedisStore
from tieredstore.codec import encode_cursor
from tieredstore.maintenance import archive_idle, expire, trim
from tieredstore.model import FrozenDict
from tieredstore.store import TieredStore
from tieredstore.tiers.redis.scripts import SCRIPTS, script_sha

RESULTS = Path(__file__).parent / "results" / "cluster.json"
LIMIT = 100
PAGE_RATIO = 2.0
STANDALONE_P50_MS = 5.0
MEMORY_RATIO = 1.2
SLOWLOG_US = 100
REPEATS = 3  # builds of each layout for the used_memory figure (its median)
OURS = {"SLOWLOG", "CONFIG", "INFO", "SCRIPT", "PING"}


# -- (a) list pages --------------------------------------------------------------------


def bucket_dump(store: RedisStore) -> list[tuple[int, str]]:
    """Every ``(updated_ms, sid)`` of the namespace's indexes, in ``list`` order
    (newest first; ties by member, byte-wise, descending)."""
    pipe = store.client.pipeline(transaction=False)
    for b in range(store.bucket_count):
        pipe.zrange(store.keys.idx(b), 0, -1, withscores=True)
    entries = [(int(score), sid.decode()) for reply in pipe.execute() for sid, score in reply]
    entries.sort(key=lambda e: (e[0], e[1].encode()), reverse=True)
    return entries


def bench_list(client: Any, where: str, prefix: str, n: int, rounds: int) -> dict[str, Any]:
    store = RedisStore(client, prefix=prefix, namespace="list")
    hello = [Message(role="user", content="hello")]
    sids = [f"s{i:07d}" for i in range(n)]
    print(f"  [{where}] loading {n:,} sessions ...", flush=True)
    load_seconds = bulk_save(store, sids, hello)
    counts = [store.count_indexed([b]) for b in range(store.bucket_count)]
    assert sum(counts) == n, f"{sum(counts)} index entries for {n} sessions"
    for sid in sids[:: max(n // 50, 1)]:
        assert store.load(sid) == hello, sid

    ordered = bucket_dump(store)
    pages = (n + LIMIT - 1) // LIMIT
    middle, last = pages // 2, pages - 1
    cursors = {
        "first": None,
        "middle": encode_cursor(*ordered[middle * LIMIT - 1]),
        "last": encode_cursor(*ordered[last * LIMIT - 1]),
    }
    for name, page_no in (("first", 0), ("middle", middle), ("last", last)):
        page = store.list(limit=LIMIT, cursor=cursors[name])
        want = [sid for _, sid in ordered[page_no * LIMIT : (page_no + 1) * LIMIT]]
        assert page.ids == want, f"{where}: the {name} page is not the expected slice"
        assert (page.next_cursor is None) == (name == "last"), name
    del ordered

    indexes = [store.keys.idx(b) for b in range(store.bucket_count)]

    def raw() -> Any:
        pipe = client.pipeline(transaction=False)
        for idx in indexes:
            pipe.zrange(idx, 0, LIMIT, desc=True, withscores=True)
        return pipe.execute()

    ops: dict[str, Callable[[], Any]] = {
        f"raw ZRANGE x{len(indexes)}": raw,
        **{
            f"list {name} page": (lambda c=cursor: store.list(limit=LIMIT, cursor=c))
            for name, cursor in cursors.items()
        },
    }
    with no_gc():
        samples = interleaved(ops, rounds, warmup=max(rounds // 10, 20))
    rows = {name: summary_ns(s) for name, s in samples.items()}
    first = rows["list first page"]["p50_us"]
    result = {
        "sessions": n,
        "buckets": store.bucket_count,
        "per_bucket_min": min(counts),
        "per_bucket_max": max(counts),
        "pages": pages,
        "load_seconds": load_seconds,
        "rows": rows,
        "middle_over_first": rows["list middle page"]["p50_us"] / first,
        "last_over_first": rows["list last page"]["p50_us"] / first,
    }
    removed = delete_prefix(client, prefix)
    print(f"  [{where}] removed {removed:,} keys", flush=True)
    return result


# -- (b) memory per session --------------------------------------------------------------


def conversation(sid: str) -> list[Message]:
    """10 messages of ~200 bytes of content."""
    out = []
    for i in range(10):
        head = f"{sid} turn {i}: "
        text = head + ("lorem ipsum dolor sit amet, consectetur adipiscing elit " * 4)[
            : 200 - len(head)
        ]
        out.append(Message(role="user" if i % 2 == 0 else "assistant", content=text))
    return out


METADATA = FrozenDict({"title": "Booking a table for four", "channel": "web"})
DAY_MS = 86_400_000


def read_sessions(
    client: redis.Redis, store: RedisStore, sids: list[str]
) -> list[tuple[str, dict[bytes, bytes], list[bytes]]]:
    """Each session's hash fields and list entries, as stored."""
    out = []
    for first in range(0, len(sids), 500):
        chunk = sids[first : first + 500]
        pipe = client.pipeline(transaction=False)
        for sid in chunk:
            pipe.hgetall(store.keys.meta(sid))
            pipe.lrange(store.keys.messages(sid), 0, -1)
        replies = pipe.execute()
        out += [(sid, replies[2 * i], replies[2 * i + 1]) for i, sid in enumerate(chunk)]
    return out


def write_old_layout(
    client: redis.Redis, old_root: str, sessions: list[tuple[str, dict[bytes, bytes], list[bytes]]]
) -> None:
    """Sessions in the old layout (``old_root`` = ``P``): the given hash fields,
    entries and expiry under the old key names, indexed in the old (unsharded)
    indexes, by raw commands."""
    for first in range(0, len(sessions), 500):
        write = client.pipeline(transaction=False)
        for sid, fields, entries in sessions[first : first + 500]:
            h, m = f"{old_root}:{{{sid}}}:h", f"{old_root}:{{{sid}}}:m"
            write.hset(h, mapping=fields)  # type: ignore[arg-type]
            write.rpush(m, *entries)
            expires = int(fields[b"expires"])
            write.pexpireat(m, expires)
            write.pexpireat(h, expires)
            updated = int(fields[b"updated"])
            write.zadd(f"{old_root}:idx", {sid: updated})
            write.zadd(f"{old_root}:exp", {sid: expires})
            user = fields[b"user"].decode()
            write.hset(f"{old_root}:own", sid, user)
            write.zadd(f"{old_root}:u:{user}", {sid: updated})
        write.execute()


def memory_of(
    client: redis.Redis, root: str, is_session_key: Callable[[str], bool]
) -> dict[str, int]:
    """``MEMORY USAGE .. SAMPLES 0`` summed over the keys under ``root:``."""
    sizes = {"session_keys": 0, "index_keys": 0, "keys": 0}
    batch: list[bytes] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
        for key, size in zip(batch, pipe.execute(), strict=True):
            kind = "session_keys" if is_session_key(key.decode()) else "index_keys"
            sizes[kind] += int(size)
            sizes["keys"] += 1
        batch.clear()

    for key in client.scan_iter(match=f"{root}:*", count=5000):
        batch.append(key)
        if len(batch) >= 2000:
            flush()
    if batch:
        flush()
    return sizes


def used_memory(client: redis.Redis) -> int:
    """``used_memory`` once every other connection is gone (their buffers freed)."""
    deadline = time.monotonic() + 5
    while int(client.info("clients")["connected_clients"]) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(client.info("memory")["used_memory"])


def bench_memory(url: str, prefix: str, n: int, per_user: int) -> dict[str, Any]:
    """Per-session memory of ``n`` typical sessions, ``per_user`` to a user, both layouts.

    Each layout is built on an emptied private server (``FLUSHALL``), so both
    grow the keyspace from the same size, :data:`REPEATS` times (the median
    ``used_memory`` growth is kept); loading goes through connections closed
    before ``used_memory`` is read (their buffers are not counted).
    """
    client = redis.Redis.from_url(url)
    ns_new, ns_old = f"new{per_user:03d}", f"old{per_user:03d}"
    loader = redis.Redis.from_url(url)
    store = RedisStore(loader, prefix=prefix, namespace=ns_new)
    sids = [f"conv-{uuid.uuid4().hex[:12]}" for _ in range(n)]
    owner = {sid: f"user-{i // per_user:06d}" for i, sid in enumerate(sids)}

    def fresh() -> int:
        client.flushall()
        load_scripts(client)
        loader.connection_pool.disconnect()
        return used_memory(client)

    grown_new, grown_old = [], []
    new = old = {}
    old_root = f"{prefix}:{ns_old}"
    for rep in range(REPEATS):
        base = fresh()
        bulk_save(store, sids, conversation, ttl_ms=DAY_MS, user_of=owner.__getitem__,
                  metadata=METADATA)
        loader.connection_pool.disconnect()
        grown_new.append(used_memory(client) - base)
        if rep == 0:
            for sid in sids[:: max(n // 20, 1)]:
                got = store.get(sid)
                assert got.messages == conversation(sid) and got.user_id == owner[sid], sid
                assert dict(got.metadata) == dict(METADATA), sid
            new = memory_of(client, f"{prefix}:{ns_new}",
                            lambda k: any(f"}}:{t}:" in k for t in "mhx"))
            sessions = read_sessions(loader, store, sids)
        base = fresh()
        write_old_layout(loader, old_root, sessions)
        loader.connection_pool.disconnect()
        grown_old.append(used_memory(client) - base)
        if rep == 0:
            old = memory_of(client, old_root, lambda k: k.endswith(("}:m", "}:h", "}:x")))
    client.flushall()
    assert new["session_keys"] and old["session_keys"]
    loader.close()
    client.close()

    def per_session(sizes: dict[str, int], grown: float) -> dict[str, float]:
        return {
            "session_keys": sizes["session_keys"] / n,
            "indexes": sizes["index_keys"] / n,
            "total": (sizes["session_keys"] + sizes["index_keys"]) / n,
            "keys": sizes["keys"],
            "used_memory_growth": grown / n,
        }

    result = {
        "sessions": n,
        "sessions_per_user": per_user,
        "new": per_session(new, statistics.median(grown_new)),
        "old": per_session(old, statistics.median(grown_old)),
    }
    result["ratio"] = result["new"]["total"] / result["old"]["total"]
    result["used_memory_ratio"] = (
        result["new"]["used_memory_growth"] / result["old"]["used_memory_growth"]
    )
    return result


# -- (c) script durations during maintenance --------------------------------------------


class SlowLog:
    """Drains a private server's slow log into per-phase, per-script figures."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.names = {script_sha(name): name for name in SCRIPTS}
        self.phases: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        self.phase = ""

    def start(self, phase: str) -> None:
        self.client.config_set("slowlog-log-slower-than", SLOWLOG_US)
        self.client.slowlog_reset()
        self.client.config_resetstat()
        self.phase = phase
        self.phases[phase] = {"scripts": {}, "commands": {}}
        self.durations: dict[tuple[int, str], list[float]] = {}

    def drain(self) -> None:
        entries = self.client.slowlog_get(100_000)
        self.client.slowlog_reset()
        scripts, commands = self.phases[self.phase]["scripts"], self.phases[self.phase]["commands"]
        for entry in entries:
            words = entry["command"].split(b" ", 2)
            name = words[0].decode().upper()
            if name in OURS:
                continue
            rows = commands
            if name == "EVALSHA" and len(words) > 1:
                name, rows = self.names.get(words[1].decode(), words[1].decode()[:12]), scripts
            row = rows.setdefault(name, {"max_ms": 0.0, "over_1ms": 0, "over_10ms": 0,
                                         "logged": 0})
            ms = entry["duration"] / 1000
            self.durations.setdefault((id(rows), name), []).append(ms)
            row["max_ms"] = max(row["max_ms"], ms)
            row["over_1ms"] += ms > 1
            row["over_10ms"] += ms > 10
            row["logged"] += 1

    def stop(self) -> dict[str, Any]:
        self.drain()
        stats = self.client.info("commandstats").get("cmdstat_evalsha", {})
        rows = self.phases[self.phase]["scripts"]
        commands = self.phases[self.phase]["commands"]
        for group in (rows, commands):
            for name, row in group.items():
                row["p50_logged_ms"] = percentile(self.durations[(id(group), name)], 0.5)
        return {
            "scripts": rows,
            "max_ms": max((r["max_ms"] for r in rows.values()), default=0.0),
            "commands": commands,
            "max_command_ms": max((r["max_ms"] for r in commands.values()), default=0.0),
            "evalsha_calls": int(stats.get("calls", 0)),
            "evalsha_usec_per_call": float(stats.get("usec_per_call", 0.0)),
        }


def backlog_messages(sid: str) -> list[Message]:
    out = []
    for i in range(12):
        head = f"{sid} turn {i}: "
        out.append(Message(role="user" if i % 2 == 0 else "assistant",
                           content=head + "lorem ipsum dolor sit amet " * 7))
    return out


def until_done(
    step: Callable[[], Any], log: SlowLog, done: Callable[[], bool], cap: int
) -> dict[str, Any]:
    """Call ``step`` until its result says nothing remains, or ``done()``, or ``cap`` calls."""
    calls, ever_clear, started = 0, False, time.perf_counter()
    totals: dict[str, int] = {"changed": 0, "skipped": 0, "repaired": 0, "messages": 0}
    while calls < cap:
        result = step()
        calls += 1
        log.drain()
        for name in totals:
            totals[name] += getattr(result, name)
        if not result.remaining:
            ever_clear = True
            break
        if done():
            break
    return {"calls": calls, "remaining_went_false": ever_clear,
            "seconds": time.perf_counter() - started, **totals}


def bench_scripts(url: str, prefix: str, n: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    log = SlowLog(client)
    out: dict[str, Any] = {"sessions": n, "slowlog_threshold_us": SLOWLOG_US}
    with scratch_database(PG_ADMIN_URL) as db_url:
        engine = sa.create_engine(db_url)
        store = TieredStore.from_clients(redis=client, engine=engine, namespace="upkeep",
                                         prefix=prefix, memory_max_bytes=None)
        hot = store.redis
        assert hot is not None
        sids = [f"b{i:06d}" for i in range(n)]
        doomed, kept = sids[: n // 5], sids[n // 5 :]
        users = {sid: f"user-{i // 10:05d}" for i, sid in enumerate(sids)}
        log.start("load (save)")
        bulk_save(hot, doomed, backlog_messages, ttl_ms=1000, user_of=users.__getitem__)
        bulk_save(hot, kept, backlog_messages, ttl_ms=DAY_MS, user_of=users.__getitem__,
                  metadata=METADATA)
        out["load (save)"] = log.stop()
        time.sleep(1.5)  # the first fifth expires

        log.start("expire")
        laps = Laps(hot, "sweep")
        ran = until_done(lambda: expire(store), log,
                         lambda: laps.lapped and hot.count_expired() == 0, 400)
        out["expire"] = {**log.stop(), **ran, "every_bucket_lapped": laps.lapped}

        log.start("trim")
        tlaps = Laps(hot, "ranked")
        ran = until_done(lambda: trim(store, max_messages=8), log, lambda: tlaps.lapped, 400)
        out["trim"] = {**log.stop(), **ran, "every_bucket_lapped": tlaps.lapped}

        log.start("archive_idle")
        ran = until_done(
            lambda: archive_idle(store, archive_after=0, now=time.time() + 1), log,
            lambda: hot.count_indexed() == 0, 400)
        out["archive_idle"] = {**log.stop(), **ran}
        with engine.connect() as conn:
            archived = conn.execute(sa.text(
                "SELECT count(*) FROM tieredstore_sessions WHERE namespace = 'upkeep'")).scalar()
        out["archived_sessions"] = int(archived or 0)
        out["left_in_redis"] = hot.count_indexed()
        store.close()
        engine.dispose()
    client.close()
    return out


# -- the command ------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    for where in ("standalone", "cluster"):
        part = report["list"][where]
        print(f"(a) list, limit={LIMIT}, {part['sessions']:,} sessions in {part['buckets']} "
              f"buckets ({part['per_bucket_min']:,}..{part['per_bucket_max']:,} each), "
              f"{where}; loaded in {part['load_seconds']:.0f} s")
        base = part["rows"][f"raw ZRANGE x{part['buckets']}"]["p50_us"]
        for name, row in part["rows"].items():
            print(f"  {name:<22} p50 {row['p50_us'] / 1000:7.2f} ms  p99 "
                  f"{row['p99_us'] / 1000:7.2f} ms  {row['p50_us'] / base:5.2f}x raw")
        print(f"  middle/first {part['middle_over_first']:.2f}  "
              f"last/first {part['last_over_first']:.2f}  (limit {PAGE_RATIO})")
    print("(b) Redis memory per session (bytes; MEMORY USAGE of every key, SAMPLES 0)")
    for part in report["memory"]:
        new, old = part["new"], part["old"]
        print(f"  {part['sessions']:,} sessions, {part['sessions_per_user']} per user: "
              f"new {new['total']:,.0f} (keys {new['session_keys']:,.0f} + indexes "
              f"{new['indexes']:,.0f}), old {old['total']:,.0f} (keys "
              f"{old['session_keys']:,.0f} + indexes {old['indexes']:,.0f}): "
              f"{part['ratio']:.3f}x (limit {MEMORY_RATIO}); used_memory growth "
              f"{new['used_memory_growth']:,.0f} vs {old['used_memory_growth']:,.0f} "
              f"({part['used_memory_ratio']:.3f}x)")
    scripts = report["scripts"]
    print(f"(c) Lua scripts during maintenance over {scripts['sessions']:,} sessions "
          f"(slow log from {SLOWLOG_US} µs)")
    for phase in ("load (save)", "expire", "trim", "archive_idle"):
        part = scripts[phase]
        extra = ""
        if "calls" in part:
            extra = (f"; {part['calls']} calls in {part['seconds']:.1f} s, changed "
                     f"{part['changed']:,}, remaining went false: "
                     f"{part['remaining_went_false']}")
        print(f"  {phase:<13} longest script {part['max_ms']:6.2f} ms, EVALSHA mean "
              f"{part['evalsha_usec_per_call']:.0f} µs over {part['evalsha_calls']:,}{extra}")
        print(f"      (longest plain command, inside a script or not: "
              f"{part['max_command_ms']:.2f} ms)")
        for name, row in sorted(part["scripts"].items(), key=lambda kv: -kv[1]["max_ms"]):
            print(f"      {name:<12} max {row['max_ms']:6.2f} ms  >1 ms: {row['over_1ms']:>5}"
                  f"  >10 ms: {row['over_10ms']:>4}  median of the {row['logged']} logged "
                  f"(>{SLOWLOG_US} µs): {row['p50_logged_ms']:.2f} ms")
    print(f"  archived {scripts['archived_sessions']:,}, left in Redis "
          f"{scripts['left_in_redis']:,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--cluster-url", default="redis://127.0.0.1:7000/0",
                        help="any node of the Redis Cluster")
    parser.add_argument("--redis-url", default="127.0.0.1:6379", help="standalone Redis")
    args = parser.parse_args(argv)
    sessions = 100_000 if args.quick else 1_000_000
    rounds = 100 if args.quick else 300
    memory_sessions = 4_000 if args.quick else 20_000
    backlog = 10_000 if args.quick else 50_000
    prefix = f"tsbench-{uuid.uuid4().hex[:10]}"
    started = time.perf_counter()
    report: dict[str, Any] = {"quick": args.quick, "prefix": prefix, "list": {}}

    standalone = redis_client(args.redis_url)
    cluster = cluster_client(args.cluster_url)
    try:
        report["list"]["standalone"] = bench_list(standalone, "standalone", prefix, sessions,
                                                  rounds)
        report["list"]["cluster"] = bench_list(cluster, "cluster", prefix, sessions, rounds)
    finally:
        delete_prefix(standalone, prefix)
        delete_prefix(cluster, prefix)
        report["redis_version"] = standalone.info("server").get("redis_version")
        report["cluster_primaries"] = len(primaries(cluster))
        standalone.close()
        cluster.close()
    with private_redis("--slowlog-log-slower-than", "-1", "--slowlog-max-len", "100000") as url:
        print("  [private] memory ...", flush=True)
        report["memory"] = [bench_memory(url, prefix, memory_sessions, per_user)
                            for per_user in (1, 10)]
        print("  [private] maintenance scripts ...", flush=True)
        report["scripts"] = bench_scripts(url, prefix, backlog)

    checks: dict[str, bool] = {}
    for where, part in report["list"].items():
        checks[f"{where}: list middle/first <= {PAGE_RATIO}"] = (
            part["middle_over_first"] <= PAGE_RATIO)
        checks[f"{where}: list last/first <= {PAGE_RATIO}"] = part["last_over_first"] <= PAGE_RATIO
    for name, row in report["list"]["standalone"]["rows"].items():
        if name.startswith("list"):
            checks[f"standalone: {name} p50 < {STANDALONE_P50_MS} ms"] = (
                row["p50_us"] < STANDALONE_P50_MS * 1000)
    for part in report["memory"]:
        checks[f"memory new/old <= {MEMORY_RATIO} ({part['sessions_per_user']} per user)"] = (
            part["ratio"] <= MEMORY_RATIO)
    report["checks"] = checks
    report["passed"] = all(checks.values())
    report["seconds"] = time.perf_counter() - started

    print_report(report)
    print("acceptance:")
    for name, ok in checks.items():
        print(f"  {'ok    ' if ok else 'FAILED'} {name}")
    print(f"{report['seconds']:.0f} s total")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
