"""tieredstore against raw clients and its peers: ``python -m benchmarks.bench_peers``.

Run ``python -m benchmarks.bench_peers [--quick] [--strict]`` (the peers come
with ``pip install -e '.[bench]'``). Everything runs on loopback servers of
its own: a private ``redis-server`` (started and stopped here, so its
counters see nothing else) and a scratch PostgreSQL database created through
``TIEREDSTORE_TEST_PG_URL`` (default ``postgres@127.0.0.1:5432``) and dropped
at the end.

**Data.** The same OpenAI-chat conversations for everyone
(:mod:`benchmarks.peers.conversations`: user, assistant and ``tool``
messages, about 30% of assistant messages tool calls, 40-800 characters of
content, seeded), at history sizes N = 10, 50, 500 and 10 000. ``--quick``
leaves the peers out at N = 10 000 (tieredstore and the raw baselines still
run there).

**Contestants**, interleaved round-robin (each round times every contestant
once, in turn, in a freshly shuffled order so that none always follows the
same one), reported as p50 with the p10-p90 spread and the client CPU time
of the calling thread (``time.thread_time_ns``) per call:

* tieredstore: ``RedisStore``; ``TieredStore`` without a memory tier (its
  Redis tier); ``TieredStore`` served by its memory tier (N = 50);
  ``ArchiveStore`` (PostgreSQL); ``TieredStore`` in ``write_through`` mode;
  ``AsyncTieredStore`` and ``AsyncRedisStore`` (asyncio test);
* raw clients doing the same work: redis-py ``LRANGE`` with each entry
  decoded as the store decodes it (and, for reference, with ``orjson.loads``
  only); redis-py sending what the store's append plan yields (today one
  ``EVALSHA`` of its append script: same keys and arguments, a fresh call
  id each time, see :mod:`benchmarks.peers.calls`); a
  cachetools ``LRUCache.get`` of a held tuple; psycopg replaying the
  statements the archive sends (captured with a ``before_cursor_execute``
  listener on its engine, replayed with the same parameters on a direct
  ``psycopg.connect`` connection, see :mod:`benchmarks.peers.archive`);
  ``redis.asyncio`` sending what the asyncio store sends, on the same
  client and pool;
* peers: LangChain ``RedisChatMessageHistory`` (langchain-community) and
  ``PostgresChatMessageHistory`` (langchain-postgres, sync psycopg
  connection), OpenAI Agents ``RedisSession`` and ``SQLAlchemySession``
  (``postgresql+psycopg://``, ``create_tables=True``), the async ones run
  with ``loop.run_until_complete`` on one loop kept for the whole run.

**Operations.** ``load`` and ``load(last=20)`` at every N (peers: their
``messages`` / ``get_items()`` / ``get_items(limit=20)``); ``append`` of one
message at every N, each history held at N (the stores and the raw script
trim with ``max_messages=N``; each peer is cut back to N after every timed
call, untimed), and once more for the stores at every N in a single race,
for the flatness check; ``write_through`` append beside a Redis append and an
archive append in the same race; ``ArchiveStore.load`` (N = 50, 500) and
``append`` beside raw psycopg; 50 asyncio tasks doing load + append
(throughput); the memory tier's resident memory in a fresh interpreter
(:mod:`benchmarks.peers.rss`: 64 MB bound, Zipf over 1 000 000 session ids;
``--quick``: 16 MB, 100 000 ids), filled through the memory tier's own
``save`` rather than through Redis, which could not hold a million sessions.

**Round trips** (:mod:`benchmarks.peers.counting`): for Redis, the client's
``send_packed_command`` calls and the commands the server logged (slow log
at 0 µs; commands inside scripts counted apart; ``INFO commandstats``
deltas as a cross-check); for PostgreSQL, ``ReadyForQuery`` messages in
libpq's protocol trace (``pgconn.trace()``) of every connection used, so
``BEGIN`` and ``COMMIT`` count. Targets: one client round trip per Redis
read or write, at most two PostgreSQL round trips per archive write.

Prints every race, the round trips, the machine and the goals table;
writes everything to ``benchmarks/results/peers.json``. The exit status is
0 unless ``--strict`` is given and a goal is NOT MET.

Profile findings
----------------
cProfile and CPU-time splits of each path on the 2-core machine (before →
what was done → what is left):

* memory-tier hit: 3 µs, two thirds of it the plan driver, id validation
  and a generator-based health check → answered before any plan is built
  (only cached ids can hit, so none is validated), health read without a
  generator → about 1 µs: the lock, the clock, the list copy.
* Redis-tier ``load``: the read script copied the list into Lua and back
  (2.1x an ``LRANGE`` at 500 messages), and each entry was split, parsed
  and wrapped in Python → one ``MULTI``/``EXEC`` (``TIME``, ``HMGET``,
  ``LRANGE``) sent on a pooled connection without redis-py's pipeline
  object, one ``orjson`` parse for the whole window, messages built with
  no Python call each → what is left is the session record
  (``TieredStore`` reads ``HGETALL`` + ``LLEN`` to fill its memory tier).
* ``append``: the raw ``EVALSHA`` costs about 85 µs of client CPU here;
  validation and encoding (~4 µs), the plan (~7 µs) and allocation add
  20-25 µs. ``TieredStore``'s listener thread also parses the invalidation
  its own write published (~17 µs of another thread's CPU).
* ``write_through`` append: six PostgreSQL round trips, one of them
  counting the session's leading system messages by reading every row
  (O(N)) → one statement for an append after every stored seq, the count
  kept by arithmetic. The outbox acknowledgement is a second Redis round
  trip.
* ``ArchiveStore.load``: SQLAlchemy's execution and pool checkout cost as
  much client CPU as psycopg itself; decoding now takes one parse.
* asyncio: redis.asyncio arms a timer per reply; a transaction read
  arms one for all its replies.
* memory tier: 96 bytes were counted per message beyond its encoding;
  measured, a decoded message takes 300-1 000 (a string object per value,
  an object per nesting) → sizes count each ``"`` of the encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
import redis.asyncio
import sqlalchemy as sa
from langchain_postgres import PostgresChatMessageHistory
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.common import PG_ADMIN_URL, private_redis, scratch_database
from benchmarks.peers import report
from benchmarks.peers.aio import AsyncGroup
from benchmarks.peers.archive import (
    ARCHIVE_APPEND,
    ARCHIVE_LOAD,
    LOAD_SIZES,
    RAW_PG_APPEND,
    RAW_PG_LOAD,
    WRITE_THROUGH,
    ArchiveGroup,
)
from benchmarks.peers.counting import PgRoundTrips, RedisRoundTrips
from benchmarks.peers.sizes import (
    CACHETOOLS,
    LANGCHAIN_TABLE,
    MEMORY_HIT,
    RAW_APPEND,
    RAW_APPEND_TIERED,
    RAW_DECODE,
    REDIS_STORE,
    TIERED_MEMORY,
    TIERED_REDIS,
    FlatnessGroup,
    Servers,
    SizeGroup,
)
from benchmarks.peers.timing import run_race
from tieredstore.tiers.archive import create_engine

RESULTS = Path(__file__).parent / "results" / "peers.json"
ROUND_TRIP_CALLS = 50
MEMORY_SIZE = 50


@dataclass(frozen=True)
class Plan:
    """How much of everything a run measures."""

    sizes: tuple[int, ...]
    peer_sizes: tuple[int, ...]
    load_rounds: dict[int, int]
    append_rounds: int
    flatness_rounds: int
    micro_rounds: int
    archive_rounds: int
    asyncio_loops: int
    asyncio_repeats: int
    rss_bound: int
    rss_ids: int
    rss_ops: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        sizes = (10, 50, 500, 10_000)
        if quick:
            return cls(sizes, sizes[:3], {10: 1200, 50: 1200, 500: 500, 10_000: 50},
                       append_rounds=1200, flatness_rounds=2000, micro_rounds=50_000,
                       archive_rounds=1200, asyncio_loops=40, asyncio_repeats=7,
                       rss_bound=16 * 2**20, rss_ids=100_000, rss_ops=300_000)
        return cls(sizes, sizes, {10: 2000, 50: 2000, 500: 800, 10_000: 40},
                   append_rounds=2000, flatness_rounds=3000, micro_rounds=200_000,
                   archive_rounds=2000, asyncio_loops=60, asyncio_repeats=9,
                   rss_bound=64 * 2**20, rss_ids=1_000_000, rss_ops=1_500_000)


BASELINES: dict[str, dict[str, str]] = {
    "load": dict.fromkeys((REDIS_STORE, TIERED_REDIS, TIERED_MEMORY), RAW_DECODE),
    "tail": dict.fromkeys((REDIS_STORE, TIERED_REDIS, TIERED_MEMORY), RAW_DECODE),
    "append": {REDIS_STORE: RAW_APPEND, TIERED_REDIS: RAW_APPEND_TIERED},
    "archive": {
        **{f"{ARCHIVE_LOAD} (N={n})": f"{RAW_PG_LOAD} (N={n})" for n in LOAD_SIZES},
        ARCHIVE_APPEND: RAW_PG_APPEND,
    },
}
"""Which raw baseline each tieredstore row of a race is compared with."""


def say(text: str) -> None:
    print(text, flush=True)


def machine(admin: redis.Redis, dsn: str) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_server": admin.info("server")["redis_version"],
        "postgresql": row[0] if row else "unknown",
    }


def run_sizes(servers: Servers, plan: Plan, redis_trips: RedisRoundTrips,
              pg_trips: PgRoundTrips, results: dict[str, Any]) -> None:
    for n in plan.sizes:
        say(f"N={n}: filling every contestant ...")
        group = SizeGroup(servers, n, peers=n in plan.peer_sizes, memory=n == MEMORY_SIZE)
        try:
            rounds = plan.load_rounds[n]
            rows = {
                "load": run_race(group.loads(), rounds),
                "tail": run_race(group.tails(), rounds),
                "append": run_race(group.appends(), plan.append_rounds),
            }
            group.check()
            results["sizes"][str(n)] = rows
            for title, key in (("load", "load"), ("load(last=20)", "tail"),
                               ("append", "append")):
                say(report.race_table(f"{title}, N={n}", rows[key], BASELINES[key]))
            if n == MEMORY_SIZE:
                micro = run_race(group.memory_micro(), plan.micro_rounds)
                results["memory_micro"] = micro
                say(report.race_table("memory tier, N=50 (in-process only)", micro,
                                      {MEMORY_HIT: CACHETOOLS}))
                for name, op in group.round_trip_ops().items():
                    results["round_trips"]["redis"][name] = redis_trips.measure(
                        op, ROUND_TRIP_CALLS)
                for name, (op, conns) in group.postgres_round_trip_ops().items():
                    results["round_trips"]["postgres"][name] = pg_trips.measure(
                        op, ROUND_TRIP_CALLS, conns)
        finally:
            group.close()




def run_flatness(servers: Servers, plan: Plan, results: dict[str, Any]) -> None:
    say("append at every N in one race: filling ...")
    group = FlatnessGroup(servers, plan.sizes)
    try:
        rows = run_race(group.contestants(), plan.flatness_rounds)
        results["flatness"] = rows
        say(report.race_table("append at every N (one race)", rows, {}))
    finally:
        group.close()


def run_archive(servers: Servers, engine: sa.Engine, dsn: str, plan: Plan,
                redis_trips: RedisRoundTrips, pg_trips: PgRoundTrips,
                results: dict[str, Any]) -> None:
    say("archive: filling ...")
    group = ArchiveGroup(engine, servers.client, dsn, servers.prefix)
    try:
        rows = run_race(group.contestants(), plan.archive_rounds)
        results["archive"] = rows
        say(report.race_table("archive (PostgreSQL) and write_through", rows,
                              BASELINES["archive"]))
        for name, (op, conns) in group.round_trip_ops().items():
            results["round_trips"]["postgres"][name] = pg_trips.measure(
                op, ROUND_TRIP_CALLS, conns)
        write = group.round_trip_ops()[WRITE_THROUGH][0]
        results["round_trips"]["redis"][WRITE_THROUGH] = redis_trips.measure(
            write, ROUND_TRIP_CALLS)
    finally:
        group.close()


def run_asyncio(servers: Servers, plan: Plan, redis_trips: RedisRoundTrips,
                results: dict[str, Any]) -> None:
    say("asyncio: filling ...")
    group = AsyncGroup(servers.loop, servers.redis_url, servers.prefix, servers.client)
    try:
        rates = group.run(plan.asyncio_loops, plan.asyncio_repeats)
        results["asyncio"] = rates
        say(report.asyncio_table(rates))
        for name, op in group.round_trip_ops().items():
            results["round_trips"]["redis"][name] = redis_trips.measure(op, ROUND_TRIP_CALLS)
    finally:
        group.close()


def run_rss(plan: Plan) -> dict[str, Any]:
    say(f"memory tier RSS: {plan.rss_bound // 2**20} MB bound, {plan.rss_ids:,} ids, "
        f"{plan.rss_ops:,} reads, in a fresh interpreter ...")
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers.rss", "--bound", str(plan.rss_bound),
         "--ids", str(plan.rss_ids), "--ops", str(plan.rss_ops)],
        check=True, capture_output=True, text=True, env=env, cwd=root)
    measured: dict[str, Any] = json.loads(done.stdout)
    say(f"  RSS growth {measured['rss_growth_peak_bytes'] / 2**20:.1f} MB at peak "
        f"({measured['peak_growth_over_bound']:.2f}x the bound), "
        f"{measured['entries']:,} sessions cached, hit ratio {measured['hit_ratio']:.2f}")
    return measured


@contextlib.contextmanager
def servers_of(redis_url: str, database_url: str, dsn: str) -> Iterator[Servers]:
    """Every shared client, closed on the way out."""
    with contextlib.ExitStack() as stack:
        client = redis.Redis.from_url(redis_url)
        stack.callback(client.close)
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        async_client = redis.asyncio.Redis.from_url(redis_url)
        stack.callback(lambda: loop.run_until_complete(async_client.aclose()))
        peer_pg = stack.enter_context(psycopg.connect(dsn))
        PostgresChatMessageHistory.create_tables(peer_pg, LANGCHAIN_TABLE)
        admin_pg = stack.enter_context(psycopg.connect(dsn, autocommit=True))
        agents_engine = create_async_engine(database_url)
        stack.callback(lambda: loop.run_until_complete(agents_engine.dispose()))
        yield Servers(redis_url, f"peers-{uuid.uuid4().hex[:6]}", client, admin, loop,
                      async_client, peer_pg, admin_pg, agents_engine)


def run(plan: Plan) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": {}, "round_trips": {"redis": {}, "postgres": {}}}
    with private_redis() as redis_url, scratch_database(PG_ADMIN_URL) as database_url:
        dsn = sa.make_url(database_url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        with servers_of(redis_url, database_url, dsn) as servers:
            results["machine"] = machine(servers.admin, dsn)
            engine = create_engine(database_url)
            redis_trips = RedisRoundTrips(servers.admin)
            pg_trips = PgRoundTrips()
            pg_trips.watch_engine(engine)
            pg_trips.watch_engine(servers.agents_engine.sync_engine)
            try:
                run_sizes(servers, plan, redis_trips, pg_trips, results)
                run_flatness(servers, plan, results)
                run_archive(servers, engine, dsn, plan, redis_trips, pg_trips, results)
                run_asyncio(servers, plan, redis_trips, results)
            finally:
                redis_trips.close()
                pg_trips.close()
                engine.dispose()
    results["memory_rss"] = run_rss(plan)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (2-4 minutes)")
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero when a goal is NOT MET")
    args = parser.parse_args(argv)
    plan = Plan.of(args.quick)
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    results = run(plan)
    results["machine"]["load_average_start"] = load_at_start
    results["machine"]["load_average_end"] = os.getloadavg()
    goals = report.evaluate(results)
    elapsed = time.perf_counter() - started

    say("\nround trips per operation (Redis)")
    say(report.redis_trips_table(results["round_trips"]["redis"]))
    say("\nround trips per operation (PostgreSQL)")
    say(report.postgres_trips_table(results["round_trips"]["postgres"]))
    say("\nmachine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()))
    say("\ngoals (ratios measured in this run)")
    say(report.goals_table(goals))
    missed = sum(not goal.met for goal in goals)
    say(f"\n{len(goals) - missed} of {len(goals)} goals met; {elapsed:.0f} s"
        f"{' (quick)' if args.quick else ''}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(
        {"quick": args.quick, "seconds": elapsed, **results,
         "goals": report.goals_json(goals)}, indent=2) + "\n")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
