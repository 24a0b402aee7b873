"""Running the ``tieredstore`` command as a subprocess against the real servers.

:func:`cli_namespace` seeds a namespace of its own (three sessions of two
users) and yields a :class:`Cli` whose environment points every command at
it; :func:`one_line_error` checks that a failure is one ``Error:`` line with
the right exit code and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.conftest import REDIS_URL
from tieredstore import Message
from tieredstore.store import TieredStore

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "tieredstore"]


@dataclass
class Cli:
    env: dict[str, str]
    store: TieredStore

    @property
    def namespace(self) -> str:
        return self.env["TIEREDSTORE_NAMESPACE"]

    def run(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COMMAND, *args], capture_output=True, text=True,
                              input=input, env={**self.env, **(env or {})}, cwd=ROOT,
                              timeout=120)

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        done = self.run(*args, "--json", env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@contextmanager
def cli_namespace(pg_url: str, pg_engine: sa.Engine, redis_client: Any,
                  redis_prefix: str) -> Iterator[Cli]:
    """A seeded namespace (c-1, c-2 of alice; c-3 of bob) and a :class:`Cli` on it."""
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TIEREDSTORE_REDIS_URL": REDIS_URL,
        "TIEREDSTORE_DATABASE_URL": pg_url,
        "TIEREDSTORE_NAMESPACE": namespace,
        "TIEREDSTORE_PREFIX": redis_prefix,
        "TIEREDSTORE_DURABILITY": "write_through",
        "COLUMNS": "200",
    }
    store = TieredStore.from_clients(redis=redis_client, engine=pg_engine, namespace=namespace,
                                     prefix=redis_prefix, durability="write_through")
    store.save("c-1", [
        Message("system", "You are a support bot."),
        Message("user", "My invoice for March is wrong"),
        Message("assistant", None, tool_calls=[{"id": "t1", "type": "function", "function": {
            "name": "lookup_invoice", "arguments": '{"month": "March"}'}}]),
        {"role": "tool", "tool_call_id": "t1", "content": "invoice 42: 99 EUR"},
        Message("assistant", "Your invoice shows 99 EUR."),
    ], user_id="alice", metadata={"plan": "pro"})
    store.save("c-2", [Message("user", "How do refunds work?")], user_id="alice",
               metadata={"plan": "pro"})
    store.save("c-3", [Message("user", "Refund my invoice please")], user_id="bob",
               metadata={"plan": "free"})
    try:
        yield Cli(env, store)
    finally:
        for sid in ("c-1", "c-2", "c-3"):
            store.delete(sid)
        store.close()


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Check ``done`` failed with exit ``code`` and one ``Error:`` line holding ``words``."""
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
