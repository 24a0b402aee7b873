"""The OpenAI Agents SDK's own session tests, with ``TieredSession`` as every backend.

``tests/test_openai_agents_sdk.py`` copies this file as the root
``conftest.py`` beside the SDK's tests. Before any test module is imported it
replaces the SDK's ``SQLiteSession``, ``SQLAlchemySession`` and
``RedisSession`` — wherever the tests import them from — by ``TieredSession``
subclasses that keep those classes' constructors (and ``from_url``,
``close``, ``ping``, ``engine.dispose()``) and keep each session in an
``AsyncTieredStore`` of its own, on the Redis and PostgreSQL named by
``TS_SDK_REDIS_URL`` and ``TS_SDK_DATABASE_URL``, under the key prefix
``TS_SDK_PREFIX``, with a memory tier and ``TS_SDK_DURABILITY``.

Every database the tests open — a SQLite path, a URL, an engine, a client
with a key prefix — is a namespace of its own (an in-memory one a new
namespace per session), so tests share data exactly when the SDK's backends
would. The tests named in ``excluded.json`` (those that inspect a backend's
internals) are deselected; building one of the SDK's own backends, or a
test module naming one, is an error. ``RedisSession._owns_client`` reads
the session's ``owns_store``. Async tests run here, each on a new event
loop, so pytest-asyncio is not needed.

CPython 3.11 before 3.11.8 keeps the AST-to-object recursion counter in
global state (CPython gh-106905): when a garbage collection switches threads
in the middle of ``ast.parse`` and another thread parses too (formatting a
logged traceback, say), ``SystemError: AST constructor recursion depth
mismatch`` follows. pytest parses a test file to report its failure, and a
``SystemError`` there is an INTERNALERROR that ends the run, so failures are
reported with the collector paused.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import uuid
import weakref
from collections.abc import Generator, Hashable
from pathlib import Path
from typing import Any

import agents
import agents.extensions.memory
import agents.memory
import pytest
from agents.extensions.memory import redis_session, sqlalchemy_session

from tieredstore.aio import AsyncTieredStore
from tieredstore.errors import BackendUnavailable
from tieredstore.integrations.openai_agents import TieredSession

STORE_OPTIONS = {
    "redis_url": os.environ["TS_SDK_REDIS_URL"],
    "database_url": os.environ["TS_SDK_DATABASE_URL"],
    "prefix": os.environ["TS_SDK_PREFIX"],
    "durability": os.environ.get("TS_SDK_DURABILITY", "write_through"),
    "memory_max_bytes": 16 * 2**20,
}
TEST_TIMEOUT = float(os.environ.get("TS_SDK_TEST_TIMEOUT", "120"))

_by_key: dict[Hashable, str] = {}
_by_object: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _namespace(key: Hashable | None = None, owner: Any = None) -> str:
    """The namespace of one database: per ``key``, per ``owner`` object, or new."""
    if owner is not None:
        return _by_object.setdefault(owner, f"sdk-{uuid.uuid4().hex[:16]}")
    if key is None:
        return f"sdk-{uuid.uuid4().hex[:16]}"
    return _by_key.setdefault(key, f"sdk-{uuid.uuid4().hex[:16]}")


def _store(namespace: str) -> AsyncTieredStore:
    return AsyncTieredStore.from_url(namespace=namespace, **STORE_OPTIONS)


class SQLiteSession(TieredSession):
    """``SQLiteSession(session_id, db_path=":memory:", ...)``: one namespace per file."""

    def __init__(
        self,
        session_id: str,
        db_path: str | Path = ":memory:",
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        path = str(db_path)
        key = None if path == ":memory:" else ("sqlite", str(Path(path).resolve()),
                                               sessions_table, messages_table)
        super().__init__(_store(_namespace(key)), session_id,
                         session_settings=session_settings, owns_store=True)


class _OwnEngine:
    """Stands in for the engine ``SQLAlchemySession.from_url`` would have made."""

    def __init__(self, session: TieredSession) -> None:
        self._session = session

    async def dispose(self) -> None:
        await self._session.aclose()


_FROM_URL: Any = object()


class SQLAlchemySession(TieredSession):
    """``SQLAlchemySession(session_id, engine=...)`` / ``.from_url(session_id, url=...)``."""

    def __init__(
        self,
        session_id: str,
        *,
        engine: Any,
        create_tables: bool = False,
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
        ensure_ascii: bool = True,
        _url: str | None = None,
    ) -> None:
        if engine is _FROM_URL:
            key = None if _url is None or ":memory:" in _url else ("sqlalchemy", _url)
            namespace = _namespace(key)
        else:
            namespace = _namespace(owner=engine.sync_engine)
        super().__init__(_store(namespace), session_id,
                         session_settings=session_settings, owns_store=True)
        self.engine = _OwnEngine(self) if engine is _FROM_URL else engine

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        engine_kwargs: dict[str, Any] | None = None,
        session_settings: Any = None,
        **kwargs: Any,
    ) -> SQLAlchemySession:
        return cls(session_id, engine=_FROM_URL, session_settings=session_settings,
                   _url=url, **kwargs)


class RedisSession(TieredSession):
    """``RedisSession(session_id, redis_client=...)`` / ``.from_url(session_id, url=...)``.

    Like the SDK's, a session over a client it was given does not close on
    :meth:`close` (its store is closed when the test's loop shuts down).
    """

    def __init__(
        self,
        session_id: str,
        *,
        redis_client: Any,
        key_prefix: str = "agents:session",
        ttl: int | None = None,
        session_settings: Any = None,
        _url: str | None = None,
    ) -> None:
        server = ("redis", _url) if _url is not None else _namespace(owner=redis_client)
        super().__init__(_store(_namespace((server, key_prefix))), session_id, ttl=ttl,
                         session_settings=session_settings, owns_store=_url is not None)

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        redis_kwargs: dict[str, Any] | None = None,
        session_settings: Any = None,
        **kwargs: Any,
    ) -> RedisSession:
        return cls(session_id, redis_client=None, session_settings=session_settings,
                   _url=url, **kwargs)

    @property
    def _owns_client(self) -> bool:
        """``RedisSession``'s ownership flag: whether :meth:`close` closes the store."""
        return self.owns_store

    async def close(self) -> None:
        await self.aclose()

    async def ping(self) -> bool:
        targets = self._open()
        try:
            await targets["store"].exists(self.session_id)
        except BackendUnavailable:
            return False
        return True


_REPLACED: dict[type[Any], type[TieredSession]] = {
    agents.memory.SQLiteSession: SQLiteSession,
    sqlalchemy_session.SQLAlchemySession: SQLAlchemySession,
    redis_session.RedisSession: RedisSession,
}


def _refuse(self: Any, *args: Any, **kwargs: Any) -> None:
    raise AssertionError(f"the SDK's own {type(self).__name__} was built, not a TieredSession")


for _original in _REPLACED:
    _original.__init__ = _refuse  # a path the swap below misses fails loudly

agents.SQLiteSession = SQLiteSession
agents.memory.SQLiteSession = SQLiteSession
sqlalchemy_session.SQLAlchemySession = SQLAlchemySession
agents.extensions.memory.SQLAlchemySession = SQLAlchemySession
redis_session.RedisSession = RedisSession
agents.extensions.memory.RedisSession = RedisSession


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests of ``excluded.json``: ``{file: {test name: reason}}``.

    Also checks that every test module names the replacements, never the
    SDK's own backends.
    """
    excluded = json.loads((Path(__file__).parent / "excluded.json").read_text())
    kept, dropped = [], []
    for item in items:
        module = getattr(item, "module", None)
        for original, replacement in _REPLACED.items():
            found = getattr(module, original.__name__, replacement)
            assert found is replacement, f"{item.nodeid} uses the SDK's own {found!r}"
        file = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        name = getattr(item, "originalname", item.name)
        (dropped if name in excluded.get(file, {}) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a coroutine test on a new event loop, bounded by ``TS_SDK_TEST_TIMEOUT``."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), TEST_TIMEOUT))
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport() -> Generator[None, None, None]:
    """Build each report (a failure's traceback included) with the collector paused."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()
