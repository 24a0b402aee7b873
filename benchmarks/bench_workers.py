"""Maintenance workers in parallel, by bucket leases: ``python -m benchmarks.bench_workers``.

(a) ``archive_idle`` by 1, 2 and 4 worker processes on the same backlog,
    20 000 sessions of 5 messages (``--quick``: 4 000), each run on a fresh
    backlog in its own namespace, the archive a scratch PostgreSQL database
    (autovacuum off on its tables, as in ``bench_archive``). Every worker
    calls ``tieredstore.maintenance.archive_idle(store, archive_after=0,
    now=<start + 1 s>)`` (default ``batch_size`` 500, ``max_batches`` 20) in
    a loop until Redis holds no idle session, waiting 5 ms after a call that
    found every bucket leased by the others. The clock runs from the moment
    every worker is ready to the last one's finish. After an unmeasured
    warm-up run, the counts run in rounds (1, 2, 4), (4, 2, 1) and, in a full
    run, (1, 2, 4) again; the median per count is kept. Each worker records
    the sessions it read (``capture_many``), absorbed into the archive
    (``absorb_many``) and evicted (``evict_many``); each run checks that
    every session was evicted exactly once and absorbed by one worker only,
    that the counts (``changed``) add up to the backlog, that the archive
    holds every session once with its 5 messages (a sample compared message
    by message) and that Redis holds none. Sessions read again (a read-ahead
    left unused when a call stops at ``max_batches``) are reported, not
    gated. Reported: sessions/s per worker count and the 2/1 and 4/1 ratios,
    the workers' CPU time and how many cores the whole machine kept busy
    meanwhile (``/proc/stat``: other work on the machine included).
    Acceptance (the setting: see ``--help``): 2 workers at least 1.6x one.
    On a 2-core machine that also runs Redis and PostgreSQL the archive
    shares the workers' cores, so the ratio shows the contention.
(b) ``expire`` lap time over 1 000 000 index entries (``--quick``: 100 000):
    repeated ``expire()`` calls (default limits: ``batch_size`` 1000,
    ``max_batches`` 10) on a Redis-only store until ``remaining`` is false;
    reported are the calls and seconds that took, and the calls until every
    bucket's index had been swept to its end once (seen by wrapping
    ``RedisStore.sweep``). Calls stop at twice the number the whole lap took,
    so a ``remaining`` that never clears ends the run. Acceptance:
    ``remaining`` went false.

Keys live under a unique prefix, removed at the end; the scratch database
is dropped. Results go to ``benchmarks/results/workers.json``; the exit
status is non-zero when an acceptance check fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.common import (
    PG_ADMIN_URL,
    Laps,
    bulk_save,
    delete_prefix,
    redis_client,
    scratch_database,
)
from tieredstore import Message
from tieredstore.maintenance import archive_idle, expire
from tieredstore.store import TieredStore

RESULTS = Path(__file__).parent / "results" / "workers.json"
MESSAGES = 5
WORKER_COUNTS = (1, 2, 4)
ORDERS = ((1, 2, 4), (4, 2, 1), (1, 2, 4))  # rounds (--quick: the first two)
WARMUP = 1_000  # sessions archived once, unmeasured, before the first run
RATIO = 1.6
IDLE_WAIT = 0.005


def conversation(sid: str) -> list[Message]:
    return [
        Message(role="user" if i % 2 == 0 else "assistant",
                content=f"{sid} turn {i}: " + "lorem ipsum dolor sit amet " * 5)
        for i in range(MESSAGES)
    ]


# -- (a) archive_idle by several processes -------------------------------------------------


def machine_cpu() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies of the whole machine (``/proc/stat``), if there is one."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def machine_busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Cores kept busy between two readings, by every process of the machine."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)



def worker(
    redis_url: str, db_url: str, prefix: str, namespace: str, now: float, batch_size: int,
    ready: Any, go: Any, results: Any,
) -> None:
    """One maintenance process: archive_idle in a loop until nothing idle is left."""
    client = redis_client(redis_url)
    engine = sa.create_engine(db_url, pool_size=2)
    store = TieredStore.from_clients(redis=client, engine=engine, namespace=namespace,
                                     prefix=prefix, memory_max_bytes=None)
    hot = store.redis
    assert hot is not None
    archive = store.archive
    assert archive is not None
    read: list[str] = []
    absorbed: list[str] = []
    evicted: list[str] = []
    capture, evict, absorb = hot.capture_many, hot.evict_many, archive.absorb_many

    def capture_many(sids: Any) -> Any:
        out = capture(sids)
        read.extend(cap.sid for cap in out if cap is not None)
        return out

    def evict_many(bucket: int, captured: Any) -> Any:
        out = evict(bucket, captured)
        evicted.extend(cap.sid for cap, gone in zip(captured, out, strict=True) if gone)
        return out

    def absorb_many(prepared: Any) -> Any:
        out = absorb(prepared)
        absorbed.extend(copy.sid for copy, ok in zip(prepared.copies, out, strict=True) if ok)
        return out

    hot.capture_many = capture_many  # type: ignore[method-assign]
    archive.absorb_many = absorb_many  # type: ignore[method-assign]
    hot.evict_many = evict_many  # type: ignore[method-assign]
    with engine.connect():
        pass  # connect before the clock starts
    cutoff = int(now * 1000)
    hot.count_idle(cutoff)
    ready.put(os.getpid())
    go.wait()
    started, cpu = time.perf_counter(), time.process_time()
    totals = {"calls": 0, "idle_calls": 0, "changed": 0, "skipped": 0, "messages": 0,
              "batches": 0}
    while True:
        result = archive_idle(store, archive_after=0, now=now, batch_size=batch_size)
        totals["calls"] += 1
        for name in ("changed", "skipped", "messages", "batches"):
            totals[name] += getattr(result, name)
        if not result.remaining and hot.count_idle(cutoff) == 0:
            break
        if result.scanned == 0:
            totals["idle_calls"] += 1
            time.sleep(IDLE_WAIT)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    results.put({"pid": os.getpid(), "seconds": elapsed, "cpu_seconds": cpu, **totals,
                 "read": read, "absorbed": absorbed,
                 "evicted": evicted})
    store.close()
    engine.dispose()
    client.close()


def archive_run(
    redis_url: str, db_url: str, engine: sa.Engine, prefix: str, workers: int, backlog: int,
    batch_size: int, label: str,
) -> dict[str, Any]:
    namespace = f"arch-{label}"
    client = redis_client(redis_url)
    loader = TieredStore.from_clients(redis=client, engine=engine, namespace=namespace,
                                      prefix=prefix, memory_max_bytes=None)
    hot = loader.redis
    assert hot is not None
    sids = [f"{label}-{i:06d}" for i in range(backlog)]
    bulk_save(hot, sids, conversation)
    assert hot.count_indexed() == backlog
    now = time.time() + 1

    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=worker, args=(redis_url, db_url, prefix, namespace, now, batch_size,
                                         ready, go, results))
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        cpu_before = machine_cpu()
        started = time.perf_counter()
        go.set()
        reports = [results.get(timeout=600) for _ in procs]
        wall = time.perf_counter() - started
        busy = machine_busy(cpu_before, machine_cpu())
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    # -- exactly once -----------------------------------------------------------------
    def twice(lists: list[list[str]]) -> tuple[int, int]:
        """(sessions in the lists of two workers, repeats within one worker's list)."""
        sets = [set(items) for items in lists]
        across = sum(len(a & b) for a, b in itertools.combinations(sets, 2))
        return across, sum(len(items) - len(set(items)) for items in lists)

    evicted = [r["evicted"] for r in reports]
    evicted_across, evicted_within = twice(evicted)
    absorbed_across, absorbed_within = twice([r["absorbed"] for r in reports])
    read_across, read_within = twice([r["read"] for r in reports])
    checks = {
        "changed adds up to the backlog": sum(r["changed"] for r in reports) == backlog,
        "no session evicted twice": evicted_across == evicted_within == 0,
        "every session evicted": set().union(*map(set, evicted)) == set(sids),
        "no session absorbed by two workers": absorbed_across == 0,
        "nothing skipped": sum(r["skipped"] for r in reports) == 0,
        "Redis holds none": hot.count_indexed() == 0 and not any(
            hot.exists_many(sids[:: max(backlog // 200, 1)])),
    }
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT session_id), coalesce(sum(message_count), 0) "
            "FROM tieredstore_sessions WHERE namespace = :ns"), {"ns": namespace}).one()
        messages = conn.execute(sa.text(
            "SELECT count(*) FROM tieredstore_messages WHERE namespace = :ns"),
            {"ns": namespace}).scalar()
        uneven = conn.execute(sa.text(
            "SELECT count(*) FROM (SELECT session_id FROM tieredstore_messages "
            "WHERE namespace = :ns GROUP BY session_id HAVING count(*) <> :n) AS odd"),
            {"ns": namespace, "n": MESSAGES}).scalar()
    checks["archive holds every session once"] = row[0] == row[1] == backlog
    checks["archive holds every message"] = (
        int(row[2]) == messages == backlog * MESSAGES and uneven == 0)
    checks["sampled sessions read back whole"] = all(
        loader.load(sid) == conversation(sid) for sid in sids[:: max(backlog // 50, 1)])
    loader.close()
    client.close()
    return {
        "workers": workers,
        "sessions": backlog,
        "seconds": wall,
        "sessions_per_second": backlog / wall,
        "per_worker": [
            {k: v for k, v in r.items() if k not in ("read", "absorbed", "evicted")}
            | {"evicted": len(r["evicted"]), "absorbed": len(r["absorbed"]),
               "read": len(r["read"])}
            for r in reports
        ],
        "worker_cpu_seconds": sum(r["cpu_seconds"] for r in reports),
        "machine_busy_cores": busy,
        "twice": {
            "evicted_by_two_workers": evicted_across,
            "absorbed_by_two_workers": absorbed_across,
            "absorbed_again_by_one_worker": absorbed_within,
            "read_by_two_workers": read_across,
            "read_again_by_one_worker": read_within,
        },
        "checks": checks,
    }


# -- (b) an expire lap ---------------------------------------------------------------------


def expire_lap(redis_url: str, prefix: str, entries: int) -> dict[str, Any]:
    client = redis_client(redis_url)
    store = TieredStore.from_clients(redis=client, namespace="lap", prefix=prefix,
                                     memory_max_bytes=None)
    hot = store.redis
    assert hot is not None
    hello = [Message(role="user", content="hello")]
    print(f"  loading {entries:,} sessions ...", flush=True)
    load_seconds = bulk_save(hot, [f"l{i:07d}" for i in range(entries)], hello)
    assert hot.count_indexed() == entries
    laps = Laps(hot, "sweep")
    calls, lap_calls, lap_seconds, cleared = 0, None, None, False
    hard_cap = 20 * entries // 10_000 + 100
    started = time.perf_counter()
    per_call: list[float] = []
    while True:
        t0 = time.perf_counter()
        result = expire(store)
        per_call.append(time.perf_counter() - t0)
        calls += 1
        if lap_calls is None and laps.lapped:
            lap_calls, lap_seconds = calls, time.perf_counter() - started
        if not result.remaining:
            cleared = True
            break
        if lap_calls is not None and calls >= 2 * lap_calls:
            break
        if calls >= hard_cap:  # some bucket never reached its end
            break
    seconds = time.perf_counter() - started
    budget = 1000 * 10
    store.close()
    client.close()
    return {
        "entries": entries,
        "load_seconds": load_seconds,
        "calls": calls,
        "seconds": seconds,
        "remaining_went_false": cleared,
        "calls_until_every_bucket_lapped": lap_calls,
        "seconds_until_every_bucket_lapped": lap_seconds,
        "entries_swept_until_lapped": (lap_calls or 0) * budget,
        "sweep_scripts": laps.calls,
        "seconds_per_call_p50": sorted(per_call)[len(per_call) // 2],
        "seconds_per_call_max": max(per_call),
    }


# -- the command ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--redis-url", default="127.0.0.1:6379", help="standalone Redis")
    parser.add_argument("--batch-size", type=int, default=500,
                        help="archive_idle's batch_size (its default: 500)")
    args = parser.parse_args(argv)
    backlog = 4_000 if args.quick else 20_000
    entries = 100_000 if args.quick else 1_000_000
    prefix = f"tsbench-{uuid.uuid4().hex[:10]}"
    started = time.perf_counter()
    admin = redis_client(args.redis_url)
    report: dict[str, Any] = {"quick": args.quick, "batch_size": args.batch_size,
                              "cores": os.cpu_count(), "runs": []}
    try:
        with scratch_database(PG_ADMIN_URL) as db_url:
            engine = sa.create_engine(db_url)
            with engine.begin() as conn:  # no ANALYZE landing inside one run only
                for table in ("tieredstore_sessions", "tieredstore_messages"):
                    conn.execute(sa.text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
            print("  warm-up run ...", flush=True)
            archive_run(args.redis_url, db_url, engine, prefix, 1, WARMUP, args.batch_size,
                        "warmup")
            orders = ORDERS[: 2 if args.quick else 3]
            for round_, order in enumerate(orders):
                for workers in order:
                    print(f"  round {round_ + 1}/{len(orders)}: archive_idle, {workers} "
                          f"worker(s), {backlog:,} sessions ...", flush=True)
                    report["runs"].append(archive_run(
                        args.redis_url, db_url, engine, prefix, workers, backlog,
                        args.batch_size, f"w{workers}r{round_}"))
            engine.dispose()
        report["expire"] = expire_lap(args.redis_url, prefix, entries)
    finally:
        report["removed_keys"] = delete_prefix(admin, prefix)
        admin.close()

    rate = {
        count: statistics.median(
            r["sessions_per_second"] for r in report["runs"] if r["workers"] == count)
        for count in WORKER_COUNTS
    }
    report["sessions_per_second"] = rate
    report["ratio_2_over_1"] = rate[2] / rate[1]
    report["ratio_4_over_1"] = rate[4] / rate[1]
    checks: dict[str, bool] = {}
    for run in report["runs"]:
        for name, ok in run["checks"].items():
            key = f"{run['workers']} worker(s): {name}"
            checks[key] = checks.get(key, True) and ok
    checks[f"2 workers >= {RATIO}x 1 worker"] = report["ratio_2_over_1"] >= RATIO
    checks["expire: remaining went false"] = report["expire"]["remaining_went_false"]
    report["checks"] = checks
    report["passed"] = all(checks.values())
    report["seconds"] = time.perf_counter() - started

    print(f"(a) archive_idle, {backlog:,} sessions of {MESSAGES} messages, batch_size "
          f"{args.batch_size}, {os.cpu_count()} cores (Redis and PostgreSQL on the same)")
    for run in report["runs"]:
        calls = ", ".join(f"{w['calls']} calls ({w['idle_calls']} idle) {w['evicted']:,}"
                          for w in run["per_worker"])
        busy = run["machine_busy_cores"]
        twice = run["twice"]
        print(f"  {run['workers']} worker(s): {run['sessions_per_second']:8,.0f} sessions/s "
              f"({run['seconds']:.1f} s); workers' CPU {run['worker_cpu_seconds']:.1f} s, "
              f"machine busy {busy if busy is not None else float('nan'):.2f} cores; "
              f"evicted/absorbed by two workers {twice['evicted_by_two_workers']}/"
              f"{twice['absorbed_by_two_workers']}; read again (unused read-ahead) "
              f"{twice['read_again_by_one_worker'] + twice['read_by_two_workers']}")
        print(f"      sessions evicted per worker: {calls}")
    print("  median sessions/s: " + ", ".join(
        f"{count} worker(s) {value:,.0f}" for count, value in rate.items()))
    print(f"  2/1 workers {report['ratio_2_over_1']:.2f}x (acceptance >= {RATIO}), "
          f"4/1 workers {report['ratio_4_over_1']:.2f}x")
    lap = report["expire"]
    print(f"(b) expire over {lap['entries']:,} index entries (default limits): "
          f"{lap['calls']} calls in {lap['seconds']:.1f} s, remaining went false: "
          f"{lap['remaining_went_false']}; every bucket swept to its end after "
          f"{lap['calls_until_every_bucket_lapped']} calls "
          f"({lap['seconds_until_every_bucket_lapped'] or 0:.1f} s, "
          f"{lap['entries_swept_until_lapped']:,} entries swept); per call p50 "
          f"{lap['seconds_per_call_p50'] * 1000:.0f} ms, max "
          f"{lap['seconds_per_call_max'] * 1000:.0f} ms")
    print("acceptance:")
    for name, ok in checks.items():
        print(f"  {'ok    ' if ok else 'FAILED'} {name}")
    print(f"{report['seconds']:.0f} s total; removed {report['removed_keys']:,} keys")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
