"""Archive search at scale: ``python -m benchmarks.bench_search [--quick]``.

On a scratch PostgreSQL database (created with a unique name, dropped at the
end) it:

1. migrates to revision 0001 (the previous schema) and fills the archive with
   1 000 000 messages (``--quick``: 100 000) by ``COPY``: 50 messages per
   session, Zipf-distributed synthetic words, one "heavy" user owning 10 % of
   the messages;
2. upgrades to head (migration 0002 builds the FTS and metadata GIN indexes on
   the filled archive) and checks that every row is still there;
3. runs selective full-text queries (rare words, phrases, prefixes, with and
   without a user filter) through :class:`tieredstore.query.ArchiveQuery`,
   timing the first page (20 hits) and reporting p50/p99, and reads
   ``EXPLAIN`` for each to confirm the GIN index is used;
4. exports the heavy user's sessions to JSONL in a subprocess, reporting its
   peak RSS and tracemalloc peak against the exported size.

Exit status 1 when the p99 first-page latency exceeds 50 ms, when a plan does
not use the GIN index, or when the migration lost rows. Results go to
``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from benchmarks.common import PG_ADMIN_URL
from tieredstore.migration import migrate
from tieredstore.policy import message_kind
from tieredstore.query import ArchiveQuery
from tieredstore.schema import FTS_INDEX, MESSAGES, SESSIONS

NAMESPACE = "bench"
PER_SESSION = 50
USERS = 2000
WORDS_PER_MESSAGE = 12
VOCABULARY = 6000
LATENCY_LIMIT_MS = 50.0
RESULTS = Path(__file__).parent / "results" / "search.json"

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(3, 4))))
    return sorted(words)


def fill(conn: Any, total: int, rng: random.Random, words: list[str]) -> dict[str, Any]:
    """COPY ``total`` messages and their sessions; return what the queries need."""
    sessions = total // PER_SESSION
    heavy = sessions // 10
    cum_weights = list(itertools.accumulate(1.0 / rank for rank in range(1, len(words) + 1)))
    start = int(time.time() * 1000) - 90 * 86_400_000
    session_starts = [start + rng.randrange(80 * 86_400_000) for _ in range(sessions)]
    cursor = conn.cursor()
    with cursor.copy(
        f"COPY {SESSIONS} (namespace, session_id, user_id, metadata, created_ms, updated_ms, "
        "version, message_count, next_seq, base_seq, lead) FROM STDIN"
    ) as copy:
        for i in range(sessions):
            user = "user-heavy" if i < heavy else f"user-{i % USERS}"
            created = session_starts[i]
            meta = orjson.dumps({"plan": ("pro", "free")[i % 2], "topic": f"t{i % 50}"})
            copy.write_row((NAMESPACE, f"s{i:07d}", user, meta.decode(), created,
                            created + PER_SESSION * 60_000, PER_SESSION, PER_SESSION,
                            PER_SESSION, 0, 0))
    with cursor.copy(
        f"COPY {MESSAGES} (namespace, session_id, seq, created_ms, role, kind, payload, "
        "content_text) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(("text", "text", "int8", "int8", "text", "text", "bytea", "text"))
        choices = rng.choices
        for i in range(sessions):
            sid = f"s{i:07d}"
            base = session_starts[i]
            for seq in range(PER_SESSION):
                role = "user" if seq % 2 == 0 else "assistant"
                text = " ".join(choices(words, cum_weights=cum_weights, k=WORDS_PER_MESSAGE))
                message = {"role": role, "content": text}
                copy.write_row((NAMESPACE, sid, seq, base + seq * 60_000, role,
                                message_kind(message), orjson.dumps(message), text))
    conn.commit()
    return {"sessions": sessions, "heavy_messages": heavy * PER_SESSION}


def row_count(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(sa.text(f"SELECT count(*) FROM {SESSIONS}")).scalar_one(),
                conn.execute(sa.text(f"SELECT count(*) FROM {MESSAGES}")).scalar_one())


def queries(words: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Selective queries: words ranked by frequency (``words[i]`` has Zipf rank ``i + 1``).

    Each involves at least one rare word (a few hundred messages in 1M) or two
    moderately common ones (a few thousand each).
    """
    rare = words[-40:]
    mid = words[400:440]
    found: list[tuple[str, dict[str, Any]]] = []
    found += [(word, {}) for word in rare[:10]]
    found += [(f"{a} {b}", {}) for a, b in zip(mid[:5], mid[5:10], strict=True)]
    found += [(f'"{a} {b}"', {}) for a, b in zip(rare[25:30], words[:5], strict=True)]
    found += [(f"{word[:6]}*", {}) for word in rare[10:15]]
    found += [(f"{word} -{common}", {}) for word, common in zip(rare[30:35], words[5:10],
                                                                 strict=True)]
    found += [(f"{a} OR {b}", {}) for a, b in zip(rare[35:38], rare[37:40], strict=True)]
    found += [(word, {"user_id": "user-heavy"}) for word in rare[15:20]]
    found += [(word, {"metadata": {"plan": "pro"}}) for word in rare[20:25]]
    return found


def bench_queries(query: ArchiveQuery, cases: list[tuple[str, dict[str, Any]]],
                  rounds: int) -> dict[str, Any]:
    for text, filters in cases:  # warm up caches and the plan cache
        query.search(text, limit=20, **filters)
    samples: list[float] = []
    per_query: list[dict[str, Any]] = []
    for text, filters in cases:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            page = query.search(text, limit=20, **filters)
            times.append((time.perf_counter() - started) * 1000)
        samples.extend(times)
        plan = query.explain(text) if not filters else ""
        per_query.append({
            "query": text, "filters": filters, "hits_on_first_page": len(page.hits),
            "median_ms": round(statistics.median(times), 3),
            # the archive's FTS index, or a partition's copy of it
            "gin": (FTS_INDEX in plan or "_to_tsvector_idx" in plan) if plan else None,
        })
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
        "max_ms": round(samples[-1], 3),
        "queries": per_query,
        "all_use_gin": all(q["gin"] for q in per_query if q["gin"] is not None),
    }


_PEAK_RSS = """
def peak_rss():  # VmHWM: unlike ru_maxrss, not inherited from the parent at spawn
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
"""

_EXPORT_CHILD = _PEAK_RSS + """
import resource, sys, time, tracemalloc
from tieredstore.query import ArchiveQuery
tracemalloc.start()
q = ArchiveQuery(sys.argv[1], namespace=sys.argv[2])
started = time.perf_counter()
with open(sys.argv[4], "wb") as out:
    counts = q.export_to(out, user_id=sys.argv[3])
elapsed = time.perf_counter() - started
peak = tracemalloc.get_traced_memory()[1]
q.close()
import json
print(json.dumps({**counts, "seconds": round(elapsed, 2), "tracemalloc_peak_bytes": peak,
                  "peak_rss_bytes": peak_rss()}))
"""


def bench_export(url: str, user: str, path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _EXPORT_CHILD, url, NAMESPACE, user, str(path)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    result: dict[str, Any] = json.loads(done.stdout)
    baseline = subprocess.run(
        [sys.executable, "-c",
         _PEAK_RSS + "import tieredstore.query, sqlalchemy, psycopg\nprint(peak_rss())"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    result["baseline_rss_bytes"] = int(baseline.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 000 messages")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    total = args.messages or (100_000 if args.quick else 1_000_000)
    rng = random.Random(20261126)
    words = vocabulary(rng)
    name = f"tieredstore_bench_search_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url, pool_size=2)
    report: dict[str, Any] = {"messages": total}
    failures: list[str] = []
    try:
        migrate(engine, "0001")
        started = time.perf_counter()
        raw: Any = engine.raw_connection()
        try:
            info = fill(raw.driver_connection, total, rng, words)
        finally:
            raw.close()
        report["fill_seconds"] = round(time.perf_counter() - started, 1)
        before = row_count(engine)
        started = time.perf_counter()
        migrate(engine)  # 0001 -> head on the filled archive
        report["migration_seconds"] = round(time.perf_counter() - started, 1)
        after = row_count(engine)
        report["rows_before_after"] = [before, after]
        if before != after:
            failures.append(f"migration changed row counts {before} -> {after}")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"VACUUM ANALYZE {MESSAGES}, {SESSIONS}"))
        query = ArchiveQuery(engine, namespace=NAMESPACE)
        report["search"] = bench_queries(query, queries(words), args.rounds)
        report["explain_example"] = query.explain(words[-1])
        if report["search"]["p99_ms"] > LATENCY_LIMIT_MS:
            failures.append(f"p99 {report['search']['p99_ms']} ms > {LATENCY_LIMIT_MS} ms")
        if not report["search"]["all_use_gin"]:
            failures.append("a plan does not use the GIN index")
        export_path = Path("/tmp") / f"{name}.jsonl"
        try:
            report["export"] = bench_export(url, "user-heavy", export_path)
            report["export"]["expected_messages"] = info["heavy_messages"]
            report["export"]["file_bytes"] = export_path.stat().st_size
        finally:
            export_path.unlink(missing_ok=True)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    report["failures"] = failures
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    search = report["search"]
    print(f"{total} messages: filled in {report['fill_seconds']} s, "
          f"0001->head migration {report['migration_seconds']} s, rows kept: {before == after}")
    print(f"first page: p50 {search['p50_ms']} ms, p99 {search['p99_ms']} ms, "
          f"max {search['max_ms']} ms over {len(search['queries'])} queries; "
          f"GIN index in every plan: {search['all_use_gin']}")
    export = report["export"]
    print(f"export of {export['messages']} messages ({export['file_bytes'] / 2**20:.1f} MiB) in "
          f"{export['seconds']} s: peak RSS {export['peak_rss_bytes'] / 2**20:.1f} MiB "
          f"(interpreter+imports {export['baseline_rss_bytes'] / 2**20:.1f} MiB), "
          f"tracemalloc peak {export['tracemalloc_peak_bytes'] / 2**20:.2f} MiB")
    print("EXPLAIN", words[-1], ":\n" + report["explain_example"])
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
