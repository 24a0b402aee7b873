"""The one hook through which metrics and traces see the store's work.

The plan drivers (:mod:`tieredstore.plans`) and the maintenance functions
ask :data:`observer` whether anyone is watching. It is ``None`` until
:func:`tieredstore.metrics.enable` or :func:`tieredstore.telemetry.enable`
installs a recorder or a tracer, so with neither the cost is one global
lookup per store operation. This module imports nothing optional: the
Prometheus and OpenTelemetry halves live in :mod:`tieredstore.metrics` and
:mod:`tieredstore.telemetry`.

What is observed:

* a **store operation** — a plan of the tiered store's core (``load``,
  ``append``, ``settle`` ...), from its first step to its result;
* a **tier call** — one call a plan makes of the Redis tier, the archive or
  a lock backend (label ``tier``: ``redis``, ``archive``, ``lock``; the memory
  tier never blocks and is not timed);
* a **maintenance run** — one call of a function of :mod:`tieredstore.maintenance`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from tieredstore.metrics import Recorder
    from tieredstore.telemetry import Tracing

__all__ = ["Observer", "install_recorder", "install_tracing", "maintenance_task", "observer"]

P = ParamSpec("P")
R = TypeVar("R")

_TIERS = {"redis": "redis", "archive": "archive", "backend": "lock"}
"""Plan targets whose calls are tier calls, and their ``tier`` label."""

_STORE_PLANS = ("TieredCore.", "Reconciler.")
"""Plans that are store operations (by the qualified name of their function)."""


class _Null:
    """The context of something nobody observes."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _Null()


class _Watch:
    """Times one operation or tier call and, when tracing, holds its span."""

    __slots__ = ("_kind", "_name", "_observer", "_span", "_start", "_tier")

    def __init__(self, observer: Observer, kind: str, tier: str, name: str) -> None:
        self._observer = observer
        self._kind = kind
        self._tier = tier
        self._name = name
        self._span: Any = None
        self._start = 0.0

    def __enter__(self) -> None:
        tracing = self._observer.tracing
        if tracing is not None:
            self._span = tracing.start(self._kind, self._tier, self._name)
        self._start = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        seconds = time.perf_counter() - self._start
        recorder = self._observer.recorder
        if recorder is not None:
            if self._kind == "call":
                recorder.tier_call(self._tier, self._name, seconds, exc)
            else:
                recorder.operation(self._name, seconds, exc)
        if self._span is not None:
            tracing = self._observer.tracing
            assert tracing is not None
            tracing.finish(self._span, exc)


class Observer:
    """What is installed while metrics or tracing is on."""

    __slots__ = ("recorder", "tracing")

    def __init__(self, recorder: Recorder | None, tracing: Tracing | None) -> None:
        self.recorder = recorder
        self.tracing = tracing

    def operation(self, plan: Any) -> _Watch | _Null:
        """The context of running ``plan``, if it is a store operation."""
        qualname: str = getattr(plan, "__qualname__", "")
        if not qualname.startswith(_STORE_PLANS):
            return _NULL
        return _Watch(self, "operation", "", qualname.rpartition(".")[2].lstrip("_"))

    def call(self, target: str, name: str) -> _Watch | _Null:
        """The context of one call of ``targets[target].<name>``, if it is a tier call."""
        tier = _TIERS.get(target)
        if tier is None:
            return _NULL
        return _Watch(self, "call", tier, name.lstrip("_"))


observer: Observer | None = None
"""The installed observer; ``None`` while neither metrics nor tracing is on."""

_recorder: Recorder | None = None
_tracing: Tracing | None = None


def install_recorder(recorder: Recorder | None) -> None:
    """Install the metrics recorder (``None``: stop recording)."""
    global _recorder
    _recorder = recorder
    _refresh()


def install_tracing(tracing: Tracing | None) -> None:
    """Install the tracer (``None``: stop tracing)."""
    global _tracing
    _tracing = tracing
    _refresh()


def _refresh() -> None:
    global observer
    observer = (
        Observer(_recorder, _tracing) if _recorder is not None or _tracing is not None else None
    )


def maintenance_task(task: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a maintenance function: each call is timed, counted and traced as ``task``."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def observed(*args: P.args, **kwargs: P.kwargs) -> R:
            watching = observer
            if watching is None:
                return function(*args, **kwargs)
            span = (
                watching.tracing.start("maintenance", "", task)
                if watching.tracing is not None
                else None
            )
            start = time.perf_counter()
            error: BaseException | None = None
            result: Any = None
            try:
                result = function(*args, **kwargs)
                return result  # type: ignore[no-any-return]
            except BaseException as exc:
                error = exc
                raise
            finally:
                seconds = time.perf_counter() - start
                if watching.recorder is not None:
                    watching.recorder.maintenance(task, seconds, result, error)
                if span is not None and watching.tracing is not None:
                    watching.tracing.finish(span, error)

        return observed

    return decorate
