"""Plans: logic written once, driven by a synchronous or an asynchronous shell.

A *plan* is a generator that yields :class:`Op` values — "call method ``name``
of the object the shell knows as ``target`` with these arguments" — and
receives each call's result, or has the call's exception thrown in at the
``yield``. The plan holds every decision; it performs no I/O itself.

:func:`run` performs the operations with plain calls, :func:`arun` awaits
them, so one plan serves ``TieredStore`` and ``AsyncTieredStore`` (and the
lock and conversation middleware), and a plan's ``try``/``except`` around a
``yield`` behaves exactly as it would around a direct call.

(The Redis tier uses the same idea one level down: its plans yield script
calls, see :class:`tieredstore.tiers.redis.RedisOps`.)

Every call the tiered store makes of a tier passes through here, so this is
where metrics and traces time them (:mod:`tieredstore.instrumentation`):
with neither enabled the drivers check one global per plan.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tieredstore import instrumentation
from tieredstore.instrumentation import Observer

__all__ = ["Op", "Plan", "arun", "done", "run"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Op:
    """Call ``targets[target].<name>(*args, **kwargs)`` and send back the result."""

    target: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


Plan = Generator[Op, Any, T]


def done(value: T) -> Plan[T]:
    """A plan that performs nothing and returns ``value``."""
    return value
    yield  # pragma: no cover - makes this a generator


def run(plan: Plan[T], targets: Mapping[str, Any]) -> T:
    """Drive ``plan`` with synchronous calls on ``targets``."""
    watching = instrumentation.observer
    if watching is None:
        return _run(plan, targets, None)
    with watching.operation(plan):
        return _run(plan, targets, watching)


def _run(plan: Plan[T], targets: Mapping[str, Any], watching: Observer | None) -> T:
    try:
        op = next(plan)
        while True:
            try:
                if watching is None:
                    result = getattr(targets[op.target], op.name)(*op.args, **op.kwargs)
                else:
                    with watching.call(op.target, op.name):
                        result = getattr(targets[op.target], op.name)(*op.args, **op.kwargs)
            except Exception as exc:
                op = plan.throw(exc)
            else:
                op = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def arun(plan: Plan[T], targets: Mapping[str, Any]) -> T:
    """Drive ``plan`` on the running event loop, awaiting each call.

    A target method may also be a plain (non-blocking) function, such as the
    memory tier's or a process-local lock's: its result is used as is.
    """
    watching = instrumentation.observer
    if watching is None:
        return await _arun(plan, targets, None)
    with watching.operation(plan):
        return await _arun(plan, targets, watching)


async def _arun(plan: Plan[T], targets: Mapping[str, Any], watching: Observer | None) -> T:
    try:
        op = next(plan)
        while True:
            try:
                if watching is None:
                    result = getattr(targets[op.target], op.name)(*op.args, **op.kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                else:
                    with watching.call(op.target, op.name):
                        result = getattr(targets[op.target], op.name)(*op.args, **op.kwargs)
                        if inspect.isawaitable(result):
                            result = await result
            except Exception as exc:
                op = plan.throw(exc)
            else:
                op = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
