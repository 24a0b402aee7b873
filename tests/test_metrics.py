"""Prometheus metrics: what each part of the store records, and nothing while disabled.

Each test records into a registry of its own (``metrics.enable(registry)``)
and disables metrics again at the end, against the shared Redis and
PostgreSQL in a namespace of its own.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import REDIS_URL
from tests.metrics_scrape import read, scrape, total, value, wait_for
from tieredstore import (
    CircuitBreaker,
    CircuitOpen,
    ConfigurationError,
    InvalidInput,
    SessionNotFound,
    instrumentation,
    maintenance,
    metrics,
)
from tieredstore.store import TieredStore

ROOT = Path(__file__).resolve().parent.parent


def msg(i: int) -> dict[str, Any]:
    return {"role": "user", "content": f"message {i}"}


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    own = CollectorRegistry()
    metrics.enable(own)
    yield own
    metrics.disable()


@pytest.fixture
def namespace() -> str:
    return f"metrics-{uuid.uuid4().hex[:10]}"


def test_store_operations_and_tier_calls_are_timed(
    registry: CollectorRegistry, make_tiered: Callable[..., TieredStore]
) -> None:
    store = make_tiered()
    store.save("a", [msg(0)])
    store.append("a", msg(1))
    assert store.load("a") == [msg(0), msg(1)]  # Redis hit, fills memory
    assert store.load("a") == [msg(0), msg(1)]  # memory hit: no tier call
    with pytest.raises(SessionNotFound):
        store.load("missing")
    samples = read(registry)
    ops = "tieredstore_operation_duration_seconds_count"
    assert value(samples, ops, operation="save") == 1
    assert value(samples, ops, operation="append") == 1
    assert value(samples, ops, operation="load") == 3
    assert value(samples, "tieredstore_operation_errors_total", operation="load",
                 error="SessionNotFound") == 1
    calls = "tieredstore_tier_call_duration_seconds_count"
    assert value(samples, calls, tier="redis", operation="write_append") >= 1
    # One Redis snapshot for "a" (the second load is a memory hit) and one for "missing".
    assert value(samples, calls, tier="redis", operation="snapshot") == 2
    assert value(samples, calls, tier="archive", operation="snapshot") >= 1
    assert value(samples, "tieredstore_tier_hits_total", tier="memory") >= 1
    assert value(samples, "tieredstore_tier_hits_total", tier="redis") >= 1
    assert value(samples, "tieredstore_tier_misses_total", tier="archive") >= 1
    assert total(samples, "tieredstore_tier_call_failures_total") == 0
    assert value(samples, "tieredstore_memory_entries") >= 1
    assert value(samples, "tieredstore_memory_bytes") > 0
    # Seconds, and every observation in the +Inf bucket.
    assert 0 < value(samples, "tieredstore_operation_duration_seconds_sum",
                     operation="save") < 30
    assert value(samples, "tieredstore_operation_duration_seconds_bucket", operation="load",
                 le="+Inf") == 3


def test_locks_are_tier_calls_too(registry: CollectorRegistry,
                                  make_tiered: Callable[..., TieredStore]) -> None:
    store = make_tiered()
    with store.lock("a", timeout=5):
        pass
    samples = read(registry)
    calls = "tieredstore_tier_call_duration_seconds_count"
    assert value(samples, calls, tier="lock", operation="lock_acquire") == 1
    assert value(samples, calls, tier="lock", operation="lock_release") == 1


def test_the_async_store_is_timed_like_the_sync_one(
    registry: CollectorRegistry, pg_url: str, redis_prefix: str, namespace: str
) -> None:
    from tieredstore.aio import AsyncTieredStore

    async def work() -> None:
        async with AsyncTieredStore.from_url(redis_url=REDIS_URL, database_url=pg_url,
                                             namespace=namespace, prefix=redis_prefix) as store:
            await store.save("a", [msg(0)])
            assert await store.load("a", last=1) == [msg(0)]

    asyncio.run(work())
    samples = read(registry)
    assert value(samples, "tieredstore_operation_duration_seconds_count", operation="save") == 1
    assert value(samples, "tieredstore_tier_call_duration_seconds_count", tier="redis",
                 operation="write_save") >= 1


def test_memory_evictions_are_counted(registry: CollectorRegistry,
                                      make_tiered: Callable[..., TieredStore]) -> None:
    store = make_tiered(memory_max_bytes=4096)  # room for a few small sessions only
    big = {"role": "user", "content": "x" * 600}
    for i in range(12):
        store.save(f"s{i}", [big])
        store.load(f"s{i}")  # cached, evicting the least recently used
    assert store.memory is not None
    evicted = store.memory.stats()["evictions"]
    assert evicted > 0
    assert value(read(registry), "tieredstore_memory_evictions_total") == evicted


def test_invalidations_received_and_applied(
    registry: CollectorRegistry, make_tiered: Callable[..., TieredStore]
) -> None:
    reader, writer = make_tiered(), make_tiered()
    def subscribed() -> bool:
        return all(s.listener is not None and s.listener.healthy for s in (reader, writer))

    wait_for(subscribed, 10, "the listeners to subscribe")
    writer.save("a", [msg(0)])
    assert reader.load("a") == [msg(0)]  # cached in the reader's memory tier
    before = read(registry)
    writer.append("a", msg(1))

    def applied() -> bool:
        return value(read(registry), "tieredstore_invalidations_applied_total") > value(
            before, "tieredstore_invalidations_applied_total")

    wait_for(applied, 10, "the reader to drop its copy")
    after = read(registry)
    # Both listeners hear the append (the writer's own one too) ...
    assert value(after, "tieredstore_invalidations_received_total") >= value(
        before, "tieredstore_invalidations_received_total") + 1
    # ... and only the reader's older copy was dropped by it.
    assert reader.memory is not None and reader.memory.stats()["invalidated"] == 1
    assert reader.load("a") == [msg(0), msg(1)]


def test_breaker_state_and_transitions() -> None:
    own = CollectorRegistry()
    metrics.enable(own)
    now = [1000.0]
    breaker = CircuitBreaker(threshold=2, cooldown=5.0, name="fake", clock=lambda: now[0])

    def fail() -> None:
        with breaker.guard(lambda exc: True):
            raise OSError("down")

    def state(name: str) -> float:
        return value(read(own), "tieredstore_breaker_state", breaker="fake", state=name)

    def entered(name: str) -> float:
        return value(read(own), "tieredstore_breaker_transitions_total", breaker="fake",
                     state=name)

    try:
        assert (state("closed"), state("open"), state("half_open")) == (1, 0, 0)
        for _ in range(2):
            with pytest.raises(OSError):
                fail()
        assert (state("closed"), state("open")) == (0, 1) and entered("open") == 1
        with pytest.raises(CircuitOpen):
            fail()
        assert value(read(own), "tieredstore_breaker_rejected_calls_total", breaker="fake") == 1
        now[0] += 5.0  # the probe is due, and fails
        assert state("half_open") == 1
        with pytest.raises(OSError):
            fail()
        assert entered("half_open") == 1 and entered("open") == 2
        now[0] += 5.0
        with breaker.guard(lambda exc: True):
            pass  # the probe answers
        assert (state("closed"), state("open"), state("half_open")) == (1, 0, 0)
        assert entered("closed") == 1
        disabled = CircuitBreaker(name="off", enabled=False)
        assert all(labels.isdisjoint({("breaker", "off")})
                   for (name, labels) in read(own) if name == "tieredstore_breaker_state")
        del disabled
    finally:
        metrics.disable()


def test_maintenance_runs_counted_by_task_and_outcome(
    registry: CollectorRegistry, make_tiered: Callable[..., TieredStore]
) -> None:
    store = make_tiered(memory_max_bytes=None)
    for i in range(5):
        store.save(f"s{i}", [msg(i)])
    later = time.time() + 60  # every session idle by then
    assert maintenance.archive_idle(store, archive_after=0, dry_run=True, now=later).changed == 5
    done = maintenance.archive_idle(store, archive_after=0, now=later)
    assert done.changed == 5 and not done.remaining
    maintenance.expire(store)
    maintenance.reconcile(store)
    with pytest.raises(InvalidInput):
        maintenance.archive_idle(store, archive_after=-1)
    samples = read(registry)
    runs = "tieredstore_maintenance_runs_total"
    assert value(samples, runs, task="archive_idle", outcome="done") == 1
    assert value(samples, runs, task="archive_idle", outcome="dry_run") == 1
    assert value(samples, runs, task="archive_idle", outcome="error") == 1
    assert value(samples, runs, task="expire", outcome="done") == 1
    assert value(samples, runs, task="reconcile", outcome="done") == 1
    items = "tieredstore_maintenance_items_total"
    assert value(samples, items, task="archive_idle", kind="changed") == 5  # not the dry run
    assert value(samples, items, task="archive_idle", kind="messages") == 5
    durations = "tieredstore_maintenance_duration_seconds_count"
    assert value(samples, durations, task="archive_idle", outcome="done") == 1
    assert value(samples, durations, task="expire", outcome="done") == 1


def test_tier_counters_of_a_store_that_is_gone_are_kept(
    registry: CollectorRegistry, redis_client: Any, redis_prefix: str, pg_engine: Any,
    namespace: str,
) -> None:
    def hits() -> float:
        return value(read(registry), "tieredstore_tier_hits_total", tier="memory")

    start = hits()
    store = TieredStore.from_clients(redis=redis_client, engine=pg_engine, namespace=namespace,
                                     prefix=redis_prefix)
    store.save("a", [msg(0)])
    for _ in range(3):
        store.load("a")
    assert hits() == start + 2  # the first load filled memory
    store.close()
    del store
    gc.collect()
    assert hits() == start + 2  # a counter never goes down


def test_serve_exposes_the_registry_over_http(registry: CollectorRegistry,
                                              make_tiered: Callable[..., TieredStore]) -> None:
    make_tiered().save("a", [msg(0)])
    with metrics.serve(0, registry=registry) as server:
        assert server.url.startswith("http://127.0.0.1:")
        samples = scrape(server.url)
    assert value(samples, "tieredstore_operation_duration_seconds_count", operation="save") == 1


def test_nothing_is_recorded_while_disabled(make_tiered: Callable[..., TieredStore]) -> None:
    metrics.disable()
    assert not metrics.enabled() and metrics.registry() is None
    assert instrumentation.observer is None
    store = make_tiered()
    store.save("a", [msg(0)])
    store.load("a")
    maintenance.expire(store)
    names = {s.name for family in prometheus_client.REGISTRY.collect() for s in family.samples}
    assert not any(name.startswith("tieredstore_") for name in names)
    assert store.stats()["memory"]["hits"] == 0 and store.stats()["redis"]["hits"] == 1


def test_enable_is_idempotent_and_another_registry_replaces_the_first() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    try:
        assert metrics.enable(first) is first and metrics.enable(first) is first
        assert metrics.enable(second) is second and metrics.registry() is second
        names = {s.name for family in first.collect() for s in family.samples}
        assert not any(name.startswith("tieredstore_") for name in names)
    finally:
        metrics.disable()
    metrics.disable()  # twice is fine


def test_the_library_works_without_prometheus_client_and_opentelemetry(
    tmp_path: Path,
) -> None:
    """In a process where neither package can be imported: the store runs, and asking
    for metrics or traces is a ConfigurationError naming the extra to install."""
    script = """
import sys
sys.modules["prometheus_client"] = None
sys.modules["opentelemetry"] = None
from tieredstore import ConfigurationError, TieredStore, metrics, telemetry
store = TieredStore()
store.save("a", [{"role": "user", "content": "hi"}])
assert store.load("a")[0]["content"] == "hi"
for enable, extra in ((metrics.enable, "tieredstore[metrics]"),
                      (telemetry.enable, "tieredstore[otel]")):
    try:
        enable()
    except ConfigurationError as exc:
        assert extra in str(exc), exc
    else:
        raise AssertionError("enabled without the package")
store.close()
import os
os.environ["TIEREDSTORE_METRICS_PORT"] = "9464"
try:
    import tieredstore.worker
except ConfigurationError as exc:
    assert "TIEREDSTORE_METRICS_PORT" in str(exc), exc
else:
    raise AssertionError("the worker started without prometheus_client")
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDSTORE_")}
    env.update(PYTHONPATH=str(ROOT), TIEREDSTORE_DATA_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_enable_without_prometheus_client_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match="tieredstore\\[metrics\\]"):
        metrics.enable()
    assert not metrics.enabled()
