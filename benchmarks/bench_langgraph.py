"""The LangGraph checkpointer against PostgresSaver: ``python -m benchmarks.bench_langgraph``.

Two threads per saver hold a chat agent's state after 20 checkpoints: a
``messages`` channel of LangChain messages (human/AI pairs, ~300 characters
each; the AI ones with a tool call and usage metadata) plus two small
channels — ``chat``: 40 messages (decoding them is most of a read, for every
saver), ``small``: 4 messages (the store's own cost shows). Timed,
interleaved round by round (each op once per round, in turn, so drift hits
all alike), after a warm-up:

* ``get_tuple`` of the thread's newest checkpoint (no ``checkpoint_id``),
  pending writes included;
* ``put`` of a next checkpoint (parent: the newest; ``messages`` changed,
  as a turn changes it; the other channels not), from checkpoints built
  before the clock starts.

Savers: ``TieredCheckpointSaver`` on Redis + PostgreSQL in ``archive`` mode
(a put is one Redis script), with a memory tier, and in ``write_through``
mode (a put is a Redis script and an archive transaction);
``PostgresSaver`` (langgraph-checkpoint-postgres) on the same scratch
database; ``RedisSaver`` (langgraph-checkpoint-redis) where the server has
the RediSearch and RedisJSON modules it needs (a private redis-server is
tried; without the modules it is reported as skipped, with the server's
answer). Reported: p50/p99 in microseconds and each saver's p50 ratio
against PostgresSaver's on the same state (above 1: faster). Acceptance:
the tiered saver's ``get_tuple`` and ``put`` (``archive`` mode) p50 at least
as fast as PostgresSaver's, for both states.

Keys live under a unique prefix, removed at the end; the scratch database
is dropped. Results go to ``benchmarks/results/langgraph.json``.
``--quick`` runs fewer rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint
from langgraph.checkpoint.base.id import uuid6

from benchmarks.common import (
    PG_ADMIN_URL,
    REDIS_URL,
    delete_prefix,
    no_gc,
    private_redis,
    scratch_database,
    summary_ns,
)
from tieredstore.integrations.langgraph import TieredCheckpointSaver

RESULTS = Path(__file__).parent / "results" / "langgraph.json"
HISTORY = 20
STATES = {"chat": 40, "small": 4}


def _messages(count: int) -> list[Any]:
    out: list[Any] = []
    for i in range(count // 2):
        out.append(HumanMessage(f"question {i}: " + "where is my parcel, it was due " * 9,
                                id=str(uuid.uuid4())))
        out.append(AIMessage(
            f"answer {i}: " + "it left the depot this morning and " * 8, id=str(uuid.uuid4()),
            tool_calls=[{"name": "track", "args": {"parcel": f"P{i}"}, "id": f"call_{i}"}],
            usage_metadata={"input_tokens": 120 + i, "output_tokens": 40,
                            "total_tokens": 160 + i}))
    return out


def _checkpoint(step: int, saver: BaseCheckpointSaver[Any], previous: Checkpoint | None,
                messages: int) -> tuple[Checkpoint, dict[str, Any]]:
    """A checkpoint of the agent after ``step`` turns, and its new versions."""
    versions = dict(previous["channel_versions"]) if previous else {}
    versions["messages"] = saver.get_next_version(versions.get("messages"), None)
    new = {"messages": versions["messages"]}
    if previous is None:
        for channel in ("user", "step_count"):
            versions[channel] = saver.get_next_version(None, None)
            new[channel] = versions[channel]
    checkpoint: Checkpoint = {
        "v": 4, "id": str(uuid6(clock_seq=step)), "ts": "2026-01-01T00:00:00+00:00",
        "channel_values": {"messages": _messages(messages), "user": {"id": "u-42", "plan": "pro"},
                           "step_count": step},
        "channel_versions": versions,
        "versions_seen": {"agent": {"messages": versions["messages"]}},
        "updated_channels": ["messages"],
    }
    return checkpoint, new


class Thread:
    """One saver's thread: its history, its next checkpoints, the two timed ops."""

    def __init__(self, saver: BaseCheckpointSaver[Any], rounds: int, messages: int) -> None:
        self.saver = saver
        self.messages = messages
        self.config: Any = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex[:8]}",
                                             "checkpoint_ns": ""}}
        previous = None
        for step in range(HISTORY):
            previous = self._put(step, previous)
        self.saver.put_writes(self.config, [("messages", _messages(2))], "task-0")
        self.upcoming = []
        last = previous
        for step in range(HISTORY, HISTORY + rounds + 1):
            checkpoint, new = _checkpoint(step, saver, last, messages)
            self.upcoming.append((checkpoint, new, step))
            last = checkpoint

    def _put(self, step: int, previous: Checkpoint | None) -> Checkpoint:
        checkpoint, new = _checkpoint(step, self.saver, previous, self.messages)
        self.config = self.saver.put(self.config, checkpoint,
                                     {"source": "loop", "step": step, "parents": {}}, new)
        return checkpoint

    def get_tuple(self) -> None:
        tup = self.saver.get_tuple({"configurable": {"thread_id": self.config["configurable"][
            "thread_id"], "checkpoint_ns": ""}})
        assert tup is not None
        assert len(tup.checkpoint["channel_values"]["messages"]) == self.messages

    def put(self) -> None:
        checkpoint, new, step = self.upcoming.pop(0)
        self.config = self.saver.put(self.config, checkpoint,
                                     {"source": "loop", "step": step, "parents": {}}, new)


@contextmanager
def redis_saver() -> Iterator[tuple[BaseCheckpointSaver[Any] | None, str]]:
    """langgraph-checkpoint-redis's RedisSaver on a private server, or why it cannot run."""
    try:
        from langgraph.checkpoint.redis import RedisSaver
    except ImportError as exc:
        yield None, f"not installed: {exc}"
        return
    with private_redis() as url, RedisSaver.from_conn_string(url) as saver:
        try:
            saver.setup()
        except Exception as exc:  # redis-py's or redisvl's error for the missing FT.* commands
            modules = redis.Redis.from_url(url).module_list()
            yield None, (f"needs the RediSearch and RedisJSON modules (server modules: "
                         f"{modules or 'none'}): {str(exc).splitlines()[0]}")
        else:
            yield saver, ""


def shuffled(ops: dict[str, Callable[[], Any]], rounds: int, warmup: int,
             seed: int = 7) -> dict[str, list[int]]:
    """Time every op once per round, in a new random order each round (ns)."""
    shuffle = random.Random(seed).shuffle
    names = list(ops)
    samples: dict[str, list[int]] = {name: [] for name in ops}
    clock = time.perf_counter_ns
    for round_ in range(warmup + rounds):
        shuffle(names)
        for name in names:
            start = clock()
            ops[name]()
            elapsed = clock() - start
            if round_ >= warmup:
                samples[name].append(elapsed)
    return samples


def run(rounds: int, warmup: int) -> dict[str, Any]:
    from langgraph.checkpoint.postgres import PostgresSaver

    prefix = f"tsbench-lg-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    report: dict[str, Any] = {"rounds": rounds, "history": HISTORY, "states": STATES}
    with ExitStack() as stack, scratch_database(PG_ADMIN_URL) as url:
        stack.callback(delete_prefix, client, prefix)
        engine = sa.create_engine(url, pool_size=5)
        stack.callback(engine.dispose)

        def tiered(**options: Any) -> TieredCheckpointSaver:
            saver = TieredCheckpointSaver.from_clients(
                redis=client, engine=engine, namespace=f"b{uuid.uuid4().hex[:8]}",
                prefix=prefix, **options)
            stack.callback(saver.close)
            return saver

        savers: dict[str, BaseCheckpointSaver[Any]] = {
            "tiered": tiered(),
            "tiered_memory": tiered(memory_max_bytes=64 * 2**20),
            "tiered_write_through": tiered(durability="write_through"),
        }
        psycopg_url = sa.make_url(url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        postgres = stack.enter_context(PostgresSaver.from_conn_string(psycopg_url))
        postgres.setup()
        savers["postgres"] = postgres
        other, why = stack.enter_context(redis_saver())
        if other is not None:
            savers["redis_saver"] = other
        else:
            report["redis_saver_skipped"] = why
        ops: dict[str, Callable[[], Any]] = {}
        for state, messages in STATES.items():
            for name, saver in savers.items():
                thread = Thread(saver, rounds + warmup, messages)
                ops[f"{state}.{name}.get_tuple"] = thread.get_tuple
                ops[f"{state}.{name}.put"] = thread.put
        with no_gc():
            samples = shuffled(ops, rounds, warmup)
    results = {op: summary_ns(s) for op, s in samples.items()}
    report["results"] = results
    ratios = {}
    for op in results:
        state, name, call = op.split(".")
        if name != "postgres":
            base = results[f"{state}.postgres.{call}"]["p50_us"]
            ratios[op] = round(base / results[op]["p50_us"], 2)
    report["p50_ratio_vs_postgres"] = ratios
    report["accepted"] = all(ratios[f"{state}.tiered.{call}"] >= 1
                             for state in STATES for call in ("get_tuple", "put"))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    args = parser.parse_args(argv)
    rounds, warmup = (200, 20) if args.quick else (2000, 100)
    report = run(rounds, warmup)
    width = max(len(op) for op in report["results"])
    print(f"{'op':<{width}}  {'p50 us':>9}  {'p99 us':>9}  {'x postgres p50':>14}")
    for op, s in report["results"].items():
        ratio = report["p50_ratio_vs_postgres"].get(op, 1.0)
        print(f"{op:<{width}}  {s['p50_us']:9.1f}  {s['p99_us']:9.1f}  {ratio:14.2f}")
    if "redis_saver_skipped" in report:
        print(f"RedisSaver skipped: {report['redis_saver_skipped']}")
    print("acceptance (tiered get_tuple and put at least as fast as PostgresSaver):",
          "met" if report["accepted"] else "MISSED")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
