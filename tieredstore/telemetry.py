"""OpenTelemetry spans around store operations and tier calls (``pip install 'tieredstore[otel]'``).

Nothing is traced until :func:`enable` is called; ``opentelemetry-api`` is
imported only then. ::

    from tieredstore import telemetry

    telemetry.enable()                   # the global tracer provider, or tracer_provider=...

Spans (no session or user ids in them):

* ``tieredstore.<operation>`` (INTERNAL) — one store operation of
  ``TieredStore``/``AsyncTieredStore``: ``tieredstore.load``, ``tieredstore.append`` ...;
* ``tieredstore.<tier>.<call>`` (CLIENT) — each call it makes of a tier, a
  child of the operation: ``tieredstore.redis.snapshot``,
  ``tieredstore.archive.write_save``, ``tieredstore.lock.lock_acquire``;
  attributes ``tieredstore.tier`` and ``tieredstore.call``;
* ``tieredstore.maintenance.<task>`` — one maintenance call.

A span's status is ERROR when a tier was unavailable (``BackendUnavailable``,
``CircuitOpen``) or something unexpected was raised; an error that is an
answer (``SessionNotFound``, ``VersionConflict`` ...) is recorded as the
attribute ``tieredstore.error`` and leaves the status unset.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from tieredstore import instrumentation
from tieredstore.errors import BackendUnavailable, ConfigurationError, TieredStoreError

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, TracerProvider

    Started = tuple[Span, Token[Context]]

__all__ = ["Tracing", "disable", "enable", "enabled"]


class Tracing:
    """Starts and ends the spans of one tracer (see :func:`enable`)."""

    def __init__(self, provider: TracerProvider | None) -> None:
        from opentelemetry import context, trace

        from tieredstore import __version__

        self._trace = trace
        self._context = context
        self._tracer = trace.get_tracer("tieredstore", __version__, tracer_provider=provider)
        self._kinds = {
            "operation": trace.SpanKind.INTERNAL,
            "call": trace.SpanKind.CLIENT,
            "maintenance": trace.SpanKind.INTERNAL,
        }

    def start(self, kind: str, tier: str, name: str) -> Started:
        """Start a span and make it current: ``(span, context token)``."""
        if kind == "call":
            title = f"tieredstore.{tier}.{name}"
            attributes = {"tieredstore.tier": tier, "tieredstore.call": name}
        elif kind == "maintenance":
            title = f"tieredstore.maintenance.{name}"
            attributes = {"tieredstore.task": name}
        else:
            title = f"tieredstore.{name}"
            attributes = {"tieredstore.operation": name}
        span = self._tracer.start_span(
            title, kind=self._kinds[kind], attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def finish(self, started: Started, error: BaseException | None) -> None:
        """End a span from :meth:`start`, with the outcome of its work."""
        span, token = started
        self._context.detach(token)
        if error is not None:
            if isinstance(error, BackendUnavailable) or not isinstance(
                error, TieredStoreError | asyncio.CancelledError
            ):
                span.record_exception(error)
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error)))
            span.set_attribute("tieredstore.error", type(error).__name__)
        span.end()


_tracing: Tracing | None = None
_switch = threading.Lock()


def enable(tracer_provider: TracerProvider | None = None) -> None:
    """Trace store operations, tier calls and maintenance runs.

    ``tracer_provider``: where the spans go (default: OpenTelemetry's global
    provider). Calling it again replaces the provider. Raises
    :class:`~tieredstore.errors.ConfigurationError` without ``opentelemetry-api``.
    """
    global _tracing
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "telemetry", "opentelemetry-api is not installed: pip install 'tieredstore[otel]'"
        ) from exc
    with _switch:
        _tracing = Tracing(tracer_provider)
        instrumentation.install_tracing(_tracing)


def disable() -> None:
    """Stop tracing (idempotent)."""
    global _tracing
    with _switch:
        _tracing = None
        instrumentation.install_tracing(None)


def enabled() -> bool:
    """Whether spans are being made."""
    return _tracing is not None
