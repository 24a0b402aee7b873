"""The circuit breaker on its own, with an injected clock: no servers, no sleeps."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest

from tieredstore import (
    BackendUnavailable,
    CircuitBreaker,
    CircuitOpen,
    InvalidInput,
    SessionNotFound,
    VersionConflict,
)
from tieredstore.breaker import resolve_breaker


class Clock:
    """Monotonic seconds moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Down(Exception):
    """What the fake tier raises when its server is unreachable."""


def is_down(exc: BaseException) -> bool:
    return isinstance(exc, Down)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(threshold=3, cooldown=5.0, name="fake", clock=clock)


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """The WARNING messages of the breaker's logger, as they come."""
    caplog.set_level(logging.INFO, logger="tieredstore.breaker")
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("tieredstore.breaker")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def call(breaker: CircuitBreaker, outcome: Exception | None = None) -> str:
    """One guarded call that raises ``outcome`` (if any); ``ran`` if its body ran."""
    ran = []
    try:
        with breaker.guard(is_down):
            ran.append(True)
            if outcome is not None:
                raise outcome
    except CircuitOpen:
        return "fast"
    except Exception:  # the outcome itself
        pass
    return "ran" if ran else "?"


def test_opens_after_threshold_consecutive_failures(
    breaker: CircuitBreaker, warnings: list[str]
) -> None:
    assert call(breaker, Down("refused")) == "ran"
    assert call(breaker, Down("refused")) == "ran"
    assert breaker.state == "closed"
    assert warnings == []
    assert call(breaker, Down("timeout")) == "ran"
    assert breaker.state == "open"
    assert len(warnings) == 1 and "opened after 3 consecutive failures" in warnings[0]
    assert "timeout" in warnings[0]
    stats = breaker.stats()
    assert stats["state"] == "open"
    assert stats["failures"] == 3 and stats["opened"] == 1 and stats["rejected"] == 0
    assert stats["last_error"] == "timeout"
    assert stats["opened_at"] is not None


def test_a_success_resets_the_streak(breaker: CircuitBreaker) -> None:
    for _ in range(5):
        call(breaker, Down("x"))
        call(breaker, Down("x"))
        call(breaker)
    assert breaker.state == "closed"
    assert breaker.stats()["consecutive_failures"] == 0
    assert breaker.stats()["failures"] == 10


def test_errors_the_server_answered_with_do_not_count(breaker: CircuitBreaker) -> None:
    for error in (VersionConflict("s", 1, 2), SessionNotFound("s"), InvalidInput("bad")) * 3:
        assert call(breaker, error) == "ran"
    assert breaker.state == "closed"
    assert breaker.stats()["failures"] == 0
    # ... and they break a streak of real failures, like any answer.
    call(breaker, Down("x"))
    call(breaker, Down("x"))
    call(breaker, SessionNotFound("s"))
    call(breaker, Down("x"))
    assert breaker.state == "closed"


def test_open_fails_fast_without_running_the_call(
    breaker: CircuitBreaker, clock: Clock, warnings: list[str]
) -> None:
    for _ in range(3):
        call(breaker, Down("connection refused"))
    clock.now += 1.0
    for _ in range(50):
        assert call(breaker) == "fast"
    with pytest.raises(CircuitOpen) as info, breaker.guard(is_down):
        pass
    error = info.value
    assert isinstance(error, BackendUnavailable)
    assert error.backend == "fake"
    text = str(error)
    assert "circuit breaker open since" in text
    assert "last error: connection refused" in text
    assert "next probe in 4.0 s" in text
    assert error.retry_after == pytest.approx(4.0)
    assert error.last_error == "connection refused"
    assert breaker.stats()["rejected"] == 51
    assert len(warnings) == 1, "failing fast must not log per call"


def test_half_open_lets_one_probe_through_and_success_closes(
    breaker: CircuitBreaker, clock: Clock, warnings: list[str]
) -> None:
    for _ in range(3):
        call(breaker, Down("x"))
    clock.now += 5.0
    assert breaker.state == "half_open"
    probe = breaker.guard(is_down)
    probe.__enter__()  # the probe is in flight...
    assert call(breaker) == "fast", "only one probe at a time"
    with pytest.raises(CircuitOpen, match="a probe is in flight"), breaker.guard(is_down):
        pass
    probe.__exit__(None, None, None)  # ... and the server answered
    assert breaker.state == "closed"
    assert call(breaker) == "ran"
    assert len(warnings) == 2 and "closed" in warnings[1]
    assert breaker.stats()["probes"] == 1
    assert breaker.stats()["opened_at"] is None


def test_a_failed_probe_reopens_for_another_cooldown(
    breaker: CircuitBreaker, clock: Clock, warnings: list[str]
) -> None:
    for _ in range(3):
        call(breaker, Down("x"))
    clock.now += 5.0
    assert call(breaker, Down("still down")) == "ran"  # the probe
    assert breaker.state == "open"
    clock.now += 4.9
    assert call(breaker) == "fast"
    clock.now += 0.1
    assert call(breaker) == "ran"  # the next probe succeeds
    assert breaker.state == "closed"
    assert breaker.stats()["opened"] == 1, "one outage, however many probes"
    assert breaker.stats()["probes"] == 2
    assert len(warnings) == 2, "one WARNING when it opened, one when it closed"


def test_a_probe_that_answers_with_our_error_closes(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        call(breaker, Down("x"))
    clock.now += 5.0
    assert call(breaker, SessionNotFound("s")) == "ran"
    assert breaker.state == "closed"


def test_a_cancelled_probe_lets_the_next_call_probe(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        call(breaker, Down("x"))
    clock.now += 5.0

    async def probe() -> None:
        with breaker.guard(is_down):
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(probe())
        await asyncio.sleep(0)
        assert call(breaker) == "fast"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert call(breaker) == "ran", "the cancellation must not hold the probe slot"
    assert breaker.state == "closed"


def test_calls_admitted_before_it_opened_do_not_decide(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    slow_ok, slow_bad = breaker.guard(is_down), breaker.guard(is_down)
    slow_ok.__enter__()
    slow_bad.__enter__()
    for _ in range(3):
        call(breaker, Down("x"))
    slow_ok.__exit__(None, None, None)  # an old success does not close it
    assert breaker.state == "open"
    clock.now += 5.0
    assert call(breaker) == "ran"
    slow_bad.__exit__(Down, Down("late"), None)  # an old failure does not reopen it
    assert breaker.state == "closed"


def test_threads_open_it_once(breaker: CircuitBreaker, warnings: list[str]) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(100):
            outcome = call(breaker, Down("x"))
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 800
    stats = breaker.stats()
    assert stats["opened"] == 1
    assert len(warnings) == 1
    assert outcomes.count("fast") == stats["rejected"]
    assert outcomes.count("ran") == stats["failures"]
    assert 3 <= stats["failures"] <= 3 + 7  # those admitted before it opened


def test_disabled_breaker_passes_everything(clock: Clock) -> None:
    breaker = CircuitBreaker(threshold=1, clock=clock, enabled=False)
    for _ in range(10):
        assert call(breaker, Down("x")) == "ran"
    assert breaker.state == "disabled"
    assert breaker.stats()["state"] == "disabled"


def test_reset_closes_it(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        call(breaker, Down("x"))
    breaker.reset()
    assert breaker.state == "closed"
    assert call(breaker) == "ran"


def test_options() -> None:
    assert resolve_breaker(True, "redis").name == "redis"
    assert resolve_breaker(True, "redis").enabled
    assert resolve_breaker(False, "redis").state == "disabled"
    mine = CircuitBreaker(threshold=5, cooldown=0.5)
    assert resolve_breaker(mine, "database") is mine and mine.name == "database"
    named = CircuitBreaker(name="primary")
    assert resolve_breaker(named, "database").name == "primary"
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(InvalidInput):
            CircuitBreaker(threshold=bad)  # type: ignore[arg-type]
    for bad_cooldown in (-1, "1", float("nan")):
        with pytest.raises(InvalidInput):
            CircuitBreaker(cooldown=bad_cooldown)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        resolve_breaker("yes", "redis")  # type: ignore[arg-type]


def test_what_counts_as_a_database_failure() -> None:
    import sqlite3

    import psycopg
    import sqlalchemy as sa

    from tieredstore import SchemaNotReady
    from tieredstore.timeouts import db_failure

    def wrap(cls: type[sa.exc.DBAPIError], orig: Exception, invalidated: bool = False) -> Exception:
        return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)

    counts = [
        wrap(sa.exc.OperationalError, psycopg.OperationalError("connection refused")),
        wrap(sa.exc.OperationalError, psycopg.errors.ConnectionTimeout("timeout expired")),
        wrap(sa.exc.OperationalError, psycopg.errors.QueryCanceled("statement timeout")),
        wrap(sa.exc.OperationalError, psycopg.errors.AdminShutdown("terminating")),
        wrap(sa.exc.OperationalError, psycopg.errors.TooManyConnections("too many")),
        wrap(sa.exc.InterfaceError, psycopg.InterfaceError("connection already closed")),
        wrap(sa.exc.ProgrammingError, psycopg.ProgrammingError("x"), invalidated=True),
        wrap(sa.exc.OperationalError, sqlite3.OperationalError("unable to open database file")),
        sa.exc.TimeoutError("QueuePool limit reached"),
        BackendUnavailable("database", "no reply within 2 s"),
    ]
    answered = [
        wrap(sa.exc.IntegrityError, psycopg.errors.UniqueViolation("duplicate")),
        wrap(sa.exc.ProgrammingError, psycopg.errors.UndefinedTable("no such relation")),
        wrap(sa.exc.OperationalError, psycopg.errors.SerializationFailure("retry")),
        wrap(sa.exc.OperationalError, psycopg.errors.DeadlockDetected("deadlock")),
        wrap(sa.exc.OperationalError, sqlite3.OperationalError("database is locked")),
        wrap(sa.exc.OperationalError, sqlite3.OperationalError("no such table: t")),
        SchemaNotReady("database", "run migrate"),
        VersionConflict("s", 1, 2),
        SessionNotFound("s"),
        ValueError("ours"),
    ]
    assert [db_failure(e) for e in counts] == [True] * len(counts)
    assert [db_failure(e) for e in answered] == [False] * len(answered)
