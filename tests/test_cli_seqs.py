"""Messages carry their seqs through every tier's read path, and ``show`` numbers by them.

A session trimmed to a window keeps its leading system message and the
newest messages; their seqs have a gap where the trim dropped messages, and
every tier (memory, Redis, the archive; each store alone and the tiered
store) must report the real seqs, also with ``last=N``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.cli_harness import Cli, cli_namespace
from tieredstore import Message
from tieredstore.maintenance import archive_idle
from tieredstore.store import TieredStore
from tieredstore.tiers.archive import ArchiveStore
from tieredstore.tiers.memory import MemoryStore
from tieredstore.tiers.redis import RedisStore

SYSTEM = Message("system", "Be brief.")
WINDOW = (0, 4, 5)  # system prompt + the two newest of u0..u4


def _users(*numbers: int) -> list[Message]:
    return [Message("user", f"u{n}") for n in numbers]


@pytest.fixture
def namespace() -> str:
    return f"seqs-{uuid.uuid4().hex[:8]}"


def test_the_tiered_store_reports_seqs_from_memory_redis_and_the_archive(
    redis_client: Any, redis_prefix: str, pg_engine: sa.Engine, namespace: str
) -> None:
    options: dict[str, Any] = {"redis": redis_client, "engine": pg_engine, "namespace": namespace,
                               "prefix": redis_prefix, "max_messages": 3}
    store = TieredStore.from_clients(durability="write_through", **options, listen=False)
    cold = TieredStore.from_clients(memory_max_bytes=None, **options, listen=False)
    try:
        store.save("s", [SYSTEM, *_users(0)])
        assert store.get("s").tier == "redis"  # fills the memory tier
        for n in range(1, 5):
            store.append("s", *_users(n))  # applied to the cached copy too
        hot = store.get("s")
        assert hot.tier == "memory" and hot.seqs == WINDOW
        assert [m.content for m in hot.messages] == ["Be brief.", "u3", "u4"]
        tail = store.get("s", last=2)
        assert tail.tier == "memory" and (tail.seqs, tail.first_seq) == ((4, 5), 4)

        redis = cold.get("s")
        assert redis.tier == "redis" and redis.seqs == WINDOW
        assert cold.get("s", last=1).seqs == (5,)

        archive_idle(cold, archive_after=0)  # the session leaves Redis
        archived = cold.get("s")
        assert archived.tier == "archive" and archived.seqs == WINDOW
        assert cold.get("s", last=2).seqs == (4, 5)
        assert cold.history("s").seqs == [0, 1, 2, 3, 4, 5]  # the archive kept it all
    finally:
        store.delete("s")
        cold.close()
        store.close()


def test_each_store_alone_reports_seqs_after_trimming(
    redis_client: Any, redis_prefix: str, pg_engine: sa.Engine, namespace: str
) -> None:
    history = [SYSTEM, *_users(0, 1, 2, 3, 4)]
    stores = [
        MemoryStore(max_messages=3),
        RedisStore(redis_client, namespace=namespace, prefix=redis_prefix, max_messages=3),
        ArchiveStore(pg_engine, namespace=namespace, max_messages=3),
    ]
    for store in stores:
        try:
            store.save("s", history)
            assert store.get("s").seqs == WINDOW, store.tier
            assert store.get("s", last=2).seqs == (4, 5), store.tier
            store.append("s", *_users(5))
            assert store.get("s").seqs == (0, 5, 6), store.tier
            store.save("s", [SYSTEM])  # a save numbers after the last seq ever used
            assert store.get("s").seqs == (7,), store.tier
            assert store.get("s", last=1).first_seq == 7, store.tier
        finally:
            store.delete("s")
            store.close()


@pytest.fixture
def cli(pg_url: str, pg_engine: sa.Engine, redis_client: Any, redis_prefix: str) -> Iterator[Cli]:
    with cli_namespace(pg_url, pg_engine, redis_client, redis_prefix) as harness:
        yield harness


def _seq_column(table: str) -> list[str]:
    """The first cell of each body row of a rich table."""
    rows = [line for line in table.splitlines() if line.startswith("│")]
    return [row.split("│")[1].strip() for row in rows]


def test_show_numbers_rows_by_seq(cli: Cli, redis_client: Any, pg_engine: sa.Engine) -> None:
    trimmed = TieredStore.from_clients(
        redis=redis_client, engine=pg_engine, namespace=cli.namespace,
        prefix=cli.env["TIEREDSTORE_PREFIX"], max_messages=3, durability="write_through",
        listen=False)
    try:
        trimmed.save("t-1", [SYSTEM, *_users(0, 1, 2, 3, 4)])
        shown = cli.json("show", "t-1")
        assert shown["seqs"] == list(WINDOW)
        assert [m["content"] for m in shown["messages"]] == ["Be brief.", "u3", "u4"]
        table = cli.run("show", "t-1")
        assert table.returncode == 0, table.stderr
        assert _seq_column(table.stdout) == ["0", "4", "5"]
        assert cli.json("show", "t-1", "--last", "1")["seqs"] == [5]
        assert _seq_column(cli.run("show", "t-1", "--last", "2").stdout) == ["4", "5"]
        full = cli.json("show", "t-1", "--full")
        assert full["seqs"] == [0, 1, 2, 3, 4, 5]
        assert [m["content"] for m in full["messages"]][1:] == ["u0", "u1", "u2", "u3", "u4"]
        assert cli.json("show", "t-1", "--full", "--last", "2")["seqs"] == [4, 5]
        assert cli.json("show", "c-1")["seqs"] == [0, 1, 2, 3, 4]  # untrimmed: from 0
    finally:
        trimmed.delete("t-1")
        trimmed.close()
