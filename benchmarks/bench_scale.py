"""The archive at scale: ``python -m benchmarks.bench_scale [--quick] [--messages N]``.

On a scratch PostgreSQL database (created with a unique name, dropped at the
end unless ``--keep``) it:

1. fills the archive with 10 000 000 messages (``--quick``: 300 000) by
   ``COPY`` into the project's own partitioned schema
   (:mod:`benchmarks.scale_data`: twelve months of support conversations);
2. reports bytes per message against the payload bytes: the message rows
   with every index on them (the target), and with the sessions table too;
3. times, as p50/p95 over repeated calls: ``load``, ``load(last=20)``,
   ``list(user_id=...)``, ``ArchiveQuery.sessions(user_id=...)``, and the
   first search page for 24 queries (very common, common, mid-frequency and
   rare words, prefixes, phrases, an exclusion, an alternative; the first
   twelve also with a user filter), with the plan each took, and prints
   ``EXPLAIN (ANALYZE, BUFFERS)`` of the slowest;
4. compares ``archive_idle`` (Redis to this archive) with a raw ``COPY`` of
   the same rows into the same tables, in sessions per second;
5. drops the oldest month through ``retain``'s own drop and times it.

Targets (printed, and the exit status with ``--check``): every query's p95
at most 100 ms, a message row with its indexes at most 2x its payload
bytes, archive_idle at least half the raw COPY rate, the month dropped in
under a second. Results
go to ``benchmarks/results/scale.json``. A full run takes about 40 minutes
on two cores, most of it generating and indexing the data.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from benchmarks.bench_archive import conversation, fill, quiet_tables, raw_copy, raw_rows
from benchmarks.bench_archive import time_archive as archive_seconds
from benchmarks.common import PG_ADMIN_URL, REDIS_URL, delete_prefix, percentile, scratch_database
from benchmarks.scale_data import NAMESPACE, PHRASE, RARE, Filled
from benchmarks.scale_data import fill as fill_archive
from tieredstore.query import ArchiveQuery
from tieredstore.schema import MESSAGES, SESSIONS
from tieredstore.store import TieredStore
from tieredstore.tiers.archive import ArchiveStore

RESULTS = Path(__file__).parent / "results" / "scale.json"
P95_LIMIT_MS = 100.0
BYTES_LIMIT = 2.0
ARCHIVE_RATIO = 0.5
DROP_LIMIT_S = 1.0


def timed(call: Callable[[], Any], rounds: int) -> list[float]:
    """Milliseconds of each of ``rounds`` calls, after one warm-up call."""
    call()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def stats(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(samples), 2),
            "p95_ms": round(percentile(samples, 0.95), 2), "n": len(samples)}


def sizes(engine: sa.Engine, messages: int) -> dict[str, Any]:
    """Bytes per message: each partition's heap and indexes, the sessions table, the payload."""
    with engine.connect() as conn:
        parts = conn.execute(sa.text(
            "SELECT coalesce(sum(pg_relation_size(c.oid)), 0), "
            "coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:t AS regclass)"),
            {"t": MESSAGES}).one()
        indexes = conn.execute(sa.text(
            "SELECT regexp_replace(ix.relname, '^tieredstore_messages_m[0-9]+_', ''), "
            "sum(pg_relation_size(x.indexrelid)) FROM pg_inherits i "
            "JOIN pg_index x ON x.indrelid = i.inhrelid JOIN pg_class ix ON ix.oid = x.indexrelid "
            "WHERE i.inhparent = CAST(:t AS regclass) GROUP BY 1"), {"t": MESSAGES}).all()
        sessions = conn.execute(sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
                                {"t": SESSIONS}).scalar_one()
        payload = conn.execute(sa.text(f"SELECT avg(length(payload)) FROM {MESSAGES}")).scalar()
    own = int(parts[1]) / messages  # the message rows and every index on them
    per_message = (int(parts[1]) + int(sessions)) / messages
    return {
        "payload_bytes_per_message": round(float(payload), 1),
        "message_bytes_per_message": round(own, 1),
        "message_ratio_to_payload": round(own / float(payload), 3),
        "bytes_per_message": round(per_message, 1),
        "ratio_to_payload": round(per_message / float(payload), 3),
        "per_message": {"heap": round(int(parts[0]) / messages, 1),
                        **{name: round(int(size) / messages, 1) for name, size in indexes},
                        "sessions_table": round(int(sessions) / messages, 1)},
    }


def query_set(words: list[str]) -> list[str]:
    """24 queries: word ``words[i]`` has Zipf rank ``i + 1`` (see benchmarks.scale_data)."""
    tail = words[300:]
    return [
        "please", "order", "refund", "warranty", "subscription",  # very common to common
        "refu*", "pass*", f'"{PHRASE}"', '"please order"', "please -order",
        "refund OR invoice", RARE[0],
        tail[200], tail[2000], tail[8000], tail[20000],  # mid-frequency to rare
        f"{tail[20]} {tail[40]}", f"{tail[500][:4]}*", f'"{tail[10]} {tail[11]}"',
        RARE[1], f"{RARE[2]} OR {RARE[3]}", f"{RARE[4]} please",
        '"order account"', "voucher -please",
    ]


def bench_reads(engine: sa.Engine, filled: Filled, rounds: int, rng: random.Random
                ) -> dict[str, Any]:
    store = ArchiveStore(engine, namespace=NAMESPACE)
    query = ArchiveQuery(engine, namespace=NAMESPACE)
    out: dict[str, Any] = {}
    try:
        sids = rng.sample(filled.session_ids, rounds)
        users = rng.sample(filled.users, rounds)
        it = iter(range(10**9))

        def each(fn: Callable[[int], Any]) -> Callable[[], Any]:
            return lambda: fn(next(it) % rounds)

        out["load"] = stats(timed(each(lambda i: store.load(sids[i])), rounds))
        out["load_last_20"] = stats(timed(each(lambda i: store.load(sids[i], last=20)), rounds))
        out["list_by_user"] = stats(timed(each(lambda i: store.list(user_id=users[i],
                                                                       limit=20)), rounds))
        out["sessions_by_user"] = stats(timed(each(lambda i: query.sessions(user_id=users[i],
                                                                              limit=20)), rounds))
        searches = []
        texts = query_set(filled.words)
        for n, text in enumerate(texts):
            for filters in ({}, {"user_id": users[n % len(users)]}) if n < 12 else ({},):
                samples = timed(lambda t=text, f=filters: query.search(t, limit=20, **f),
                                max(5, rounds // 20))
                page = query.search(text, limit=20, **filters)
                searches.append({"query": text, "filters": filters, "plan": query.last_plan,
                                 "hits": len(page.hits), "more": page.next_cursor is not None,
                                 **stats(samples)})
        out["search"] = searches
        slowest = max(searches, key=lambda s: s["p95_ms"])
        out["slowest_search"] = {**slowest, "explain": query.explain(slowest["query"],
                                                                       **slowest["filters"])}
    finally:
        store.close()
        query.close()
    return out


def bench_archival(engine: sa.Engine, url: str, sessions: int) -> dict[str, Any]:
    """archive_idle and a raw COPY of the same rows into the big archive, alternated."""
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    quiet_tables(dsn)
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"tsbench-{uuid.uuid4().hex[:8]}"
    rates: dict[str, list[float]] = {"archive_idle": [], "raw_copy": []}
    try:
        for round_ in range(2):
            store = TieredStore.from_clients(redis=client, engine=engine,
                                             namespace=f"arch{round_}", prefix=prefix,
                                             memory_max_bytes=None)
            sids = [f"a{round_}-{i:06d}" for i in range(sessions)]
            fill(store, sids)
            rows = raw_rows(f"copy{round_}", sids, int(time.time() * 1000))
            steps = ["archive", "copy"] if round_ == 0 else ["copy", "archive"]
            for step in steps:
                if step == "archive":
                    rates["archive_idle"].append(
                        sessions / archive_seconds(store, 500, sessions))
                else:
                    rates["raw_copy"].append(sessions / raw_copy(dsn, *rows, 500))
            store.close()
    finally:
        delete_prefix(client, prefix)
        client.close()
    medians = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    return {"sessions": sessions, "messages_per_session": len(conversation("x")),
            "sessions_per_second": medians,
            "ratio": round(medians["archive_idle"] / medians["raw_copy"], 3)}


def bench_drop(engine: sa.Engine, filled: Filled) -> dict[str, Any]:
    """Drop the oldest month as ``retain`` does (all its sessions are past retention)."""
    store = ArchiveStore(engine, namespace=NAMESPACE)
    try:
        oldest = store.partitions()[0]
        started = time.perf_counter()
        dropped = store.drop_month(oldest, cutoff_ms=int(time.time() * 1000))
        seconds = time.perf_counter() - started
    finally:
        store.close()
    if dropped is None:
        return {"partition": oldest.name, "dropped": False}
    return {"partition": dropped.name, "dropped": True, "sessions": dropped.sessions,
            "messages": dropped.messages, "seconds": round(seconds, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 000 messages (for CI)")
    parser.add_argument("--messages", type=int, default=None, help="messages to generate")
    parser.add_argument("--rounds", type=int, default=None, help="samples per read (p50/p95)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    total = args.messages or (300_000 if args.quick else 10_000_000)
    rounds = args.rounds or (100 if args.quick else 200)
    rng = random.Random(3)
    report: dict[str, Any] = {"messages": total}
    with scratch_database(PG_ADMIN_URL) as url:
        engine = sa.create_engine(url)
        try:
            filled = fill_archive(engine, total)
            report["fill_seconds"] = filled.seconds
            report["sessions"] = filled.sessions
            with ArchiveStore(engine, namespace=NAMESPACE) as archive:
                report["partitions"] = len(archive.partitions())
            print(f"filled {filled.messages:,} messages in {filled.sessions:,} sessions "
                  f"({report['partitions']} partitions) in {filled.seconds} s", flush=True)
            report["size"] = sizes(engine, filled.messages)
            print(json.dumps(report["size"]), flush=True)
            report["reads"] = bench_reads(engine, filled, rounds, rng)
            report["archival"] = bench_archival(engine, url, 1000 if args.quick else 4000)
            report["drop_month"] = bench_drop(engine, filled)
        finally:
            engine.dispose()
    failures = check(report)
    report["failures"] = failures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    show(report)
    return 1 if failures and args.check else 0


def check(report: dict[str, Any]) -> list[str]:
    failures = []
    for search in report["reads"]["search"]:
        if search["p95_ms"] > P95_LIMIT_MS:
            failures.append(f"search {search['query']!r} {search['filters']}: "
                            f"p95 {search['p95_ms']} ms > {P95_LIMIT_MS} ms")
    for name in ("load", "load_last_20", "list_by_user", "sessions_by_user"):
        if report["reads"][name]["p95_ms"] > P95_LIMIT_MS:
            failures.append(f"{name}: p95 {report['reads'][name]['p95_ms']} ms")
    if report["size"]["message_ratio_to_payload"] > BYTES_LIMIT:
        failures.append(f"{report['size']['message_ratio_to_payload']}x the payload bytes per "
                        f"message > {BYTES_LIMIT}x")
    if report["archival"]["ratio"] < ARCHIVE_RATIO:
        failures.append(f"archive_idle at {report['archival']['ratio']} of raw COPY")
    drop = report["drop_month"]
    if not drop["dropped"] or drop["seconds"] > DROP_LIMIT_S:
        failures.append(f"dropping a month: {drop}")
    return failures


def show(report: dict[str, Any]) -> None:
    reads, size = report["reads"], report["size"]
    print(f"\n{report['messages']:,} messages, {report['sessions']:,} sessions, "
          f"{report['partitions']} partitions")
    print(f"bytes per message: {size['message_bytes_per_message']} with its indexes = "
          f"{size['message_ratio_to_payload']}x the payload ({size['payload_bytes_per_message']});"
          f" {size['bytes_per_message']} = {size['ratio_to_payload']}x with the sessions table "
          f"too; {size['per_message']}")
    for name in ("load", "load_last_20", "list_by_user", "sessions_by_user"):
        print(f"{name:18} p50 {reads[name]['p50_ms']:7.2f} ms  p95 {reads[name]['p95_ms']:7.2f} ms")
    print(f"{'query':34} {'filter':24} {'plan':10} {'hits':>4} {'p50':>8} {'p95':>8}")
    for s in reads["search"]:
        user = s["filters"].get("user_id", "")
        print(f"{s['query']:34.34} {user:24} {s['plan']:10} {s['hits']:>4}"
              f"{'+' if s['more'] else ' '} {s['p50_ms']:7.1f} {s['p95_ms']:7.1f}")
    arch = report["archival"]
    print(f"archive_idle {arch['sessions_per_second']['archive_idle']:,} sessions/s, raw COPY "
          f"{arch['sessions_per_second']['raw_copy']:,} sessions/s: ratio {arch['ratio']}")
    print(f"drop of the oldest month: {report['drop_month']}")
    slow = reads["slowest_search"]
    print(f"\nslowest query {slow['query']!r} {slow['filters']} (p95 {slow['p95_ms']} ms):\n"
          f"{slow['explain']}")
    for failure in report["failures"]:
        print("MISSED:", failure)


if __name__ == "__main__":
    sys.exit(main())
