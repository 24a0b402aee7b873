"""What several benchmarks share: percentiles, bulk loading, key clean-up, servers.

Bulk loading runs the store's real ``save`` script, pipelined: each call is the
first one the store's own save plan yields (the session's keys, its bucket's
indexes and, with a user, that user's index in the bucket), sent through the
store's shell (:meth:`RedisStore._send`: one pipeline on standalone Redis, one
per node on a cluster). What lands in Redis is exactly what ``save`` writes.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.cluster
import sqlalchemy as sa

from tieredstore import Message, RedisStore
from tieredstore.core import Batch, prepare_batch
from tieredstore.migration import migrate
from tieredstore.model import FrozenDict
from tieredstore.tiers.redis import SCRIPTS, Call, Calls

#: The servers benchmarks run against (loopback by default).
REDIS_URL = os.environ.get("TIEREDSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "TIEREDSTORE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def summary_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    """``n``, p50 and p99 in microseconds of samples in nanoseconds."""
    us = [s / 1000 for s in samples_ns]
    return {"n": len(us), "p50_us": percentile(us, 0.50), "p99_us": percentile(us, 0.99)}


@contextmanager
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def interleaved(
    ops: dict[str, Callable[[], Any]], rounds: int, warmup: int
) -> dict[str, list[int]]:
    """Time every op once per round, in turn, so drift hits them all alike (ns)."""
    samples: dict[str, list[int]] = {name: [] for name in ops}
    clock = time.perf_counter_ns
    for round_ in range(warmup + rounds):
        for name, op in ops.items():
            start = clock()
            op()
            elapsed = clock() - start
            if round_ >= warmup:
                samples[name].append(elapsed)
    return samples


# -- clients ----------------------------------------------------------------------------


def _with_scheme(url: str) -> str:
    if "://" not in url:
        url = f"redis://{url}"
    scheme, _, rest = url.partition("://")
    return f"{scheme.removesuffix('+cluster')}://{rest}"


def redis_client(url: str) -> redis.Redis:
    """A bytes client of one server; ``host:port`` means ``redis://host:port``."""
    return redis.Redis.from_url(_with_scheme(url))


def cluster_client(url: str) -> redis.cluster.RedisCluster:
    """A bytes cluster client from any node's URL (``redis://`` or ``redis+cluster://``)."""
    return redis.cluster.RedisCluster.from_url(_with_scheme(url))


def primaries(client: Any) -> list[redis.Redis]:
    """One plain client per server holding data: the server itself, or each primary."""
    if isinstance(client, redis.cluster.RedisCluster):
        return [node.redis_connection for node in client.get_primaries()]
    return [client]


def load_scripts(client: Any) -> None:
    for conn in primaries(client):
        for source in SCRIPTS.values():
            conn.script_load(source)


# -- bulk loading ---------------------------------------------------------------------


def save_call(
    store: RedisStore,
    sid: str,
    batch: Batch,
    *,
    ttl_ms: int | None = None,
    user_id: str | None = None,
    metadata: FrozenDict | None = None,
) -> Call:
    """The script call ``store.save`` starts with for a session that is new."""
    plan = store._ops.save(
        sid, batch, ttl_ms=ttl_ms, metadata=metadata, user_id=user_id, expected_version=None
    )
    call = next(plan)
    plan.close()
    assert isinstance(call, Call) and call.script == "save"
    return call


def bulk_save(
    store: RedisStore,
    sids: Sequence[str],
    messages: Sequence[Message] | Callable[[str], Sequence[Message]],
    *,
    ttl_ms: int | None = None,
    user_of: Callable[[str], str | None] | None = None,
    metadata: FrozenDict | None = None,
    chunk: int = 2000,
) -> float:
    """Create new sessions ``sids`` with the real save script; seconds taken.

    ``messages`` is one list for all or a function of the session id.
    """
    store.exists("layout-probe")  # the store's first call records the bucket count
    load_scripts(store.client)
    fixed = None if callable(messages) else prepare_batch(list(messages), store.limits)
    started = time.perf_counter()
    for first in range(0, len(sids), chunk):
        calls = []
        for sid in sids[first : first + chunk]:
            batch = fixed if fixed is not None else prepare_batch(
                list(messages(sid)), store.limits  # type: ignore[operator]
            )
            calls.append(
                save_call(
                    store,
                    sid,
                    batch,
                    ttl_ms=ttl_ms,
                    user_id=user_of(sid) if user_of is not None else None,
                    metadata=metadata,
                )
            )
        replies = store._send(Calls(calls))
        bad = [r for r in replies if not (isinstance(r, list) and r and r[0] == b"ok")]
        assert not bad, f"save replied {bad[0]!r}"
    return time.perf_counter() - started


# -- clean-up ---------------------------------------------------------------------------


def delete_prefix(client: Any, prefix: str, chunk: int = 5000) -> int:
    """UNLINK every key under ``prefix:`` (every primary of a cluster); how many."""
    removed = 0
    for conn in primaries(client):
        batch: list[bytes] = []
        for key in conn.scan_iter(match=f"{prefix}:*", count=chunk):
            batch.append(key)
            if len(batch) >= chunk:
                removed += _unlink(conn, batch)
                batch = []
        if batch:
            removed += _unlink(conn, batch)
    return removed


def _unlink(conn: redis.Redis, keys: list[bytes]) -> int:
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)  # one key per command: the keys are of many slots
    return sum(int(n) for n in pipe.execute())


# -- a private redis-server -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis(*config: str) -> Iterator[str]:
    """A redis-server of our own on a free loopback port (no persistence), its URL;
    stopped by its PID on exit. ``config``: extra ``--name value`` arguments."""
    binary = shutil.which("redis-server") or os.environ.get("REDIS_SERVER", "redis-server")
    folder = tempfile.mkdtemp(prefix="tsbench-redis-")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", folder,
         "--save", "", "--appendonly", "no", *config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


# -- a scratch PostgreSQL database ----------------------------------------------------


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A database of our own (created through ``admin_url``'s server, migrated,
    dropped on exit); its SQLAlchemy URL."""
    name = f"tieredstore_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Laps:
    """Which buckets a maintenance task has walked to the end of their index,
    seen by wrapping one method of a :class:`RedisStore` (on that instance):
    ``sweep`` (expire) or ``ranked`` (trim). The namespace must be fresh (every
    bucket's cursor at 0), so the first end reached is a whole lap."""

    def __init__(self, store: RedisStore, method: str) -> None:
        self.finished: set[int] = set()
        self.calls = 0
        original: Callable[..., Any] = getattr(store, method)

        def wrapped(bucket: int, start: int, count: int, *rest: Any) -> Any:
            out = original(bucket, start, count, *rest)
            self.calls += 1
            got = out[0] if method == "sweep" else len(out)
            if got < count:
                self.finished.add(bucket)
            return out

        setattr(store, method, wrapped)
        self.buckets = store.bucket_count

    @property
    def lapped(self) -> bool:
        return len(self.finished) == self.buckets
