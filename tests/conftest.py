"""Shared fixtures: real servers, per-run isolation, and the store matrix.

Every run uses its own Redis key prefix and its own PostgreSQL database, and
removes them at the end, so concurrent runs never see each other's data.
Override the servers with ``TIEREDSTORE_TEST_REDIS_URL`` and
``TIEREDSTORE_TEST_PG_URL`` (an admin URL; a database is created per run);
Redis Cluster tests use ``TIEREDSTORE_TEST_CLUSTER_URL`` or a private cluster.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
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
    factory: Callable[..., Any]
    clock: FakeClock
    real_time: bool
    namespace: str = field(default_factory=lambda: f"ns-{uuid.uuid4().hex[:12]}")
    stores: list[Any] = field(default_factory=list)

    def make(self, *, namespace: str | None = None, **options: Any) -> Any:
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
def async_pg_engine(pg_url: str, loop_thread: LoopThread) -> Iterator[Any]:
    """An async engine (psycopg 3) on the run's migrated database, used on the loop thread."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(pg_url, pool_size=10, max_overflow=10)
    yield engine
    loop_thread.run(engine.dispose())


@pytest.fixture(scope="session")
def async_sqlite_engine(sqlite_url: str, loop_thread: LoopThread) -> Iterator[Any]:
    """An async engine (aiosqlite) on the run's migrated SQLite file."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://", 1))
    yield engine
    loop_thread.run(engine.dispose())


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tieredstore import migrate

    path: Path = tmp_path_factory.mktemp("sqlite") / "archive.db"
    url = f"sqlite:///{path}"
    migrate(url)
    return url


SYNC_KINDS = [
    "memory",
    "redis",
    "archive-pg",
    "archive-sqlite",
    "tiered-memory-redis-pg",
    "tiered-memory-redis",
    "tiered-memory-sqlite",
    "tiered-redis-pg",
    "redis-cluster",
    "tiered-memory-redis-cluster-pg",
]
ASYNC_KINDS = [f"async-{kind}" for kind in SYNC_KINDS]
STORE_KINDS = SYNC_KINDS + ASYNC_KINDS


class LoopThread:
    """One asyncio event loop running on a daemon thread.

    The async stores under test live on it; :meth:`run` submits a coroutine
    from any thread and waits for its result (or exception).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="tieredstore-test-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class SyncProxy:
    """A synchronous view of an async object: each coroutine runs on the loop thread.

    Coroutine methods become blocking calls, an async context manager a sync
    one, and what ``lock()``/``conversation()`` return is proxied in turn;
    everything else is passed through.
    """

    def __init__(self, target: Any, loop: LoopThread) -> None:
        self.target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.target, name)
        loop = self._loop
        if inspect.iscoroutinefunction(attr):

            def call(*args: Any, **kwargs: Any) -> Any:
                return loop.run(attr(*args, **kwargs))

            return call
        if name in ("lock", "conversation"):
            return lambda *args, **kwargs: SyncProxy(attr(*args, **kwargs), loop)
        return attr

    def __enter__(self) -> Any:
        entered = self._loop.run(self.target.__aenter__())
        return self if entered is self.target else entered

    def __exit__(self, *exc: Any) -> None:
        self._loop.run(self.target.__aexit__(*exc))


class SyncFacade(SyncProxy):
    """A synchronous view of an async store (see :class:`SyncProxy`).

    It lets the conformance suite run its very test functions against the
    async stores; ``close()`` and ``with`` map to ``aclose()``.
    """

    @property
    def async_store(self) -> Any:
        return self.target

    def close(self) -> None:
        self._loop.run(self.target.aclose())

    def __enter__(self) -> SyncFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bridge(name: str) -> Callable[..., Any]:
    def method(self: SyncFacade, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(getattr(self.target, name)(*args, **kwargs))

    method.__name__ = name
    return method


# The StateStore protocol's methods, defined on the class so that
# isinstance(facade, StateStore) holds however the check looks attributes up.
for _name in ("save", "load", "delete", "list"):
    setattr(SyncFacade, _name, _bridge(_name))


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="session")
def async_redis_client(loop_thread: LoopThread) -> Iterator[Any]:
    """A ``redis.asyncio`` client used on the loop thread."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_URL)
    yield client
    loop_thread.run(client.aclose())


def _cluster_answers(url: str) -> bool:
    """Whether a Redis Cluster at ``url`` answers PING and reports cluster_state ok."""
    from redis.cluster import RedisCluster

    try:
        client = RedisCluster.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    except Exception:
        return False
    try:
        return bool(client.ping()) and client.cluster_info().get("cluster_state") == "ok"
    except Exception:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A Redis Cluster URL: ``TIEREDSTORE_TEST_CLUSTER_URL`` when it answers, else a
    private 3-primary, 3-replica cluster on free ports, stopped at the session's end."""
    url = os.environ.get("TIEREDSTORE_TEST_CLUSTER_URL")
    if url and _cluster_answers(url):
        yield url
        return
    from tests.servers import RedisClusterServers

    with RedisClusterServers() as servers:
        yield servers.url


@pytest.fixture(scope="session")
def cluster_client(cluster_url: str, redis_prefix: str) -> Iterator[Any]:
    """A sync ``RedisCluster`` client; the run's keys (those containing ``redis_prefix``)
    are deleted from every primary at the session's end."""
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(cluster_url)
    yield client
    try:
        keys = client.scan_iter(
            match=f"*{redis_prefix}*", count=1000, target_nodes=RedisCluster.PRIMARIES
        )
        for key in list(keys):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="session")
def async_cluster_client(
    cluster_url: str, cluster_client: Any, loop_thread: LoopThread
) -> Iterator[Any]:
    """A ``redis.asyncio`` ``RedisCluster`` made and used on the loop thread
    (``cluster_client`` deletes the run's keys at the end)."""
    from redis.asyncio.cluster import RedisCluster

    async def make() -> Any:
        client = RedisCluster.from_url(cluster_url)
        await client.initialize()
        return client

    client = loop_thread.run(make())
    yield client
    loop_thread.run(client.aclose())


def tiered_factory(
    request: pytest.FixtureRequest,
    *,
    memory: bool,
    redis: bool,
    archive: str | None,
    asynchronous: bool = False,
    cluster: bool = False,
    **fixed: Any,
) -> Callable[..., Any]:
    """Build TieredStores (or AsyncTieredStores) over the run's servers
    (``cluster``: on the Redis Cluster).

    Options reach every tier that uses them.
    """
    import sqlalchemy as sa

    from tieredstore.aio import AsyncTieredStore
    from tieredstore.store import TieredStore

    client_fixture = ("async_" if asynchronous else "") + (
        "cluster_client" if cluster else "redis_client")
    client = request.getfixturevalue(client_fixture) if redis else None
    prefix = request.getfixturevalue("redis_prefix") if redis else None
    engine = None
    if archive == "pg":
        engine = request.getfixturevalue("async_pg_engine" if asynchronous else "pg_engine")
    elif archive == "sqlite":
        if asynchronous:
            engine = request.getfixturevalue("async_sqlite_engine")
        else:
            engine = sa.create_engine(request.getfixturevalue("sqlite_url"))
            request.addfinalizer(engine.dispose)
    cls: Any = AsyncTieredStore if asynchronous else TieredStore

    def make(ns: str, clock: FakeClock, **options: Any) -> Any:
        return cls.from_clients(
            redis=client,
            engine=engine,
            namespace=ns,
            prefix=prefix or "ts",
            memory_max_bytes=64 * 2**20 if memory else None,
            clock=None if redis else clock,
            **{**fixed, **options},
        )

    return make


def _factory(kind: str, request: pytest.FixtureRequest) -> tuple[Callable[..., Any], bool]:
    if kind.startswith("async-"):
        make_async, real_time = _async_factory(kind.removeprefix("async-"), request)
        loop = request.getfixturevalue("loop_thread")

        def make_facade(ns: str, clock: FakeClock, **options: Any) -> Any:
            return SyncFacade(make_async(ns, clock, **options), loop)

        return make_facade, real_time
    if kind == "memory":
        return (lambda ns, clock, **kw: MemoryStore(clock=clock, **kw)), False
    if kind in ("redis", "redis-cluster"):
        from tieredstore import RedisStore

        client = request.getfixturevalue("cluster_client" if "cluster" in kind else "redis_client")
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
            request, memory="memory" in parts, redis="redis" in parts, archive=archive,
            cluster="cluster" in parts,
        )
        return factory, "redis" in parts
    raise AssertionError(f"unknown store kind {kind}")


def _async_factory(kind: str, request: pytest.FixtureRequest) -> tuple[Callable[..., Any], bool]:
    """Async twins of the configurations above (wrapped in a SyncFacade by the caller)."""
    if kind == "memory":
        from tieredstore.aio import AsyncMemoryStore

        return (lambda ns, clock, **kw: AsyncMemoryStore(clock=clock, **kw)), False
    if kind in ("redis", "redis-cluster"):
        from tieredstore.tiers.redis import AsyncRedisStore

        client = request.getfixturevalue(
            "async_cluster_client" if "cluster" in kind else "async_redis_client")
        prefix = request.getfixturevalue("redis_prefix")
        return (
            lambda ns, clock, **kw: AsyncRedisStore(client, namespace=ns, prefix=prefix, **kw)
        ), True
    if kind.startswith("archive-"):
        from tieredstore.tiers.archive import AsyncArchiveStore

        fixture = "async_pg_engine" if kind == "archive-pg" else "async_sqlite_engine"
        engine = request.getfixturevalue(fixture)
        return (
            lambda ns, clock, **kw: AsyncArchiveStore(engine, namespace=ns, clock=clock, **kw)
        ), False
    if kind.startswith("tiered-"):
        parts = kind.split("-")[1:]
        archive = "pg" if "pg" in parts else "sqlite" if "sqlite" in parts else None
        factory = tiered_factory(
            request,
            memory="memory" in parts,
            redis="redis" in parts,
            archive=archive,
            asynchronous=True,
            cluster="cluster" in parts,
        )
        return factory, "redis" in parts
    raise AssertionError(f"unknown async store kind {kind}")


@pytest.fixture(params=STORE_KINDS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    factory, real_time = _factory(request.param, request)
    h = Harness(kind=request.param, factory=factory, clock=FakeClock(), real_time=real_time)
    yield h
    h.close()


@pytest.fixture
def store(harness: Harness) -> Any:
    """A store of the configuration under test (async ones behind a SyncFacade)."""
    return harness.make()


@pytest.fixture
def make_tiered(
    redis_client: Any, redis_prefix: str, pg_engine: Any, namespace: str
) -> Iterator[Callable[..., Any]]:
    """``TieredStore.from_clients`` on the shared Redis and PostgreSQL, in the
    test module's ``namespace``; every store made is closed at the end."""
    from tieredstore.store import TieredStore

    made: list[TieredStore] = []

    def make(**options: Any) -> TieredStore:
        options.setdefault("redis", redis_client)
        options.setdefault("engine", pg_engine)
        store = TieredStore.from_clients(namespace=namespace, prefix=redis_prefix, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def proxied_pg(pg_url: str) -> Iterator[tuple[Any, Any]]:
    """``(proxy, engine)``: the run's PostgreSQL behind a TCP proxy the test can cut
    (``proxy.down()``/``up()``) and an engine that connects through it."""
    import sqlalchemy as sa

    from tests.servers import TcpProxy

    target = sa.make_url(pg_url)
    proxy = TcpProxy(target.port or 5432).up()
    engine = sa.create_engine(
        target.set(host="127.0.0.1", port=proxy.port),
        pool_pre_ping=True,
        connect_args={"connect_timeout": 2},
    )
    yield proxy, engine
    proxy.down()
    engine.dispose()
