"""``archive_idle`` throughput against raw psycopg COPY: ``python -m benchmarks.bench_archive``.

Each round fills Redis with fresh sessions of 20 messages through the store,
then measures, in alternating order:

* **archive_idle**: Redis → PostgreSQL end to end (idle scan, atomic read of
  each batch, one archive transaction per batch, compare-and-delete from
  Redis), in sessions per second;
* **raw COPY**: the very same session and message rows, built beforehand
  (not timed), written with psycopg ``COPY`` into the archive's own tables
  (partitioned, every index live) under another namespace, one transaction
  per batch of the same size.

Both sides run with the cyclic GC paused (as the other benchmarks do).
Acceptance: median archive_idle throughput at least 0.5x the median raw COPY
throughput. Runs on a scratch database (created and dropped) and a unique
Redis prefix (removed at the end). :mod:`benchmarks.bench_scale` runs the
same comparison on an archive of ten million messages.
Results go to ``benchmarks/results/archive.json``; ``--quick`` is a smaller run.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis
import sqlalchemy as sa

from benchmarks.common import PG_ADMIN_URL, REDIS_URL, scratch_database
from tieredstore.maintenance import archive_idle
from tieredstore.policy import message_kind
from tieredstore.store import TieredStore
from tieredstore.tiers.archive.partitions import month_of

RESULTS = Path(__file__).parent / "results" / "archive.json"
MESSAGES = 20
THRESHOLD = 0.5

_SESSION_COLUMNS = ("namespace", "session_id", "user_id", "metadata", "created_ms",
                    "updated_ms", "expires_ms", "ttl_ms", "version", "message_count",
                    "next_seq", "base_seq", "lead", "month")
_MESSAGE_COLUMNS = ("namespace", "session_id", "seq", "month", "created_ms", "role", "kind",
                    "payload", "content_text")
_MESSAGE_TYPES = ("text", "text", "int8", "int4", "int8", "text", "text", "bytea", "text")


def conversation(sid: str) -> list[dict[str, Any]]:
    """20 chat messages of typical size (60-200 bytes of text each)."""
    out: list[dict[str, Any]] = []
    for i in range(MESSAGES):
        role = "user" if i % 2 == 0 else "assistant"
        text = f"{sid} turn {i}: " + "lorem ipsum dolor sit amet " * (2 + (i * 7) % 6)
        out.append({"role": role, "content": text})
    return out


def raw_rows(namespace: str, sids: list[str], stamp: int) -> tuple[list[tuple[Any, ...]],
                                                                  list[tuple[Any, ...]]]:
    """The session and message rows archive_idle writes for these sessions."""
    sessions: list[tuple[Any, ...]] = []
    messages: list[tuple[Any, ...]] = []
    month = month_of(stamp)
    for sid in sids:
        convo = conversation(sid)
        sessions.append((namespace, sid, None, "{}", stamp, stamp, None, None, 1, MESSAGES,
                         MESSAGES, 0, 0, month))
        for seq, message in enumerate(convo):
            messages.append((namespace, sid, seq, month, stamp, message["role"],
                             message_kind(message), orjson.dumps(message), ""))
    return sessions, messages


def quiet_tables(dsn: str) -> None:
    """Autovacuum off on every table the run writes (both sides alike), so a
    background ANALYZE does not land inside one measurement."""
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'tieredstore_messages'::regclass").fetchall()
        for (table,) in [("tieredstore_sessions",), *tables]:
            conn.execute(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')


def raw_copy(dsn: str, sessions: list[tuple[Any, ...]], messages: list[tuple[Any, ...]],
             batch_size: int, per_session: int = MESSAGES) -> float:
    """Seconds to COPY the rows into the archive's tables, one transaction per
    ``batch_size`` sessions of ``per_session`` messages."""
    with psycopg.connect(dsn) as conn, no_gc():
        started = time.perf_counter()
        for first in range(0, len(sessions), batch_size):
            with conn.cursor() as cur:
                with cur.copy(f"COPY tieredstore_sessions ({', '.join(_SESSION_COLUMNS)}) "
                              "FROM STDIN") as copy:
                    for row in sessions[first : first + batch_size]:
                        copy.write_row(row)
                with cur.copy(f"COPY tieredstore_messages ({', '.join(_MESSAGE_COLUMNS)}) "
                              "FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(_MESSAGE_TYPES)
                    rows = messages[first * per_session : (first + batch_size) * per_session]
                    for row in rows:
                        copy.write_row(row)
            conn.commit()
        return time.perf_counter() - started


def fill(store: TieredStore, sids: list[str]) -> None:
    for sid in sids:
        store.save(sid, conversation(sid))


@contextmanager
def no_gc() -> Iterator[None]:
    """Time without the cyclic GC (both sides alike): the rows kept for the baseline
    would otherwise make every full collection walk a few hundred thousand tuples."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def time_archive(store: TieredStore, batch_size: int, expected: int) -> float:
    """Seconds for archive_idle to move every session of the round."""
    with no_gc():
        started = time.perf_counter()
        result = archive_idle(store, archive_after=0, now=time.time() + 1,
                              batch_size=batch_size, max_batches=None)
        elapsed = time.perf_counter() - started
    assert result.changed == expected, result
    return elapsed


def run(quick: bool) -> dict[str, Any]:
    sessions_per_round = 2000 if quick else 10000
    rounds = 3 if quick else 5
    batch_size = 500
    prefix = f"tsbench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    results: list[dict[str, float]] = []
    try:
        with scratch_database(PG_ADMIN_URL) as url:
            dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(
                hide_password=False)
            quiet_tables(dsn)
            engine = sa.create_engine(url)
            for round_ in range(rounds):
                namespace = f"bench{round_}"
                store = TieredStore.from_clients(redis=client, engine=engine,
                                                 namespace=namespace, prefix=prefix,
                                                 memory_max_bytes=None)
                sids = [f"s{round_}-{i:06d}" for i in range(sessions_per_round)]
                fill(store, sids)
                sessions, messages = raw_rows(f"raw{round_}", sids, int(time.time() * 1000))
                with engine.begin() as conn:  # both sides write into empty tables
                    conn.execute(sa.text("TRUNCATE tieredstore_messages, tieredstore_sessions"))
                timings: dict[str, float] = {}
                steps = ["archive", "baseline"] if round_ % 2 == 0 else ["baseline", "archive"]
                for step in steps:
                    gc.collect()
                    if step == "archive":
                        timings["archive_idle"] = time_archive(store, batch_size,
                                                               sessions_per_round)
                    else:
                        timings["raw_copy"] = raw_copy(dsn, sessions, messages, batch_size)
                results.append({name: sessions_per_round / seconds
                                for name, seconds in timings.items()})
                store.close()
                print(f"round {round_ + 1}/{rounds}: " + ", ".join(
                    f"{k} {v:,.0f} sessions/s" for k, v in results[-1].items()), flush=True)
            engine.dispose()
    finally:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()
    medians = {name: statistics.median(r[name] for r in results) for name in results[0]}
    return {
        "quick": quick,
        "sessions_per_round": sessions_per_round,
        "messages_per_session": MESSAGES,
        "batch_size": batch_size,
        "rounds": results,
        "sessions_per_second": medians,
        "ratio": medians["archive_idle"] / medians["raw_copy"],
        "threshold": THRESHOLD,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (for CI)")
    args = parser.parse_args()
    report = run(args.quick)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    rates = report["sessions_per_second"]
    print(f"archive_idle        {rates['archive_idle']:>10,.0f} sessions/s (20 messages each)")
    print(f"raw COPY            {rates['raw_copy']:>10,.0f} sessions/s (the archive's tables)")
    print(f"ratio               {report['ratio']:>10.2f} (acceptance: >= {THRESHOLD})")
    if report["ratio"] < THRESHOLD:
        print("FAIL: archive_idle is below half the raw COPY baseline", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
