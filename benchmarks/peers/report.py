"""The goals of the performance issue, evaluated on one run's results, and the tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from benchmarks.peers import aio, archive, sizes

Rows = Mapping[str, Mapping[str, Any]]
REDIS_OPS_OF_TIEREDSTORE = (
    sizes.REDIS_STORE,
    sizes.TIERED_REDIS,
    aio.ASYNC_TIERED,
    aio.ASYNC_REDIS,
    archive.WRITE_THROUGH,
)
ARCHIVE_WRITES = (archive.ARCHIVE_APPEND, archive.WRITE_THROUGH)


@dataclass(frozen=True)
class Goal:
    goal: str
    measured: str
    target: str
    met: bool


def _ratio(rows: Rows, name: str, base: str, key: str = "p50_us") -> float:
    return float(rows[name][key]) / float(rows[base][key])


def _worst(
    per_size: Mapping[int, Rows],
    value: Callable[[Rows], float | None],
    pick: Callable[[Iterable[float]], float],
) -> tuple[float, int] | None:
    found = [(v, n) for n, rows in per_size.items() if (v := value(rows)) is not None]
    if not found:
        return None
    chosen = pick(v for v, _ in found)
    return next((v, n) for v, n in found if v == chosen)


def _fastest_peer(rows: Rows) -> tuple[str, float] | None:
    peers = [(name, row["p50_us"]) for name, row in rows.items() if row["group"] == "peer"]
    return min(peers, key=lambda item: item[1]) if peers else None


def _speedup(rows: Rows, store: str) -> float | None:
    peer = _fastest_peer(rows)
    return None if peer is None else peer[1] / float(rows[store]["p50_us"])


def _agents_speedup(rows: Rows, store: str) -> float | None:
    if sizes.AGENTS_REDIS not in rows:
        return None
    return _ratio(rows, sizes.AGENTS_REDIS, store)


def _goal(goal: str, found: tuple[float, int] | None, limit: float, at_most: bool,
          unit: str = "x") -> Goal:
    sign = "<=" if at_most else ">="
    if found is None:
        return Goal(goal, "not measured", f"{sign} {limit:g}{unit}", False)
    value, n = found
    where = f" (worst at N={n})" if n else ""
    met = value <= limit if at_most else value >= limit
    return Goal(goal, f"{value:.2f}{unit}{where}", f"{sign} {limit:g}{unit}", met)


def evaluate(results: Mapping[str, Any]) -> list[Goal]:
    """Every goal of the issue, from ratios measured in this run."""
    by_size: dict[int, dict[str, Rows]] = {int(n): r for n, r in results["sizes"].items()}
    loads = {n: r["load"] for n, r in by_size.items()}
    tails = {n: r["tail"] for n, r in by_size.items()}
    appends = {n: r["append"] for n, r in by_size.items()}
    goals: list[Goal] = []

    micro = results["memory_micro"]
    hit = float(micro[sizes.MEMORY_HIT]["p50_us"])
    goals.append(_goal("1. memory-tier load of 50 messages, p50", (hit, 0), 3, True, " µs"))
    goals.append(_goal("1. memory-tier load / cachetools get (p50)",
                       (_ratio(micro, sizes.MEMORY_HIT, sizes.CACHETOOLS), 0), 4, True))

    for store in (sizes.REDIS_STORE, sizes.TIERED_REDIS):
        for label, per_size in (("load", loads), ("load(last=20)", tails)):
            goals.append(_goal(
                f"2. {store} {label} / raw LRANGE + decode (p50, every N)",
                _worst(per_size, partial(_ratio, name=store, base=sizes.RAW_DECODE), max),
                1.2, True))
            goals.append(_goal(
                f"2. {store} {label}: speed-up over the fastest peer (p50, every N)",
                _worst(per_size, partial(_speedup, store=store), min), 1.5, False))

    raw_of = {sizes.REDIS_STORE: sizes.RAW_APPEND, sizes.TIERED_REDIS: sizes.RAW_APPEND_TIERED}
    for store, raw in raw_of.items():
        goals.append(_goal(
            f"3. {store} append / raw redis-py sending its call (client CPU, every N)",
            _worst(appends, partial(_ratio, name=store, base=raw, key="cpu_p50_us"), max),
            1.2, True))
        goals.append(_goal(
            f"3. {store} append: speed-up over Agents RedisSession (p50, every N)",
            _worst(appends, partial(_agents_speedup, store=store), min), 4, False))
        flat = results["flatness"]
        small, big = min(appends), max(appends)
        goals.append(_goal(
            f"3. {store} append p50 at N={big} / at N={small} (one race)",
            (_ratio(flat, sizes.flat_name(store, big), sizes.flat_name(store, small)), 0),
            1.2, True))

    arch = results["archive"]
    split = float(arch[archive.REDIS_APPEND]["p50_us"]) + float(
        arch[archive.ARCHIVE_APPEND]["p50_us"])
    goals.append(_goal("4. write_through append / (Redis append + archive append), p50",
                       (float(arch[archive.WRITE_THROUGH]["p50_us"]) / split, 0), 1.3, True))
    load_ratios = [
        (_ratio(arch, f"{archive.ARCHIVE_LOAD} (N={n})", f"{archive.RAW_PG_LOAD} (N={n})"), n)
        for n in archive.LOAD_SIZES
    ]
    goals.append(_goal("5. ArchiveStore.load / raw psycopg, same statement (p50)",
                       max(load_ratios), 1.2, True))
    goals.append(_goal("5. ArchiveStore.append / raw psycopg, same statement (p50)",
                       (_ratio(arch, archive.ARCHIVE_APPEND, archive.RAW_PG_APPEND), 0), 1.2,
                       True))

    rates = results["asyncio"]
    goals.append(_goal(
        f"6. {aio.TASKS} asyncio tasks: AsyncTieredStore / raw redis.asyncio throughput",
        (rates[aio.ASYNC_TIERED]["ops_per_s"] / rates[aio.RAW_ASYNC]["ops_per_s"], 0),
        0.9, False))

    rss = results["memory_rss"]
    goals.append(_goal(
        f"7. memory tier RSS growth / bound ({rss['bound_bytes'] // 2**20} MB, Zipf over "
        f"{rss['ids']:,} ids)", (rss["peak_growth_over_bound"], 0), 1.3, True))

    trips = results["round_trips"]
    redis_ops = {name: t for name, t in trips["redis"].items()
                 if name.startswith(REDIS_OPS_OF_TIEREDSTORE)}
    worst = max(redis_ops.items(), key=lambda item: item[1]["client_round_trips"])
    goals.append(Goal(
        "8. client round trips per tieredstore Redis read/write",
        f"max {worst[1]['client_round_trips']:.2f} ({worst[0]})", "1",
        all(t["client_round_trips"] == 1 for t in redis_ops.values())))
    writes = {name: rt for name, rt in trips["postgres"].items() if name in ARCHIVE_WRITES}
    worst_write = max(writes.items(), key=lambda item: item[1])
    goals.append(Goal("8. PostgreSQL round trips per archive write",
                      f"max {worst_write[1]:.2f} ({worst_write[0]})", "<= 2",
                      all(rt <= 2 for rt in writes.values())))
    return goals


def goals_table(goals: list[Goal]) -> str:
    lines = ["| goal | measured | target | status |", "| --- | --- | --- | --- |"]
    for goal in goals:
        status = "MET" if goal.met else "NOT MET"
        lines.append(f"| {goal.goal} | {goal.measured} | {goal.target} | {status} |")
    return "\n".join(lines)


def goals_json(goals: list[Goal]) -> list[dict[str, Any]]:
    return [{**asdict(goal), "status": "MET" if goal.met else "NOT MET"} for goal in goals]


def race_table(title: str, rows: Rows, baselines: Mapping[str, str]) -> str:
    """One race: p50, p10-p90 and CPU per call; ``baselines`` names each row's raw twin."""
    lines = [
        title,
        f"  {'contestant':<44} {'p50 µs':>10} {'p10-p90 µs':>21} {'CPU µs':>10}  vs raw",
    ]
    for name, row in rows.items():
        base = baselines.get(name)
        ratio = ""
        if base is not None and base in rows and base != name:
            ratio = (f"{_ratio(rows, name, base):.2f}x wall, "
                     f"{_ratio(rows, name, base, 'cpu_p50_us'):.2f}x CPU")
        spread = f"{row['p10_us']:.1f}-{row['p90_us']:.1f}"
        lines.append(f"  {name:<44} {row['p50_us']:>10.1f} {spread:>21} "
                     f"{row['cpu_p50_us']:>10.1f}  {ratio}")
    return "\n".join(lines)


def redis_trips_table(trips: Mapping[str, Mapping[str, float]]) -> str:
    lines = [
        "| Redis operation | client round trips | server commands | in scripts | commandstats |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, t in trips.items():
        lines.append(f"| {name} | {t['client_round_trips']:.2f} | {t['server_commands']:.2f} | "
                     f"{t['commands_in_scripts']:.2f} | {t['commandstats_delta']:.2f} |")
    return "\n".join(lines)


def postgres_trips_table(trips: Mapping[str, float]) -> str:
    lines = ["| PostgreSQL operation | round trips |", "| --- | --- |"]
    lines += [f"| {name} | {value:.2f} |" for name, value in trips.items()]
    return "\n".join(lines)


def asyncio_table(rates: Rows) -> str:
    lines = [f"asyncio: {aio.TASKS} tasks, load + append, pool of {aio.POOL} connections",
             f"  {'contestant':<24} {'ops/s (median)':>15} {'min-max':>17} {'CPU µs/op':>10}"]
    for name, row in rates.items():
        spread = f"{row['ops_per_s_min']:.0f}-{row['ops_per_s_max']:.0f}"
        lines.append(f"  {name:<24} {row['ops_per_s']:>15.0f} {spread:>17} "
                     f"{row['cpu_per_op_us']:>10.1f}")
    return "\n".join(lines)
