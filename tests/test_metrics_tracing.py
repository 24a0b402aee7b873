"""OpenTelemetry spans around store operations, tier calls and maintenance runs.

Spans go to opentelemetry-sdk's in-memory exporter through a tracer
provider of the test's own (the global provider is never touched).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import REDIS_URL
from tests.servers import free_port
from tieredstore import (
    BackendUnavailable,
    SessionNotFound,
    instrumentation,
    maintenance,
    telemetry,
)
from tieredstore.store import TieredStore


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable(tracer_provider=provider)
    yield exporter
    telemetry.disable()
    provider.shutdown()


@pytest.fixture
def namespace() -> str:
    return f"tracing-{uuid.uuid4().hex[:10]}"


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [span for span in exporter.get_finished_spans()
            if span.parent is not None and span.parent.span_id == parent.context.span_id]


def test_a_load_is_a_span_with_a_child_per_tier_call(
    spans: InMemorySpanExporter, make_tiered: Callable[..., TieredStore]
) -> None:
    store = make_tiered(memory_max_bytes=None)
    store.save("sess-q7z", [{"role": "user", "content": "hi"}])
    spans.clear()
    store.load("sess-q7z")
    (load,) = named(spans, "tieredstore.load")
    assert load.kind == SpanKind.INTERNAL
    assert load.attributes is not None and load.attributes["tieredstore.operation"] == "load"
    assert load.status.status_code == StatusCode.UNSET
    (call,) = children(spans, load)
    # without a memory tier to fill, the read takes only the messages
    assert call.name == "tieredstore.redis.load" and call.kind == SpanKind.CLIENT
    assert call.attributes is not None
    assert (call.attributes["tieredstore.tier"], call.attributes["tieredstore.call"]) == (
        "redis", "load")
    for span in (load, call):  # no session ids
        assert span.attributes is not None
        assert all("q7z" not in str(v) for v in span.attributes.values())


def test_an_answer_is_not_an_error_but_an_unreachable_tier_is(
    spans: InMemorySpanExporter, pg_engine: Any, namespace: str
) -> None:
    import redis

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    store = TieredStore.from_clients(redis=dead, engine=pg_engine, namespace=namespace,
                                     memory_max_bytes=None)
    try:
        with pytest.raises(BackendUnavailable):
            store.load("missing")  # not in the archive, and Redis could not say
    finally:
        store.close()
        dead.close()
    (load,) = named(spans, "tieredstore.load")
    calls = {span.name: span for span in children(spans, load)}
    redis_call = calls["tieredstore.redis.load"]
    assert redis_call.status.status_code == StatusCode.ERROR
    assert redis_call.attributes is not None
    assert redis_call.attributes["tieredstore.error"] == "BackendUnavailable"
    assert any(event.name == "exception" for event in redis_call.events)
    archive_call = calls["tieredstore.archive.snapshot"]
    assert archive_call.status.status_code == StatusCode.UNSET
    assert load.status.status_code == StatusCode.ERROR  # the load raised BackendUnavailable


def test_session_not_found_leaves_the_status_unset(
    spans: InMemorySpanExporter, make_tiered: Callable[..., TieredStore]
) -> None:
    store = make_tiered()
    with pytest.raises(SessionNotFound):
        store.load("missing")
    (load,) = named(spans, "tieredstore.load")
    assert load.status.status_code == StatusCode.UNSET
    assert load.attributes is not None and load.attributes["tieredstore.error"] == "SessionNotFound"


def test_async_spans_nest_within_their_task(
    spans: InMemorySpanExporter, pg_url: str, redis_prefix: str, namespace: str
) -> None:
    from tieredstore.aio import AsyncTieredStore

    async def work() -> None:
        async with AsyncTieredStore.from_url(redis_url=REDIS_URL, database_url=pg_url,
                                             namespace=namespace, prefix=redis_prefix,
                                             memory_max_bytes=None) as store:
            await store.save("a", [{"role": "user", "content": "hi"}])
            await asyncio.gather(*(store.load("a") for _ in range(5)))

    asyncio.run(work())
    loads = named(spans, "tieredstore.load")
    assert len(loads) == 5
    for load in loads:  # concurrent tasks: each call is the child of its own load
        assert [span.name for span in children(spans, load)] == ["tieredstore.redis.load"]


def test_maintenance_runs_are_spans(spans: InMemorySpanExporter,
                                    make_tiered: Callable[..., TieredStore]) -> None:
    store = make_tiered(memory_max_bytes=None)
    maintenance.expire(store)
    (run,) = named(spans, "tieredstore.maintenance.expire")
    assert run.attributes is not None and run.attributes["tieredstore.task"] == "expire"


def test_disabled_tracing_makes_no_spans(make_tiered: Callable[..., TieredStore]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable(tracer_provider=provider)
    telemetry.disable()
    assert not telemetry.enabled() and instrumentation.observer is None
    make_tiered().save("a", [{"role": "user", "content": "hi"}])
    assert exporter.get_finished_spans() == ()
    provider.shutdown()
