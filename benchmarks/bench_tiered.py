"""TieredStore on real Redis and PostgreSQL: ``python -m benchmarks.bench_tiered``.

(a) Read latency by tier for one 50-message session: ``load`` served by the
    memory tier, by Redis (a TieredStore without a memory tier) and a raw
    redis-py ``LRANGE`` of the same entries as the baseline. Each round times a
    block of 10 calls of each, the blocks interleaved so drift hits all alike.
    Acceptance: memory-tier p50 at least 50x faster than Redis-tier p50. The
    first memory call after another op's socket I/O is reported too: it runs
    on cold CPU caches and costs a few microseconds more.
(b) Cross-process invalidation delay: a writer process appends, a reader
    process holding the session in its memory tier waits for the invalidation;
    p50/p99 of ack-to-invalidation time.

Everything lives under a unique key prefix, removed at the end (deletes leave
tombstones, and every namespace records its bucket count). Results go to
``benchmarks/results/tiered.json``; exit status non-zero when an acceptance
check fails. ``--quick`` runs fewer rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import delete_prefix
from tieredstore.store import TieredStore

RESULTS = Path(__file__).parent / "results" / "tiered.json"
REDIS_URL = os.environ.get("TIEREDSTORE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get(
    "TIEREDSTORE_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def stats_us(samples_s: list[float]) -> dict[str, float]:
    us = [s * 1e6 for s in samples_s]
    return {"n": len(us), "p50_us": percentile(us, 0.5), "p99_us": percentile(us, 0.99)}


def bench_read_tiers(rounds: int, prefix: str) -> dict[str, Any]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    with_memory = TieredStore.from_clients(redis=client, namespace=namespace, prefix=prefix)
    redis_only = TieredStore.from_clients(
        redis=client, namespace=namespace, prefix=prefix, memory_max_bytes=None
    )
    sid = "fifty"
    messages = [
        {
            "role": "user" if i % 2 else "assistant",
            "content": f"message {i}: " + "lorem ipsum dolor sit amet " * 6,
        }
        for i in range(50)
    ]
    with_memory.save(sid, messages)
    with_memory.load(sid)
    assert with_memory.get(sid).tier == "memory"
    assert redis_only.get(sid).tier == "redis"
    list_key = with_memory.redis.keys_of(sid)[0]
    ops = {
        "memory": lambda: with_memory.load(sid),
        "redis": lambda: redis_only.load(sid),
        "raw_lrange": lambda: client.lrange(list_key, 0, -1),
    }
    block = 10
    samples: dict[str, list[float]] = {name: [] for name in ops}
    cold: list[float] = []
    gc.collect()
    gc.disable()
    try:
        for round_ in range(rounds + 200):
            for name, op in ops.items():
                start = time.perf_counter()
                op()
                first = time.perf_counter()
                for _ in range(block - 1):
                    op()
                elapsed = time.perf_counter() - start
                if round_ >= 200:
                    samples[name].append(elapsed / block)
                    if name == "memory":
                        cold.append(first - start)
    finally:
        gc.enable()
    assert with_memory.load(sid) == messages
    result = {name: stats_us(values) for name, values in samples.items()}
    result["memory_first_call_after_io"] = stats_us(cold)
    result["memory_speedup_vs_redis_p50"] = result["redis"]["p50_us"] / result["memory"]["p50_us"]
    result["redis_tier_overhead_vs_raw_p50"] = (
        result["redis"]["p50_us"] / result["raw_lrange"]["p50_us"]
    )
    with_memory.delete(sid)
    with_memory.close()
    redis_only.close()
    client.close()
    return result


def _reader(conn: Any, namespace: str, prefix: str, sid: str, rounds: int) -> None:
    store = TieredStore.from_url(redis_url=REDIS_URL, namespace=namespace, prefix=prefix)
    store.load(sid)
    conn.send("ready")
    delays: list[float] = []
    for _ in range(rounds):
        created_ms, version, sent_at = conn.recv()
        while not store._seen.superseded(sid, (created_ms, version - 1)):
            time.sleep(0)
        delays.append(time.perf_counter() - sent_at)
        store.load(sid)
        conn.send("ok")
    conn.send(delays)
    store.close()


def bench_invalidation(rounds: int, prefix: str) -> dict[str, Any]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    writer = TieredStore.from_url(redis_url=REDIS_URL, namespace=namespace, prefix=prefix)
    sid = "shared"
    writer.save(sid, [{"role": "user", "content": "hi"}])
    created_ms = int(writer.get(sid).created_at.timestamp() * 1000)
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    reader = ctx.Process(target=_reader, args=(theirs, namespace, prefix, sid, rounds))
    reader.start()
    assert ours.recv() == "ready"
    for i in range(rounds):
        version = writer.append(sid, {"role": "user", "content": f"m{i}"})
        ours.send((created_ms, version, time.perf_counter()))
        assert ours.recv() == "ok"
    delays = ours.recv()
    reader.join(30)
    writer.delete(sid)
    writer.close()
    return {"rounds": rounds, **stats_us(delays)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    rounds = 2000 if args.quick else 20000
    try:
        reads = bench_read_tiers(rounds, prefix)
        invalidation = bench_invalidation(200 if args.quick else 1000, prefix)
    finally:
        admin = redis.Redis.from_url(REDIS_URL)
        removed = delete_prefix(admin, prefix)
        admin.close()
    print(f"{'load of 50 messages':<28}{'p50 µs':>10}{'p99 µs':>10}")
    for name in ("memory", "memory_first_call_after_io", "redis", "raw_lrange"):
        print(f"{name:<28}{reads[name]['p50_us']:>10.1f}{reads[name]['p99_us']:>10.1f}")
    speedup = reads["memory_speedup_vs_redis_p50"]
    print(f"memory tier speed-up over Redis tier (p50): {speedup:.0f}x  (acceptance >= 50x)")
    print(
        f"Redis tier overhead over raw LRANGE (p50): {reads['redis_tier_overhead_vs_raw_p50']:.2f}x"
    )
    print(
        f"invalidation delay over {invalidation['rounds']} rounds: "
        f"p50 {invalidation['p50_us']:.0f} µs, p99 {invalidation['p99_us']:.0f} µs"
    )
    print(f"removed {removed} keys under {prefix}:*")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"reads": reads, "invalidation": invalidation}, indent=2))
    return 0 if speedup >= 50 else 1


if __name__ == "__main__":
    sys.exit(main())
