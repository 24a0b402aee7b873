"""Shared fixtures: real servers, per-run isolation, and the store matrix.

Every run uses its own Redis key prefix and its own PostgreSQL database, and
removes them at the end, so concurrent runs never see each other's data.
Override the servers with ``TIEREDSTORE_TEST_REDIS_URL`` and
``TIEREDSTORE_TEST_PG_URL`` (an admin URL; a database is created per run).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tieredstore import BaseStore, MemoryStore

REDIS_URL = os.environ.get("TIEREDSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "TIEREDSTORE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
RUN_ID = uuid.uuid4().hex[:10]


class FakeClock:
    """An injected clock (seconds since the epoch) that tests move by hand."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class Harness:
    """Builds stores of one configuration and moves its clock.

    ``real_time`` stores (Redis keeps time itself) are advanced by sleeping,
    so TTL tests use sub-second TTLs there.
    """

    kind: str
    factory: Callable[..., BaseStore]
    clock: FakeClock
    real_time: bool
    namespace: str = field(default_factory=lambda: f"ns-{uuid.uuid4().hex[:12]}")
    stores: list[BaseStore] = field(default_factory=list)

    def make(self, *, namespace: str | None = None, **options: Any) -> BaseStore:
        store = self.factory(namespace or self.namespace, self.clock, **options)
        self.stores.append(store)
        return store

    def advance(self, seconds: float) -> None:
        if self.real_time:
            time.sleep(seconds)
        else:
            self.clock.advance(seconds)

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:  # pragma: no cover - CI starts Redis
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_prefix(redis_client: Any) -> Iterator[str]:
    prefix = f"tstest-{RUN_ID}"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}:*", count=1000):
        redis_client.delete(key)


def _create_database(name: str) -> str:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return str(sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))


def _drop_database(name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[Callable[[], str]]:
    """Make fresh PostgreSQL databases on demand; all are dropped at the end."""
    made: list[str] = []

    def make() -> str:
        name = f"tieredstore_test_{RUN_ID}_{len(made)}"
        url = _create_database(name)
        made.append(name)
        return url

    yield make
    for name in made:
        _drop_database(name)


@pytest.fixture(scope="session")
def pg_url(pg_database: Callable[[], str]) -> str:
    """A migrated PostgreSQL database shared by this run's tests."""
    from tieredstore import migrate

    url = pg_database()
    migrate(url)
    return url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Any]:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url, pool_size=10, max_overflow=10)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tieredstore import migrate

    path: Path = tmp_path_factory.mktemp("sqlite") / "archive.db"
    url = f"sqlite:///{path}"
    migrate(url)
    return url


STORE_KINDS = [
    "memory",
    "redis",
    "archive-pg",
    "archive-sqlite",
    "tiered-memory-redis-pg",
    "tiered-memory-redis",
    "tiered-memory-sqlite",
    "tiered-redis-pg",
]


def tiered_factory(
    request: pytest.FixtureRequest, *, memory: bool, redis: bool, archive: str | None, **fixed: Any
) -> Callable[..., BaseStore]:
    """Build TieredStores over the run's servers; options reach every tier that uses them."""
    import sqlalchemy as sa

    from tieredstore.store import TieredStore

    client = request.getfixturevalue("redis_client") if redis else None
    prefix = request.getfixturevalue("redis_prefix") if redis else None
    engine = None
    if archive == "pg":
        engine = request.getfixturevalue("pg_engine")
    elif archive == "sqlite":
        engine = sa.create_engine(request.getfixturevalue("sqlite_url"))
        request.addfinalizer(engine.dispose)

    def make(ns: str, clock: FakeClock, **options: Any) -> BaseStore:
        return TieredStore.from_clients(
            redis=client,
            engine=engine,
            namespace=ns,
            prefix=prefix or "ts",
            memory_max_bytes=64 * 2**20 if memory else None,
            clock=None if redis else clock,
            **{**fixed, **options},
        )

    return make


def _factory(kind: str, request: pytest.FixtureRequest) -> tuple[Callable[..., BaseStore], bool]:
    if kind == "memory":
        return (lambda ns, clock, **kw: MemoryStore(clock=clock, **kw)), False
    if kind == "redis":
        from tieredstore import RedisStore

        client = request.getfixturevalue("redis_client")
        prefix = request.getfixturevalue("redis_prefix")
        return (lambda ns, clock, **kw: RedisStore(client, namespace=ns, prefix=prefix, **kw)), True
    if kind == "archive-pg":
        from tieredstore import ArchiveStore

        engine = request.getfixturevalue("pg_engine")
        return (
            lambda ns, clock, **kw: ArchiveStore(engine, namespace=ns, clock=clock, **kw)
        ), False
    if kind == "archive-sqlite":
        import sqlalchemy as sa

        from tieredstore import ArchiveStore

        url = request.getfixturevalue("sqlite_url")
        engines: list[Any] = []

        def make_sqlite(ns: str, clock: FakeClock, **kw: Any) -> BaseStore:
            if not engines:
                engines.append(sa.create_engine(url))
            return ArchiveStore(engines[0], namespace=ns, clock=clock, **kw)

        request.addfinalizer(lambda: [e.dispose() for e in engines])
        return make_sqlite, False
    if kind.startswith("tiered-"):
        parts = kind.split("-")[1:]
        archive = "pg" if "pg" in parts else "sqlite" if "sqlite" in parts else None
        factory = tiered_factory(
            request, memory="memory" in parts, redis="redis" in parts, archive=archive
        )
        return factory, "redis" in parts
    raise AssertionError(f"unknown store kind {kind}")


@pytest.fixture(params=STORE_KINDS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    factory, real_time = _factory(request.param, request)
    h = Harness(kind=request.param, factory=factory, clock=FakeClock(), real_time=real_time)
    yield h
    h.close()


@pytest.fixture
def store(harness: Harness) -> BaseStore:
    return harness.make()
