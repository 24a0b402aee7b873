"""The memory tier's resident memory under a Zipf load, in a fresh interpreter.

``python -m benchmarks.peers.rss --bound BYTES --ids N --ops K`` prints one
JSON object. The memory tier is the ``MemoryStore`` a ``TieredStore`` builds
for ``memory_max_bytes=BOUND``. Each operation reads a session id drawn from
a Zipf distribution (s = 1) over ``N`` ids; a miss fills the tier with that
session's history through the tier's own ``save``, the messages decoded
from JSON bytes first, so every cached session holds objects of its own,
as one filled from Redis does. Sessions hold 2 to 24 messages of the
benchmark's conversations. Resident memory is read from
``/proc/self/statm`` before the load (after building the sampler and the
payloads) and every 10 000 operations; the growth is compared with the
configured bound.
"""

from __future__ import annotations

import argparse
import array
import bisect
import gc
import json
import os
import random
import sys
import time

import orjson

from benchmarks.peers.conversations import conversation
from tieredstore.errors import SessionNotFound
from tieredstore.tiers.memory import MemoryStore

SAMPLE_EVERY = 10_000
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def zipf_cumulative(n: int, s: float = 1.0) -> array.array[float]:
    weights = array.array("d", bytes(8 * n))
    total = 0.0
    for rank in range(n):
        total += 1.0 / (rank + 1) ** s
        weights[rank] = total
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bound", type=int, required=True, help="memory tier bound, bytes")
    parser.add_argument("--ids", type=int, required=True, help="distinct session ids")
    parser.add_argument("--ops", type=int, required=True, help="reads to run")
    args = parser.parse_args(argv)

    rng = random.Random(5)
    cumulative = zipf_cumulative(args.ids)
    total = cumulative[-1]
    payloads = [orjson.dumps(m) for m in conversation(4096, seed=17)]
    store = MemoryStore(max_bytes=args.bound)
    gc.collect()
    baseline = peak = rss_bytes()
    hits = misses = 0
    started = time.perf_counter()
    for op in range(args.ops):
        rank = bisect.bisect_left(cumulative, rng.random() * total)
        sid = f"s{rank:07d}"
        try:
            store.load(sid)
            hits += 1
        except SessionNotFound:
            misses += 1
            count = 2 + rank % 23
            first = (rank * 37) % (len(payloads) - count)
            store.save(sid, [orjson.loads(p) for p in payloads[first : first + count]])
        if op % SAMPLE_EVERY == 0:
            peak = max(peak, rss_bytes())
    seconds = time.perf_counter() - started
    gc.collect()
    end = rss_bytes()
    peak = max(peak, end)
    stats = store.stats()
    json.dump(
        {
            "bound_bytes": args.bound,
            "ids": args.ids,
            "operations": args.ops,
            "hit_ratio": hits / max(hits + misses, 1),
            "entries": stats["entries"],
            "accounted_bytes": stats["bytes"],
            "evictions": stats["evictions"],
            "rss_baseline_bytes": baseline,
            "rss_growth_peak_bytes": peak - baseline,
            "rss_growth_end_bytes": end - baseline,
            "peak_growth_over_bound": (peak - baseline) / args.bound,
            "end_growth_over_bound": (end - baseline) / args.bound,
            "seconds": seconds,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
