"""Every call bounded: timeouts against servers that never answer, then the breaker.

Each test that needs a dead server makes its own on loopback (a
:class:`~tests.servers.BlackHole` that accepts and never answers, or a
:class:`~tests.servers.TcpProxy` that stalls) and stops it in ``finally``.
The only timing assertions are upper bounds with generous slack, as the
acceptance figures ask: "BackendUnavailable within the configured time" and
"microseconds once the breaker is open" (measured as a median and printed).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.conftest import REDIS_URL
from tests.servers import BlackHole, TcpProxy
from tieredstore import (
    ArchiveStore,
    AsyncArchiveStore,
    AsyncRedisStore,
    BackendUnavailable,
    CircuitBreaker,
    CircuitOpen,
    InvalidInput,
    Message,
    RedisStore,
    SessionNotFound,
    TieredStore,
    VersionConflict,
)
from tieredstore.timeouts import IO_OPTION, REDIS_TIMEOUTS, WATCHDOG, ArchiveTimeouts

SLACK = 3.0  # seconds on top of a configured timeout (the machine's load swings)
FAST_MEDIAN = 0.005  # the acceptance figure is 1 ms; this bound only catches a real wait
USER = Message("user", "hello")


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def pg_via(pg_url: str, port: int, **query: str) -> str:
    url = sa.make_url(pg_url).set(host="127.0.0.1", port=port)
    if query:
        url = url.update_query_dict(query)
    return url.render_as_string(hide_password=False)


def timed(call: Callable[[], Any]) -> tuple[Exception, float]:
    started = time.perf_counter()
    try:
        call()
    except Exception as exc:  # returned to the test
        return exc, time.perf_counter() - started
    raise AssertionError("the call did not fail")


async def atimed(call: Callable[[], Awaitable[Any]]) -> tuple[Exception, float]:
    started = time.perf_counter()
    try:
        await call()
    except Exception as exc:  # returned to the test
        return exc, time.perf_counter() - started
    raise AssertionError("the call did not fail")


def fast_fail_median(call: Callable[[], Any], label: str, n: int = 200) -> float:
    """The median time of ``n`` calls that must fail fast; printed, then returned."""
    times = []
    for _ in range(n):
        error, elapsed = timed(call)
        assert isinstance(error, CircuitOpen), error
        times.append(elapsed)
    median = statistics.median(times)
    print(f"\n{label}: breaker open, median fast failure {median * 1e6:.1f} µs over {n} calls")
    return median


def assert_bounded_failures(
    failures: list[tuple[Exception, float]], timeout: float, breaker: CircuitBreaker
) -> None:
    """``threshold`` calls each paid at most its timeout, then the breaker opened."""
    assert len(failures) == breaker.threshold
    for error, elapsed in failures:
        assert isinstance(error, BackendUnavailable) and not isinstance(error, CircuitOpen)
        assert elapsed < timeout + SLACK, f"{elapsed:.2f} s against a {timeout} s timeout"
    assert breaker.state == "open"


# -- PostgreSQL ----------------------------------------------------------------------


def test_black_holed_postgres_fails_within_connect_timeout_then_fast(
    black_hole: BlackHole,
) -> None:
    store = ArchiveStore.from_url(
        f"postgresql://postgres@127.0.0.1:{black_hole.port}/app",
        timeouts=ArchiveTimeouts(connect=2),
    )
    try:
        failures = [timed(lambda: store.load("s")) for _ in range(store.breaker.threshold)]
        assert_bounded_failures(failures, 2.0, store.breaker)
        assert "timeout" in str(failures[0][0])
        assert black_hole.accepted >= 1, "the listener accepted: a black hole, not a dead port"
        median = fast_fail_median(lambda: store.load("s"), "PostgreSQL black hole (sync)")
        assert median < FAST_MEDIAN
        error, _ = timed(lambda: store.save("s", [USER]))
        assert "circuit breaker open" in str(error) and "timeout" in str(error)
        assert store.breaker.stats()["rejected"] >= 201
    finally:
        store.close()


def test_stalled_postgres_connection_is_cut_by_the_watchdog(pg_url: str) -> None:
    """An established connection whose server stops answering: only the client can end it."""
    proxy = TcpProxy(sa.make_url(pg_url).port or 5432).up()
    store = ArchiveStore.from_url(
        pg_via(pg_url, proxy.port), timeouts=ArchiveTimeouts(connect=2, io=2)
    )
    try:
        store.save("s", [USER])
        proxy.stall()
        error, elapsed = timed(lambda: store.load("s"))
        assert isinstance(error, BackendUnavailable), error
        assert "no reply within 2 s" in str(error)
        assert elapsed < 2.0 + SLACK
        proxy.resume()
        assert store.load("s") == [USER], "a fresh connection serves the next call"
        assert store.breaker.state == "closed"
    finally:
        store.close()
        proxy.down()


def test_stalled_postgres_async(pg_url: str) -> None:
    proxy = TcpProxy(sa.make_url(pg_url).port or 5432).up()

    async def main() -> None:
        store = AsyncArchiveStore.from_url(
            pg_via(pg_url, proxy.port), timeouts=ArchiveTimeouts(connect=2, io=2)
        )
        try:
            await store.save("s", [USER])
            proxy.stall()
            failures = [await atimed(lambda: store.load("s")) for _ in range(3)]
            assert "no reply within 2 s" in str(failures[0][0])
            assert_bounded_failures(failures, 2.0, store.breaker)
            error, _ = await atimed(lambda: store.load("s"))
            assert isinstance(error, CircuitOpen)
        finally:
            await store.aclose()

    try:
        asyncio.run(main())
    finally:
        proxy.down()


def test_statement_timeout_defaults_are_in_effect(pg_url: str) -> None:
    store = ArchiveStore.from_url(pg_url)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "30s"
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() == (
                "1min"
            )
        assert store._io_timeout == 35.0
    finally:
        store.close()


def test_url_parameters_override_the_defaults(pg_url: str) -> None:
    url = pg_via(pg_url, sa.make_url(pg_url).port or 5432, options="-c statement_timeout=1s")
    store = ArchiveStore.from_url(url)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1s"
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() == (
                "1min"
            ), "a default the URL does not set stays"
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                conn.exec_driver_sql("SELECT pg_sleep(3)")
        assert store._io_timeout == 6.0, "the client bound follows the URL's statement_timeout"
    finally:
        store.close()


def test_async_store_gets_the_same_timeouts(pg_url: str) -> None:
    async def main() -> tuple[str, Any]:
        store = AsyncArchiveStore.from_url(pg_url, timeouts=ArchiveTimeouts(statement=12))
        try:
            async with store.engine.connect() as conn:
                value = (await conn.exec_driver_sql("SHOW statement_timeout")).scalar()
            return str(value), store._io_timeout
        finally:
            await store.aclose()

    assert asyncio.run(main()) == ("12s", 17.0)


def test_engine_options_merge_under_the_url() -> None:
    defaults = ArchiveTimeouts()
    plain = defaults.engine_options({}, {})
    assert plain["connect_args"] == {
        "connect_timeout": 5,
        "options": "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000",
    }
    assert plain["execution_options"] == {IO_OPTION: 35.0}
    mine = defaults.engine_options(
        {"connect_timeout": "7", "options": "-c search_path=app --statement_timeout=2min"}, {}
    )
    assert "connect_timeout" not in mine["connect_args"]
    assert mine["connect_args"]["options"] == (
        "-c search_path=app --statement_timeout=2min -c idle_in_transaction_session_timeout=60000"
    )
    assert mine["execution_options"][IO_OPTION] == 125.0
    off = ArchiveTimeouts(connect=None, statement=None, idle_in_transaction=0).engine_options(
        {}, {"connect_args": {"sslmode": "disable"}}
    )
    assert off["connect_args"] == {"sslmode": "disable"}
    assert off["execution_options"][IO_OPTION] is None, "no server bound: no client guess"
    fixed = ArchiveTimeouts(io=3).engine_options({}, {"execution_options": {"x": 1}})
    assert fixed["execution_options"] == {"x": 1, IO_OPTION: 3}
    assert (
        ArchiveTimeouts(connect=0.5).engine_options({}, {})["connect_args"]["connect_timeout"] == 2
    ), "libpq's minimum"
    for bad in (-1, float("inf"), "5", True):
        with pytest.raises(InvalidInput):
            ArchiveTimeouts(statement=bad)  # type: ignore[arg-type]


def test_sqlite_is_unaffected(sqlite_url: str) -> None:
    store = ArchiveStore.from_url(sqlite_url)
    try:
        assert store._io_timeout is None
        assert IO_OPTION not in store.engine.get_execution_options()
        with pytest.raises(SessionNotFound):
            store.load("nobody")
        assert store.breaker.state == "closed"
    finally:
        store.close()


# -- Redis -----------------------------------------------------------------------------


def test_black_holed_redis_fails_within_socket_timeout_then_fast(black_hole: BlackHole) -> None:
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{black_hole.port}/0", socket_timeout=1, socket_connect_timeout=1
    )
    try:
        failures = [timed(lambda: store.load("s")) for _ in range(store.breaker.threshold)]
        assert_bounded_failures(failures, 1.0, store.breaker)
        median = fast_fail_median(lambda: store.load("s"), "Redis black hole (sync)")
        assert median < FAST_MEDIAN
        error, _ = timed(lambda: store.append("s", USER))
        assert isinstance(error, CircuitOpen) and error.backend == "redis"
        assert "Timeout" in str(error)
    finally:
        store.close()


def test_black_holed_redis_async(black_hole: BlackHole) -> None:
    async def main() -> float:
        store = AsyncRedisStore.from_url(f"redis://127.0.0.1:{black_hole.port}/0?socket_timeout=1")
        try:
            failures = [await atimed(lambda: store.load("s")) for _ in range(3)]
            assert_bounded_failures(failures, 1.0, store.breaker)
            times = []
            for _ in range(200):
                error, elapsed = await atimed(lambda: store.load("s"))
                assert isinstance(error, CircuitOpen)
                times.append(elapsed)
            return statistics.median(times)
        finally:
            await store.aclose()

    median = asyncio.run(main())
    print(f"\nRedis black hole (async): median fast failure {median * 1e6:.1f} µs over 200 calls")
    assert median < FAST_MEDIAN


def test_breaker_recovers_when_redis_returns(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tieredstore.breaker")
    proxy = TcpProxy(redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs["port"])
    proxy.up()
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{proxy.port}/0",
        prefix=redis_prefix,
        namespace="bounded-recovery",
        breaker=CircuitBreaker(threshold=2, cooldown=0.3),
    )
    try:
        store.save("s", [USER])
        proxy.down()
        for _ in range(2):
            with pytest.raises(BackendUnavailable):
                store.load("s")
        with pytest.raises(CircuitOpen):
            store.load("s")
        proxy.up()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert store.load("s") == [USER]
                break
            except CircuitOpen:
                assert time.monotonic() < deadline, "the breaker never probed"
                time.sleep(0.05)
        assert store.breaker.state == "closed"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, warnings
        assert "opened after 2 consecutive failures" in warnings[0]
        assert "closed" in warnings[1]
    finally:
        store.close()
        proxy.down()


@pytest.mark.parametrize("tier", ["archive", "redis"])
def test_logical_errors_do_not_trip_the_breaker(tier: str, pg_url: str, redis_prefix: str) -> None:
    store: ArchiveStore | RedisStore = (
        ArchiveStore.from_url(pg_url, namespace="bounded-logical")
        if tier == "archive"
        else RedisStore.from_url(REDIS_URL, prefix=redis_prefix, namespace="bounded-logical")
    )
    try:
        store.save("s", [USER])
        for _ in range(5):
            with pytest.raises(SessionNotFound):
                store.load("missing")
            with pytest.raises(VersionConflict):
                store.save("s", [USER], expected_version=99)
        stats = store.stats()["breaker"]
        assert stats["state"] == "closed" and stats["failures"] == 0
    finally:
        store.delete("s")
        store.close()


def test_redis_timeout_defaults_and_overrides() -> None:
    def kwargs(store: Any) -> tuple[Any, Any]:
        options = store.client.connection_pool.connection_kwargs
        return options["socket_timeout"], options["socket_connect_timeout"]

    defaults = (REDIS_TIMEOUTS["socket_timeout"], REDIS_TIMEOUTS["socket_connect_timeout"])
    assert defaults == (5.0, 2.0)
    cases = [
        (RedisStore.from_url(REDIS_URL), defaults),
        (RedisStore(url=REDIS_URL), defaults),
        (RedisStore(), defaults),
        (RedisStore.from_url(REDIS_URL, socket_timeout=1), (1, 2.0)),
        (RedisStore.from_url(f"{REDIS_URL}?socket_timeout=0.5"), (0.5, 2.0)),
        (RedisStore.from_url(REDIS_URL, socket_timeout=None), (None, 2.0)),
        (AsyncRedisStore.from_url(REDIS_URL), defaults),
        (AsyncRedisStore.from_url(f"{REDIS_URL}?socket_connect_timeout=3"), (5.0, 3.0)),
    ]
    for store, expected in cases:  # nothing connected: nothing to close
        assert kwargs(store) == expected


# -- the tiered store and the watchdog -------------------------------------------------------


def test_tiered_stats_show_each_breaker(redis_prefix: str, pg_engine: Any) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    store = TieredStore.from_clients(
        redis=client, engine=pg_engine, prefix=redis_prefix, namespace="bounded-stats"
    )
    try:
        store.save("s", [USER])
        stats = store.stats()
        for tier in ("redis", "archive"):
            assert stats[tier]["breaker"]["state"] == "closed"
            assert stats[tier]["breaker"]["threshold"] == 3
        assert store.archive is not None
        assert store.archive._io_timeout == ArchiveTimeouts().io_bound() == 35.0
    finally:
        store.delete("s")
        store.close()
        client.close()


def test_watchdog_shuts_down_an_overdue_socket_only() -> None:
    spared, spared_peer = socket.socketpair()
    cut, cut_peer = socket.socketpair()
    try:
        with WATCHDOG.watch(spared.fileno(), 0.1):  # left long before its deadline
            pass
        cut.settimeout(10)
        with WATCHDOG.watch(cut.fileno(), 0.3) as watch:
            assert cut.recv(1) == b"", "the watchdog woke the blocked read"
        assert watch.fired
        spared.sendall(b"x")  # past its deadline, the disarmed socket is intact
        spared_peer.settimeout(10)
        assert spared_peer.recv(1) == b"x"
    finally:
        for sock in (spared, spared_peer, cut, cut_peer):
            sock.close()
