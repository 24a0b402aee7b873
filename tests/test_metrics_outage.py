"""Acceptance: the metrics endpoint and the log through a Redis outage.

A private ``redis-server`` on a free loopback port, behind a TCP proxy the
test cuts and restores; a ``TieredStore`` (memory, Redis, PostgreSQL,
``write_through``) under a steady workload; ``/metrics`` served over HTTP on
127.0.0.1 and scraped before, during and after the outage. Nothing waits a
fixed time: every wait polls for an outcome, bounded by a timeout.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.metrics_scrape import Samples, scrape, total, value, wait_for
from tests.servers import RedisServer, TcpProxy
from tieredstore import metrics
from tieredstore.store import TieredStore

pytestmark = pytest.mark.slow

CALLS = "tieredstore_tier_call_duration_seconds"


def msg(i: int) -> dict[str, Any]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}


@pytest.fixture
def private_redis() -> Iterator[tuple[RedisServer, TcpProxy]]:
    server = RedisServer().start()
    proxy = TcpProxy(server.port).up()
    yield server, proxy
    proxy.down()
    server.close()


@pytest.fixture
def endpoint() -> Iterator[metrics.MetricsServer]:
    with metrics.serve(0, registry=CollectorRegistry()) as server:
        yield server
    metrics.disable()


def degraded_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("tieredstore")]


def breaker(samples: Samples, state: str) -> float:
    return value(samples, "tieredstore_breaker_state", breaker="redis", state=state)


def test_redis_cut_and_restored_shows_in_metrics_and_once_in_the_log(
    private_redis: tuple[RedisServer, TcpProxy], endpoint: metrics.MetricsServer,
    pg_engine: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tieredstore")
    _server, proxy = private_redis
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=1,
                         socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    store = TieredStore.from_clients(redis=client, engine=pg_engine,
                                     namespace=f"outage-{uuid.uuid4().hex[:8]}",
                                     durability="write_through")
    sids = [f"s{i}" for i in range(10)]
    try:
        assert store.listener is not None and store.redis is not None
        wait_for(lambda: store.listener.healthy, 10, "the invalidation listener")  # type: ignore[union-attr]
        for i, sid in enumerate(sids):
            store.save(sid, [msg(i)])
        for _ in range(2):
            for sid in sids:
                store.load(sid)  # a Redis hit, then memory hits
        before = scrape(endpoint.url)
        assert breaker(before, "closed") == 1 and breaker(before, "open") == 0
        assert value(before, f"{CALLS}_count", tier="redis", operation="write_save") >= 10
        assert value(before, f"{CALLS}_count", tier="archive", operation="mirror") == 10
        assert value(before, "tieredstore_tier_hits_total", tier="memory") >= 10
        assert value(before, "tieredstore_operation_duration_seconds_count",
                     operation="load") == 20
        assert value(before, "tieredstore_invalidation_listeners", state="healthy") == 1
        assert degraded_warnings(caplog) == []

        proxy.down()  # Redis cut: connections dropped, new ones refused

        def reads_until_open() -> bool:
            for sid in sids:
                assert store.get(sid).tier in ("memory", "archive")
            return store.redis.breaker.state == "open"  # type: ignore[union-attr]

        wait_for(reads_until_open, 30, "the Redis breaker to open")
        store.append("s0", msg(100))  # write_through: the archive alone takes it
        for _ in range(5):
            for sid in sids:  # many reads served by the archive: no log line each
                assert store.get(sid).tier in ("memory", "archive")
        during = scrape(endpoint.url)
        assert breaker(during, "open") + breaker(during, "half_open") == 1
        assert breaker(during, "closed") == 0
        assert value(during, "tieredstore_breaker_transitions_total",
                     breaker="redis", state="open") >= 1
        assert total(during, "tieredstore_tier_call_failures_total", tier="redis",
                     reason="unavailable") >= 3
        assert total(during, "tieredstore_tier_call_failures_total", tier="redis",
                     reason="circuit_open") >= 1
        assert value(during, "tieredstore_breaker_rejected_calls_total", breaker="redis") >= 1
        assert value(during, "tieredstore_tier_hits_total", tier="archive") > value(
            before, "tieredstore_tier_hits_total", tier="archive")
        assert value(during, "tieredstore_tier_errors_total", tier="redis") >= 3
        assert value(during, f"{CALLS}_count", tier="archive", operation="snapshot") > value(
            before, f"{CALLS}_count", tier="archive", operation="snapshot")
        assert value(during, "tieredstore_invalidation_listeners", state="unhealthy") == 1
        assert value(during, "tieredstore_invalidation_channel_events_total", event="lost") == 1

        proxy.up()  # Redis back

        writes = iter(range(1000))

        def served_by_redis_again() -> bool:
            store.append("w", msg(next(writes)))  # a write reaches Redis: the breaker probes
            tiers = {store.get(sid).tier for sid in sids}
            return (store.redis.breaker.state == "closed"  # type: ignore[union-attr]
                    and "archive" not in tiers and store.listener.healthy)  # type: ignore[union-attr]

        wait_for(served_by_redis_again, 30, "reads to be served by Redis and memory again")
        assert store.load("s0") == [msg(0), msg(100)]
        after = scrape(endpoint.url)
        assert breaker(after, "closed") == 1 and breaker(after, "open") == 0
        assert value(after, "tieredstore_breaker_transitions_total",
                     breaker="redis", state="closed") == 1
        assert value(after, "tieredstore_invalidation_channel_events_total",
                     event="resubscribed") == 1
        assert value(after, "tieredstore_invalidation_listeners", state="healthy") == 1
        assert value(after, f"{CALLS}_count", tier="redis", operation="snapshot") > value(
            during, f"{CALLS}_count", tier="redis", operation="snapshot")
        inf = value(after, f"{CALLS}_bucket", tier="redis", operation="snapshot", le="+Inf")
        assert inf == value(after, f"{CALLS}_count", tier="redis", operation="snapshot")
        assert value(after, f"{CALLS}_sum", tier="redis", operation="snapshot") > 0
    finally:
        store.close()
        client.close()

    warnings = degraded_warnings(caplog)
    kinds = {
        "redis down": [w for w in warnings if "redis unreachable" in w],
        "redis back": [w for w in warnings if "redis reachable again" in w],
        "listener lost": [w for w in warnings if re.search(r"invalidation channel \S+ lost:", w)],
        "listener back": [w for w in warnings if re.search(r"channel \S+ resubscribed", w)],
    }
    assert {kind: len(found) for kind, found in kinds.items()} == dict.fromkeys(kinds, 1), warnings
    assert len(warnings) == 4, warnings
