"""Interleaved timing with wall and client CPU time per call.

The scheme of :func:`benchmarks.common.interleaved` (every contestant once
per round, in turn, so drift hits them all alike), with the calling
thread's CPU time (``time.thread_time_ns``) taken around each call as well.
The wall clock is read inside the CPU bracket, so the CPU clock's own cost
(a system call, about 0.7 µs here) is not in the wall time; it is in the CPU
time, which the ``timer floor`` contestant measures where it matters.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import no_gc, percentile


@dataclass
class Contestant:
    """One timed call; ``after`` runs untimed after it (e.g. trimming a peer
    back to its size); ``group`` says whose it is: ``tieredstore``, ``raw`` or ``peer``."""

    name: str
    call: Callable[[], Any]
    group: str
    after: Callable[[], Any] | None = None


@dataclass
class Samples:
    wall_ns: list[int] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)


def race(contestants: Sequence[Contestant], rounds: int, warmup: int) -> dict[str, Samples]:
    """Time every contestant once per round, in turn, with the cyclic GC paused.

    The order of each round is a fresh (seeded) shuffle, so no contestant
    always follows the same one: what ran before warms or cools the caches.
    """
    samples = {c.name: Samples() for c in contestants}
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    order = list(contestants)
    shuffle = random.Random(len(order)).shuffle
    with no_gc():
        for round_ in range(warmup + rounds):
            shuffle(order)
            for contestant in order:
                cpu_start = cpu()
                start = wall()
                contestant.call()
                end = wall()
                cpu_end = cpu()
                if contestant.after is not None:
                    contestant.after()
                if round_ >= warmup:
                    taken = samples[contestant.name]
                    taken.wall_ns.append(end - start)
                    taken.cpu_ns.append(cpu_end - cpu_start)
    return samples


def summary(samples: Samples, group: str) -> dict[str, Any]:
    """p10/p50/p90 of wall time and p50 of CPU time, in microseconds."""
    wall = [s / 1000 for s in samples.wall_ns]
    cpu = [s / 1000 for s in samples.cpu_ns]
    return {
        "group": group,
        "n": len(wall),
        "p10_us": percentile(wall, 0.10),
        "p50_us": percentile(wall, 0.50),
        "p90_us": percentile(wall, 0.90),
        "cpu_p50_us": percentile(cpu, 0.50),
    }


def run_race(
    contestants: Sequence[Contestant], rounds: int, warmup: int | None = None
) -> dict[str, dict[str, Any]]:
    """:func:`race` then :func:`summary` of each contestant, in race order."""
    warmup = max(rounds // 10, 5) if warmup is None else warmup
    samples = race(contestants, rounds, warmup)
    return {c.name: summary(samples[c.name], c.group) for c in contestants}
