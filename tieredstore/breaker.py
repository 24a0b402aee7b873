"""A circuit breaker per tier, so a dead server costs microseconds, not a timeout.

States::

    closed ──(threshold consecutive failures)──> open
    open ──(cooldown passed; the next call is the probe)──> half_open
    half_open ──(probe answered)──> closed
    half_open ──(probe failed)──> open (for another cooldown)

While open (and while a probe is in flight) every call raises
:class:`~tieredstore.errors.CircuitOpen` at once, without touching the server.
Only failures that say the server could not be reached or did not answer
count (the tier's ``is_failure`` decides); a call the server answered, even
with an error of ours such as ``VersionConflict``, is a success.

Opening and closing are logged once each at WARNING on the
``tieredstore.breaker`` logger (a failed probe at INFO), never per call:
they are the "<tier> unreachable" and "<tier> reachable again" lines of an
outage. With metrics enabled (:mod:`tieredstore.metrics`) every transition
and every call failed fast is counted, and the state is exported.
The breaker never blocks: its lock is held only to update counters, so one
instance serves threads and asyncio tasks alike. ``clock`` (monotonic
seconds) is injectable for tests.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from tieredstore import metrics
from tieredstore.errors import CircuitOpen, InvalidInput

__all__ = ["BreakerState", "CircuitBreaker", "resolve_breaker"]

logger = logging.getLogger("tieredstore.breaker")

BreakerState = Literal["closed", "open", "half_open", "disabled"]
FailureTest = Callable[[BaseException], bool]


class CircuitBreaker:
    """Fail fast after ``threshold`` consecutive failures, for ``cooldown`` seconds.

    ``name`` labels errors and log lines (the tier sets it when empty).
    ``enabled=False`` makes a breaker that only passes calls through.
    """

    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 2.0,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise InvalidInput(f"breaker threshold must be an int >= 1, got {threshold!r}")
        if (
            not isinstance(cooldown, int | float)
            or isinstance(cooldown, bool)
            or not math.isfinite(cooldown)
            or cooldown < 0
        ):
            raise InvalidInput(f"breaker cooldown must be seconds >= 0, got {cooldown!r}")
        self.threshold = threshold
        self.cooldown = float(cooldown)
        self.name = name
        self.enabled = enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._probing = False
        self._opened_at = 0.0  # clock time of the last (re)opening
        self._opened_wall = 0.0  # wall time of the first opening of this outage
        self._last_error: str | None = None
        self._rejected_at_open = 0
        self.failures = 0
        self.opened = 0
        self.rejected = 0
        self.probes = 0
        if enabled:
            metrics.track_breaker(self)

    # -- what a tier calls ---------------------------------------------------------

    def guard(self, is_failure: FailureTest) -> _Guard:
        """A context manager around one call to the server.

        Entering raises :class:`CircuitOpen` when the call must fail fast;
        leaving records the call's outcome (``is_failure`` classifies an
        exception). A ``BaseException`` such as a cancellation records nothing.
        """
        return _Guard(self, is_failure) if self.enabled else _PASS

    def allow(self) -> bool:
        """Admit a call or raise :class:`CircuitOpen`; ``True`` if it is the probe."""
        if self._state == "closed":
            return False
        with self._lock:
            state: BreakerState = self._state  # it may have closed meanwhile
            if state == "closed":
                return False
            now = self._clock()
            if not self._probing and now - self._opened_at >= self.cooldown:
                self._state = "half_open"
                self._probing = True
                self.probes += 1
                metrics.breaker_transition(self.name or "tier", "half_open")
                return True
            self.rejected += 1
            metrics.breaker_rejected(self.name or "tier")
            raise self._open_error(now)

    def success(self, probe: bool) -> None:
        """The server answered."""
        if not probe and self._consecutive == 0:
            return
        with self._lock:
            if probe:
                self._probing = False
                if self._state != "half_open":
                    return  # reset meanwhile
                self._state = "closed"
                self._consecutive = 0
                metrics.breaker_transition(self.name or "tier", "closed")
                logger.warning(
                    "%s reachable again: circuit breaker closed, the probe succeeded %s after "
                    "it opened (%d calls failed fast meanwhile)",
                    self.name or "tier",
                    _since(self._opened_wall),
                    self.rejected - self._rejected_at_open,
                )
            elif self._state == "closed":
                self._consecutive = 0

    def failure(self, error: BaseException, probe: bool) -> None:
        """The server could not be reached or did not answer."""
        detail = _describe(error)
        with self._lock:
            self.failures += 1
            self._last_error = detail
            now = self._clock()
            if probe:
                self._probing = False
                self._state = "open"
                self._opened_at = now
                metrics.breaker_transition(self.name or "tier", "open")
                logger.info(
                    "%s circuit breaker: the probe failed (%s); failing fast for %.3g s more",
                    self.name or "tier",
                    detail,
                    self.cooldown,
                )
                return
            if self._state != "closed":
                return  # a call admitted before the breaker opened
            self._consecutive += 1
            if self._consecutive >= self.threshold:
                self._state = "open"
                self._opened_at = now
                self._opened_wall = time.time()
                self._rejected_at_open = self.rejected
                self.opened += 1
                metrics.breaker_transition(self.name or "tier", "open")
                logger.warning(
                    "%s unreachable: circuit breaker opened after %d consecutive failures "
                    "(last: %s); failing fast for %.3g s, then probing",
                    self.name or "tier",
                    self._consecutive,
                    detail,
                    self.cooldown,
                )

    def release(self, probe: bool) -> None:
        """The call ended without a verdict (cancelled): let the next call probe."""
        if probe:
            with self._lock:
                self._probing = False

    # -- what an operator reads ------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open``, ``half_open`` (a probe is due or in flight) or ``disabled``."""
        if not self.enabled:
            return "disabled"
        with self._lock:
            if self._state == "open" and self._clock() - self._opened_at >= self.cooldown:
                return "half_open"
            return self._state

    def stats(self) -> dict[str, Any]:
        """State and counters; ``opened_at`` is the wall time (epoch s) of the current outage."""
        state = self.state
        with self._lock:
            return {
                "state": state,
                "consecutive_failures": self._consecutive,
                "failures": self.failures,
                "opened": self.opened,
                "rejected": self.rejected,
                "probes": self.probes,
                "last_error": self._last_error,
                "opened_at": self._opened_wall if state in ("open", "half_open") else None,
                "threshold": self.threshold,
                "cooldown": self.cooldown,
            }

    def reset(self) -> None:
        """Close the breaker and forget the current failure streak (counters stay)."""
        with self._lock:
            was = self._state
            self._state = "closed"
            self._consecutive = 0
            self._probing = False
        if was != "closed":
            metrics.breaker_transition(self.name or "tier", "closed")
            logger.warning("%s circuit breaker closed by reset()", self.name or "tier")

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state!r})"

    def _open_error(self, now: float) -> CircuitOpen:
        wait = max(0.0, self.cooldown - (now - self._opened_at))
        when = datetime.fromtimestamp(self._opened_wall, UTC).isoformat(timespec="milliseconds")
        probe = "a probe is in flight" if self._probing else f"next probe in {wait:.1f} s"
        return CircuitOpen(
            self.name or "tier",
            f"circuit breaker open since {when} ({_since(self._opened_wall)} ago) after "
            f"{self.threshold} consecutive failures; last error: {self._last_error}; {probe}",
            retry_after=wait,
            last_error=self._last_error,
            opened_at=self._opened_wall,
        )


class _Guard:
    """One call's passage through a breaker (see :meth:`CircuitBreaker.guard`)."""

    __slots__ = ("_breaker", "_is_failure", "_probe")

    def __init__(self, breaker: CircuitBreaker, is_failure: FailureTest) -> None:
        self._breaker = breaker
        self._is_failure = is_failure
        self._probe = False

    def __enter__(self) -> None:
        self._probe = self._breaker.allow()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self._breaker.success(self._probe)
        elif not isinstance(exc, Exception):
            self._breaker.release(self._probe)
        elif self._is_failure(exc):
            self._breaker.failure(exc, self._probe)
        else:
            self._breaker.success(self._probe)


class _Pass:
    """The guard of a disabled breaker: does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_PASS: Any = _Pass()


def resolve_breaker(option: CircuitBreaker | bool | None, name: str) -> CircuitBreaker:
    """A tier's ``breaker=`` option: ``True`` (defaults), ``False``/``None`` (off), or one."""
    if isinstance(option, CircuitBreaker):
        if not option.name:
            option.name = name
        return option
    if option is True:
        return CircuitBreaker(name=name)
    if option is False or option is None:
        return CircuitBreaker(name=name, enabled=False)
    raise InvalidInput(f"breaker must be a CircuitBreaker, True or False, got {option!r}")


def _describe(error: BaseException) -> str:
    error = getattr(error, "orig", None) or error  # a SQLAlchemy error: the driver's
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _since(wall: float) -> str:
    return f"{max(0.0, time.time() - wall):.1f} s"
