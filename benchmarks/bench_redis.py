"""RedisStore against raw redis-py, on a real Redis: ``python -m benchmarks.bench_redis``.

Measures, with percentiles and ratios:

(a) ``append`` and ``load(last=20)`` on a 10-message and on a 10 000-message
    session (each history held at its size by ``max_messages``, so every append
    also trims), next to raw redis-py round trips measured in the same run
    (``PING``, ``RPUSH`` of one entry, ``LRANGE -20 -1``). Acceptance: the big
    session costs at most 1.2x the small one (p50). Also shown: ``snapshot``
    (what ``TieredStore`` reads) and an append whose trim spills. It also
    checks that each operation (append, load, snapshot, history page) is
    exactly one round trip: one ``EVALSHA`` per call in ``INFO commandstats``
    and one command sent by the client.
(b) ``list`` over 100 000 sessions: the first page against the last page
    (keyset pagination over the namespace's buckets, one pipelined script per
    bucket; acceptance: last/first p50 at most 2), next to raw ``ZRANGE``
    reads of one bucket's index and of every bucket's index in one pipeline.
    A page must be one round trip: one pipeline of one ``EVALSHA`` per bucket.

Everything lives under a unique key prefix, removed at the end. Results go to
``benchmarks/results/redis.json``; the exit status is non-zero when an
acceptance check fails. ``--quick`` runs a smaller version (for CI). The Redis
server should be otherwise idle while this runs (commandstats are global).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import bulk_save, interleaved, no_gc
from benchmarks.common import summary_ns as summary
from tieredstore import Message, RedisStore
from tieredstore.codec import encode_entry, encode_json
from tieredstore.tiers.redis import SCRIPTS

RESULTS = Path(__file__).parent / "results" / "redis.json"


class CommandCounter:
    """Counts the round trips a client makes: commands sent alone, and pipelines."""

    def __init__(self, client: redis.Redis) -> None:
        self.count = 0
        original: Callable[..., Any] = client.execute_command
        make_pipeline: Callable[..., Any] = client.pipeline

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = make_pipeline(*args, **kwargs)
            execute: Callable[..., Any] = pipe.execute

            def counted(*a: Any, **k: Any) -> Any:
                self.count += 1
                return execute(*a, **k)

            pipe.execute = counted
            return pipe

        client.execute_command = counting  # type: ignore[method-assign]
        client.pipeline = pipeline  # type: ignore[method-assign]


def evalsha_calls(admin: redis.Redis) -> int:
    stats = admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def round_trips(
    admin: redis.Redis,
    counter: CommandCounter,
    op: Callable[[], Any],
    times: int,
    scripts: int = 1,
) -> dict[str, float]:
    """EVALSHAs seen by the server and round trips made by the client, per call
    of ``op`` (which should run ``scripts`` scripts)."""
    for _attempt in range(3):  # a concurrent EVALSHA from elsewhere would skew one try
        before_server, before_client = evalsha_calls(admin), counter.count
        for _ in range(times):
            op()
        server = evalsha_calls(admin) - before_server
        client = counter.count - before_client
        if server == times * scripts:
            break
    return {
        "evalsha_per_op": server / times,
        "commands_per_op": client / times,
        "expected_evalsha": scripts,
    }


def message(i: int) -> Message:
    role = "assistant" if i % 2 else "user"
    return Message(role=role, content=f"message {i}: " + "lorem ipsum dolor sit amet " * 3)


def bench_ops(url: str, prefix: str, rounds: int, admin: redis.Redis) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    counter = CommandCounter(client)
    small = RedisStore(client, prefix=prefix, namespace="ops", max_messages=10)
    big = RedisStore(client, prefix=prefix, namespace="ops", max_messages=10_000)
    spilling = RedisStore(
        client, prefix=prefix, namespace="ops-spill", max_messages=10_000, spill=True
    )
    small.save("small", [message(i) for i in range(10)])
    big.save("big", [message(i) for i in range(10_000)])
    spilling.save("big", [message(i) for i in range(10_000)])
    for script in SCRIPTS.values():
        client.script_load(script)
    assert small.count("small") == 10 and big.count("big") == 10_000

    new = message(10_001)
    entry = encode_entry("m", 10_001, int(time.time() * 1000), encode_json(new))
    scratch = f"{prefix}:raw:list"
    big_list = big.keys.messages("big")
    ops: dict[str, Callable[[], Any]] = {
        "raw PING": client.ping,
        "raw RPUSH": lambda: client.rpush(scratch, entry),
        "raw LRANGE -20 -1 (10k list)": lambda: client.lrange(big_list, -20, -1),
        "append (10 msgs)": lambda: small.append("small", new),
        "append (10k msgs)": lambda: big.append("big", new),
        "load last=20 (10 msgs)": lambda: small.load("small", last=20),
        "load last=20 (10k msgs)": lambda: big.load("big", last=20),
        "snapshot last=20 (10k msgs)": lambda: big.snapshot("big", 20),
        "append + spill (10k msgs)": lambda: spilling.append("big", new),
    }
    with no_gc():
        samples = interleaved(ops, rounds, warmup=max(rounds // 10, 50))
    client.ltrim(scratch, 0, 0)
    rows = {name: summary(s) for name, s in samples.items()}
    trips = {
        "append": round_trips(admin, counter, lambda: big.append("big", new), 200),
        "load": round_trips(admin, counter, lambda: big.load("big", last=20), 200),
        "snapshot": round_trips(admin, counter, lambda: big.snapshot("big", 20), 200),
        "history": round_trips(
            admin, counter, lambda: spilling.history_page("big", 5_000, 100), 200
        ),
    }
    assert small.count("small") == 10 and big.count("big") == 10_000
    assert spilling.count("big") == 10_000 and len(spilling.spilled("big")) > 0
    client.close()
    return {"rows": rows, "round_trips": trips}


def load_sessions(store: RedisStore, n: int) -> float:
    """Create ``n`` sessions with the real save script, pipelined in chunks."""
    sids = [f"s{i:07d}" for i in range(n)]
    seconds = bulk_save(store, sids, [message(0), message(1)])
    for sid in sids[:: max(n // 20, 1)]:
        assert store.load(sid) == [message(0), message(1)]
    return seconds


def bench_list(url: str, prefix: str, n: int, rounds: int, admin: redis.Redis) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    counter = CommandCounter(client)
    store = RedisStore(client, prefix=prefix, namespace="list")
    load_seconds = load_sessions(store, n)
    assert store.stats()["indexed_sessions"] == n

    limit = 100
    cursors: list[str | None] = [None]
    seen = 0
    walk_start = time.perf_counter()
    while True:
        page = store.list(limit=limit, cursor=cursors[-1])
        seen += len(page)
        if page.next_cursor is None:
            break
        cursors.append(page.next_cursor)
    walk_seconds = time.perf_counter() - walk_start
    assert seen == n, f"paging saw {seen} of {n} sessions"
    last, middle = cursors[-1], cursors[len(cursors) // 2]
    indexes = [store.keys.idx(b) for b in range(store.bucket_count)]

    def every_bucket() -> Any:
        pipe = client.pipeline(transaction=False)
        for idx in indexes:
            pipe.zrange(idx, 0, limit, desc=True, withscores=True)
        return pipe.execute()

    ops: dict[str, Callable[[], Any]] = {
        "raw ZRANGE 0 99 REV": lambda: client.zrange(
            indexes[0], 0, limit - 1, desc=True, withscores=True
        ),
        f"raw ZRANGE x{len(indexes)} pipelined": every_bucket,
        "list first page": lambda: store.list(limit=limit),
        "list middle page": lambda: store.list(limit=limit, cursor=middle),
        "list last page": lambda: store.list(limit=limit, cursor=last),
    }
    with no_gc():
        samples = interleaved(ops, rounds, warmup=max(rounds // 10, 20))
    rows = {name: summary(s) for name, s in samples.items()}
    trips = {
        "list": round_trips(
            admin,
            counter,
            lambda: store.list(limit=limit, cursor=last),
            100,
            scripts=store.bucket_count,
        )
    }
    client.close()
    return {
        "rows": rows,
        "round_trips": trips,
        "sessions": n,
        "buckets": store.bucket_count,
        "pages": len(cursors),
        "load_seconds": load_seconds,
        "walk_all_pages_seconds": walk_seconds,
    }


def cleanup(client: redis.Redis, prefix: str) -> int:
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            removed += int(client.unlink(*batch))
            batch.clear()
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def table(title: str, rows: dict[str, dict[str, float]], baseline: dict[str, str]) -> str:
    lines = [title, f"  {'operation':<30} {'p50 µs':>9} {'p99 µs':>9}  {'vs raw (p50)':>30}"]
    for name, row in rows.items():
        base = baseline.get(name)
        ratio = f"{row['p50_us'] / rows[base]['p50_us']:.2f}x {base}" if base else ""
        lines.append(f"  {name:<30} {row['p50_us']:>9.1f} {row['p99_us']:>9.1f}  {ratio:>30}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("TIEREDSTORE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    args = parser.parse_args(argv)
    rounds = 500 if args.quick else 3000
    sessions = 20_000 if args.quick else 100_000

    admin = redis.Redis.from_url(args.url)
    prefix = f"tsbench-{uuid.uuid4().hex[:10]}"
    started = time.perf_counter()
    try:
        ops = bench_ops(args.url, prefix, rounds, admin)
        listing = bench_list(args.url, prefix, sessions, max(rounds // 3, 100), admin)
    finally:
        removed = cleanup(admin, prefix)

    r, lr = ops["rows"], listing["rows"]
    ratios = {
        "append 10k/10": r["append (10k msgs)"]["p50_us"] / r["append (10 msgs)"]["p50_us"],
        "load 10k/10": r["load last=20 (10k msgs)"]["p50_us"]
        / r["load last=20 (10 msgs)"]["p50_us"],
        "list last/first": lr["list last page"]["p50_us"] / lr["list first page"]["p50_us"],
    }
    limits = {"append 10k/10": 1.2, "load 10k/10": 1.2, "list last/first": 2.0}
    trips = {**ops["round_trips"], **listing["round_trips"]}
    checks = {f"ratio {k} <= {limits[k]}": v <= limits[k] for k, v in ratios.items()}
    for name, t in trips.items():
        checks[f"{name}: 1 round trip"] = (
            t["evalsha_per_op"] == t["expected_evalsha"] and t["commands_per_op"] == 1
        )

    print(
        table(
            "(a) single-session operations",
            r,
            {
                "append (10 msgs)": "raw RPUSH",
                "append (10k msgs)": "raw RPUSH",
                "load last=20 (10 msgs)": "raw LRANGE -20 -1 (10k list)",
                "load last=20 (10k msgs)": "raw LRANGE -20 -1 (10k list)",
                "snapshot last=20 (10k msgs)": "raw LRANGE -20 -1 (10k list)",
                "append + spill (10k msgs)": "raw RPUSH",
                "raw RPUSH": "raw PING",
                "raw LRANGE -20 -1 (10k list)": "raw PING",
            },
        )
    )
    print()
    print(
        table(
            f"(b) list, limit=100, over {listing['sessions']:,} sessions "
            f"({listing['pages']} pages)",
            lr,
            {
                f"raw ZRANGE x{listing['buckets']} pipelined": "raw ZRANGE 0 99 REV",
                "list first page": f"raw ZRANGE x{listing['buckets']} pipelined",
                "list middle page": f"raw ZRANGE x{listing['buckets']} pipelined",
                "list last page": f"raw ZRANGE x{listing['buckets']} pipelined",
            },
        )
    )
    print(
        f"  loaded in {listing['load_seconds']:.1f} s (pipelined save script); "
        f"walked every page in {listing['walk_all_pages_seconds']:.2f} s"
    )
    print()
    print("round trips per operation (server EVALSHAs (expected) / client round trips):")
    for name, t in trips.items():
        print(
            f"  {name:<8} {t['evalsha_per_op']:.2f} ({t['expected_evalsha']})"
            f" / {t['commands_per_op']:.2f}"
        )
    print()
    print("acceptance:")
    for name, value in ratios.items():
        print(f"  {name:<18} {value:5.2f}  (limit {limits[name]})")
    failed = [name for name, ok in checks.items() if not ok]
    for name in failed:
        print(f"  FAILED: {name}")
    print(f"  {'all checks passed' if not failed else f'{len(failed)} check(s) failed'}")
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.1f} s total; removed {removed} keys under {prefix}:*")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "quick": args.quick,
                "redis_version": admin.info("server").get("redis_version"),
                "operations": ops,
                "list": listing,
                "ratios": ratios,
                "limits": limits,
                "checks": checks,
                "passed": not failed,
                "seconds": elapsed,
            },
            indent=2,
        )
    )
    admin.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
