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
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    try:
        op = next(plan)
        while True:
            try:
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
    try:
        op = next(plan)
        while True:
            try:
                result = getattr(targets[op.target], op.name)(*op.args, **op.kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                op = plan.throw(exc)
            else:
                op = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
