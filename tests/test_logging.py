"""One WARNING per degraded-state change, never one per call.

The archive cut and restored (PostgreSQL behind a TCP proxy), an async
store's Redis cut and restored, and a store started while Redis is down:
each change of state is logged once, however many calls fail or fall back
in between. Waits poll for an outcome, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import REDIS_URL
from tests.metrics_scrape import wait_for
from tests.servers import RedisServer, TcpProxy, free_port
from tieredstore import BackendUnavailable, SessionNotFound
from tieredstore.store import TieredStore

pytestmark = pytest.mark.slow


def msg(i: int) -> dict[str, Any]:
    return {"role": "user", "content": f"message {i}"}


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("tieredstore")]


def count(lines: list[str], pattern: str) -> int:
    return sum(1 for line in lines if re.search(pattern, line))


@pytest.fixture
def namespace() -> str:
    return f"logging-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="tieredstore")
    return caplog


def test_archive_down_and_back_is_logged_once_each(
    proxied_pg: tuple[TcpProxy, Any], redis_client: Any, redis_prefix: str, namespace: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    proxy, engine = proxied_pg
    store = TieredStore.from_clients(redis=redis_client, engine=engine, namespace=namespace,
                                     prefix=redis_prefix)
    try:
        store.save("hot", [msg(0)])
        proxy.down()

        def failing_fast() -> bool:
            with pytest.raises(BackendUnavailable):
                store.load("cold")  # only the archive could say whether it exists
            assert store.archive is not None
            return store.archive.breaker.state == "open"

        wait_for(failing_fast, 30, "the archive breaker to open")
        for i in range(50):  # hot sessions go on; cold reads fail fast, silently
            store.append("hot", msg(i + 1))
            with pytest.raises(BackendUnavailable):
                store.load("cold")
        assert count(warnings(logs), "database unreachable") == 1
        proxy.up()

        def answering() -> bool:
            try:
                store.load("cold")
            except SessionNotFound:
                return True
            except BackendUnavailable:
                return False
            raise AssertionError("a session nobody wrote")

        wait_for(answering, 30, "the archive to answer again")
        assert len(store.load("hot")) == 51
    finally:
        store.close()
    lines = warnings(logs)
    assert count(lines, r"database unreachable: circuit breaker opened") == 1, lines
    assert count(lines, r"database reachable again") == 1, lines
    assert len(lines) == 2, lines


def test_async_store_redis_down_and_back_is_logged_once_each(
    redis_prefix: str, namespace: str, logs: pytest.LogCaptureFixture
) -> None:
    from tieredstore.aio import AsyncTieredStore

    port = redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs["port"]
    proxy = TcpProxy(port).up()

    async def work() -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=1,
                                     socket_connect_timeout=1,
                                     retry=redis.asyncio.retry.Retry(NoBackoff(), 0))
        store = AsyncTieredStore.from_clients(
            redis=client, engine=None, namespace=namespace, prefix=redis_prefix)
        try:
            await store.save("a", [msg(0)])
            assert store.listener is not None and store.redis is not None
            breaker = store.redis.breaker

            def state() -> str:
                return breaker.state

            proxy.down()
            while state() != "open":  # bounded: three failures open it
                with pytest.raises(BackendUnavailable):
                    await store.append("a", msg(1))
            for _ in range(20):
                with pytest.raises(BackendUnavailable):
                    await store.append("a", msg(1))
            proxy.up()
            for _ in range(600):
                try:
                    await store.append("a", msg(2))
                except BackendUnavailable:
                    await asyncio.sleep(0.05)
                    continue
                if store.listener.healthy:
                    break
                await asyncio.sleep(0.05)
            assert state() == "closed" and store.listener.healthy
            await store.delete("a")
        finally:
            await store.aclose()
            await client.aclose()

    try:
        asyncio.run(asyncio.wait_for(work(), 60))
    finally:
        proxy.down()
    lines = warnings(logs)
    assert count(lines, r"redis unreachable: circuit breaker opened") == 1, lines
    assert count(lines, r"redis reachable again") == 1, lines
    assert count(lines, r"invalidation channel \S+ lost:") == 1, lines
    assert count(lines, r"invalidation channel \S+ resubscribed") == 1, lines
    assert len(lines) == 4, lines


@pytest.fixture
def late_redis() -> Iterator[RedisServer]:
    server = RedisServer(port=free_port())
    yield server
    server.close()


def test_a_listener_started_while_redis_is_down_says_so_once(
    late_redis: RedisServer, logs: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis(host="127.0.0.1", port=late_redis.port, socket_connect_timeout=1,
                         retry=Retry(NoBackoff(), 0))
    store = TieredStore.from_clients(redis=client, namespace="late")
    try:
        assert store.listener is not None and not store.listener.healthy
        wait_for(lambda: count(warnings(logs), "unavailable") == 1, 10, "the warning")
        late_redis.start()
        wait_for(lambda: store.listener.healthy, 30, "the listener to subscribe")  # type: ignore[union-attr]
        store.save("a", [msg(0)])
        assert store.load("a") == [msg(0)]
    finally:
        store.close()
        client.close()
    lines = warnings(logs)
    assert count(lines, r"invalidation channel \S+ unavailable:") == 1, lines
    assert count(lines, r"invalidation channel \S+ resubscribed") == 1, lines
    assert len(lines) == 2, lines
