"""Prometheus metrics of this process's stores (``pip install 'tieredstore[metrics]'``).

Nothing is recorded until :func:`enable` is called; ``prometheus_client`` is
imported only then, so the library works without it. ::

    from tieredstore import metrics

    metrics.enable()                     # onto prometheus_client's default registry
    server = metrics.serve(9464)         # or: serve /metrics yourself (see the README)

Every name starts with ``tieredstore_``; labels are low-cardinality (tier,
operation, breaker, task, outcome: never a session or user id).

Two kinds of sources:

* **events** recorded as they happen (latencies, failures, evictions,
  invalidations, breaker transitions, maintenance runs), each a no-op
  function call while metrics are disabled;
* **counters the stores keep anyway** (per-tier hits, misses, promotions and
  errors, the figures of ``TieredStore.stats()``), memory tier sizes,
  breaker states and listener health, read when the registry is scraped, so
  they cost nothing on the hot path. Stores register themselves (weakly)
  when built; the counts of a store that is gone are kept, so the totals
  never go down.

All figures are of this process. Several stores in one process add up (a
breaker state gauge counts the breakers of that name in each state).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tieredstore import instrumentation
from tieredstore.errors import BackendUnavailable, CircuitOpen, ConfigurationError, TieredStoreError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = [
    "MetricsServer",
    "Recorder",
    "disable",
    "enable",
    "enabled",
    "registry",
    "serve",
]

LATENCY_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
"""Seconds; from a memory hit (microseconds) to a call waiting out a timeout."""

MAINTENANCE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

BREAKER_STATES = ("closed", "open", "half_open")

_MAINTENANCE_ITEMS = ("scanned", "changed", "skipped", "repaired", "messages", "partitions")


class Counted(Protocol):
    """A tier's counters in ``TieredStore.stats()`` (:class:`tieredstore.tiering.TierStats`)."""

    hits: int
    misses: int
    promotions: int
    errors: int


class _Live:
    """The stores, breakers and listeners of this process, held weakly.

    A tiered store's ``stats`` dict is held here; when the store is garbage
    collected its counts move to ``retired``, so the exported totals only grow.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tiers: dict[int, Mapping[str, Counted]] = {}
        self.retired: dict[tuple[str, str], int] = {}
        self.memories: weakref.WeakSet[Any] = weakref.WeakSet()
        self.breakers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.listeners: weakref.WeakSet[Any] = weakref.WeakSet()
        self._tokens = itertools.count()

    def add_tiers(self, owner: object, stats: Mapping[str, Counted]) -> None:
        token = next(self._tokens)
        with self.lock:
            self.tiers[token] = stats
        weakref.finalize(owner, self._retire, token)

    def _retire(self, token: int) -> None:
        with self.lock:
            stats = self.tiers.pop(token, None)
            if stats is None:
                return
            for tier, counts in stats.items():
                for field in ("hits", "misses", "promotions", "errors"):
                    key = (tier, field)
                    self.retired[key] = self.retired.get(key, 0) + getattr(counts, field)

    def tier_totals(self) -> dict[tuple[str, str], int]:
        with self.lock:
            totals = dict(self.retired)
            for stats in self.tiers.values():
                for tier, counts in stats.items():
                    for field in ("hits", "misses", "promotions", "errors"):
                        key = (tier, field)
                        totals[key] = totals.get(key, 0) + getattr(counts, field)
        return totals


_live = _Live()


# -- what the stores call (cheap while disabled) ------------------------------------------


def track_tiers(owner: object, stats: Mapping[str, Counted]) -> None:
    """Export ``stats`` (a tiered store's per-tier counters) while ``owner`` lives, and after."""
    _live.add_tiers(owner, stats)


def track_memory(store: object) -> None:
    """Export a memory tier's size (``entries``, ``bytes``) while it is open."""
    _live.memories.add(store)


def track_breaker(breaker: object) -> None:
    """Export a circuit breaker's state while it lives."""
    _live.breakers.add(breaker)


def track_listener(listener: object) -> None:
    """Export an invalidation listener's health while it runs."""
    _live.listeners.add(listener)


def breaker_transition(name: str, state: str) -> None:
    """A breaker named ``name`` went to ``state`` (``open``, ``half_open``, ``closed``)."""
    recorder = _recorder
    if recorder is not None:
        recorder.breaker_transitions.labels(name, state).inc()


def breaker_rejected(name: str) -> None:
    """A call failed fast on an open breaker."""
    recorder = _recorder
    if recorder is not None:
        recorder.breaker_rejected.labels(name).inc()


def memory_evicted() -> None:
    """The memory tier evicted its least recently used session to make room."""
    recorder = _recorder
    if recorder is not None:
        recorder.evictions.inc()


def memory_flushed() -> None:
    """The memory tier was emptied (its invalidation listener resubscribed)."""
    recorder = _recorder
    if recorder is not None:
        recorder.flushes.inc()


def invalidation_received() -> None:
    """An invalidation listener received an announcement of a write."""
    recorder = _recorder
    if recorder is not None:
        recorder.invalidations_received.inc()


def invalidation_applied() -> None:
    """An invalidation dropped an older cached copy from a memory tier."""
    recorder = _recorder
    if recorder is not None:
        recorder.invalidations_applied.inc()


def listener_event(event: str) -> None:
    """The invalidation channel was ``lost`` or ``resubscribed``."""
    recorder = _recorder
    if recorder is not None:
        recorder.listener_events.labels(event).inc()


def worker_task(task: str, outcome: str) -> None:
    """A worker task ended (``ran``, ``slot_taken``, ``locked``, ``no_archive`` ...)."""
    recorder = _recorder
    if recorder is not None:
        recorder.worker_tasks.labels(task, outcome).inc()


# -- the recorder ---------------------------------------------------------------------------


def _error_label(error: BaseException) -> str:
    if isinstance(error, TieredStoreError):
        return type(error).__name__
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "unexpected"


class Recorder:
    """The Prometheus metrics of one registry (see :func:`enable`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.registry = registry
        r = registry
        self.operation_seconds = Histogram(
            "tieredstore_operation_duration_seconds",
            "Store operations of TieredStore/AsyncTieredStore, from the call to its result.",
            ["operation"], buckets=LATENCY_BUCKETS, registry=r)
        self.operation_errors = Counter(
            "tieredstore_operation_errors",
            "Store operations that raised, by error class (SessionNotFound included).",
            ["operation", "error"], registry=r)
        self.call_seconds = Histogram(
            "tieredstore_tier_call_duration_seconds",
            "Calls of a tier (redis, archive, lock) made by a store operation.",
            ["tier", "operation"], buckets=LATENCY_BUCKETS, registry=r)
        self.call_failures = Counter(
            "tieredstore_tier_call_failures",
            "Tier calls that failed: unavailable (unreachable, timed out) or circuit_open.",
            ["tier", "operation", "reason"], registry=r)
        self.evictions = Counter(
            "tieredstore_memory_evictions",
            "Sessions the memory tier evicted to stay within its bounds.", registry=r)
        self.flushes = Counter(
            "tieredstore_memory_flushes",
            "Times a memory tier holding sessions was emptied whole (its listener "
            "resubscribed: invalidations may have been lost).",
            registry=r)
        self.invalidations_received = Counter(
            "tieredstore_invalidations_received",
            "Write announcements received by the invalidation listeners.", registry=r)
        self.invalidations_applied = Counter(
            "tieredstore_invalidations_applied",
            "Invalidations that dropped an older cached copy from a memory tier.", registry=r)
        self.listener_events = Counter(
            "tieredstore_invalidation_channel_events",
            "The invalidation channel was lost or resubscribed.", ["event"], registry=r)
        self.breaker_transitions = Counter(
            "tieredstore_breaker_transitions",
            "Circuit breaker state changes, by the state entered.", ["breaker", "state"],
            registry=r)
        self.breaker_rejected = Counter(
            "tieredstore_breaker_rejected_calls",
            "Calls failed fast, without I/O, by an open circuit breaker.", ["breaker"],
            registry=r)
        self.maintenance_runs = Counter(
            "tieredstore_maintenance_runs",
            "Maintenance calls by task and outcome (done, remaining, dry_run, error).",
            ["task", "outcome"], registry=r)
        self.maintenance_seconds = Histogram(
            "tieredstore_maintenance_duration_seconds",
            "Maintenance calls' durations by task and outcome.", ["task", "outcome"],
            buckets=MAINTENANCE_BUCKETS, registry=r)
        self.maintenance_items = Counter(
            "tieredstore_maintenance_items",
            "What maintenance calls did (not dry runs): sessions scanned, changed, skipped, "
            "repaired; messages; partitions.", ["task", "kind"], registry=r)
        self.worker_tasks = Counter(
            "tieredstore_worker_tasks",
            "Worker task runs: ran, slot_taken, locked, lock_lost, no_archive, no_redis, error.",
            ["task", "outcome"], registry=r)
        self.collector = _StoreCollector()
        registry.register(self.collector)
        self._owned = [v for v in vars(self).values() if isinstance(v, Counter | Histogram)]
        self._calls: dict[tuple[str, str], Any] = {}
        self._operations: dict[str, Any] = {}

    def close(self) -> None:
        """Take every metric of this recorder off its registry."""
        for metric in [*self._owned, self.collector]:
            self.registry.unregister(metric)

    def operation(self, name: str, seconds: float, error: BaseException | None) -> None:
        child = self._operations.get(name)
        if child is None:
            child = self._operations[name] = self.operation_seconds.labels(name)
        child.observe(seconds)
        if error is not None:
            self.operation_errors.labels(name, _error_label(error)).inc()

    def tier_call(self, tier: str, name: str, seconds: float, error: BaseException | None) -> None:
        key = (tier, name)
        child = self._calls.get(key)
        if child is None:
            child = self._calls[key] = self.call_seconds.labels(tier, name)
        child.observe(seconds)
        if isinstance(error, BackendUnavailable):
            reason = "circuit_open" if isinstance(error, CircuitOpen) else "unavailable"
            self.call_failures.labels(tier, name, reason).inc()

    def maintenance(self, task: str, seconds: float, result: Any,
                    error: BaseException | None) -> None:
        if error is not None or result is None:
            outcome = "error"
        elif result.dry_run:
            outcome = "dry_run"
        else:
            outcome = "remaining" if result.remaining else "done"
        self.maintenance_runs.labels(task, outcome).inc()
        self.maintenance_seconds.labels(task, outcome).observe(seconds)
        if outcome in ("done", "remaining"):
            for kind in _MAINTENANCE_ITEMS:
                count = getattr(result, kind, 0)
                if count:
                    self.maintenance_items.labels(task, kind).inc(count)


class _StoreCollector:
    """The counters and states the stores keep, read at scrape time."""

    def describe(self) -> Iterator[Metric]:
        return self._families(empty=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(empty=False)

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counters = {
            field: CounterMetricFamily(
                f"tieredstore_tier_{field}", doc, labels=["tier"])
            for field, doc in (
                ("hits", "Reads a tier answered (the TieredStore.stats() counters)."),
                ("misses", "Reads a tier did not have the session for."),
                ("promotions", "Sessions copied from this tier into the one above it."),
                ("errors", "Calls of a tier that failed as unavailable."),
            )
        }
        entries = GaugeMetricFamily("tieredstore_memory_entries",
                                    "Sessions held by open memory tiers.")
        nbytes = GaugeMetricFamily("tieredstore_memory_bytes",
                                   "Estimated bytes held by open memory tiers.")
        breakers = GaugeMetricFamily(
            "tieredstore_breaker_state",
            "Circuit breakers of each name in each state (1 for a process with one store).",
            labels=["breaker", "state"])
        listeners = GaugeMetricFamily(
            "tieredstore_invalidation_listeners",
            "Running invalidation listeners, healthy (subscribed and heard from) or not.",
            labels=["state"])
        if not empty:
            for (tier, field), count in sorted(_live.tier_totals().items()):
                counters[field].add_metric([tier], count)
            memories = [m for m in list(_live.memories) if not getattr(m, "_closed", False)]
            sizes = [m.stats() for m in memories]
            entries.add_metric([], sum(size["entries"] for size in sizes))
            nbytes.add_metric([], sum(size["bytes"] for size in sizes))
            states: dict[tuple[str, str], int] = {}
            for breaker in list(_live.breakers):
                if breaker.enabled:
                    for state in BREAKER_STATES:
                        states.setdefault((breaker.name or "tier", state), 0)
                    states[(breaker.name or "tier", breaker.state)] += 1
            for (name, state), count in sorted(states.items()):
                breakers.add_metric([name, state], count)
            running = [core for core in list(_live.listeners) if not core.stopped]
            healthy = sum(1 for core in running if core.healthy)
            listeners.add_metric(["healthy"], healthy)
            listeners.add_metric(["unhealthy"], len(running) - healthy)
        yield from counters.values()
        yield from (entries, nbytes, breakers, listeners)


# -- enabling and serving --------------------------------------------------------------------

_recorder: Recorder | None = None
_switch = threading.Lock()


def _require_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "metrics", "prometheus_client is not installed: pip install 'tieredstore[metrics]'"
        ) from exc


def enable(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Start recording into ``registry`` (default: ``prometheus_client.REGISTRY``); returns it.

    Idempotent for one registry; another registry replaces the first (its
    metrics are unregistered and the event counts start again from zero).
    Raises :class:`~tieredstore.errors.ConfigurationError` without ``prometheus_client``.
    """
    global _recorder
    _require_client()
    from prometheus_client import REGISTRY

    target = REGISTRY if registry is None else registry
    with _switch:
        if _recorder is not None and _recorder.registry is target:
            return target
        if _recorder is not None:
            _recorder.close()
        _recorder = Recorder(target)
        instrumentation.install_recorder(_recorder)
        return target


def disable() -> None:
    """Stop recording and unregister every metric (idempotent)."""
    global _recorder
    with _switch:
        if _recorder is not None:
            _recorder.close()
            _recorder = None
            instrumentation.install_recorder(None)


def enabled() -> bool:
    """Whether metrics are being recorded."""
    return _recorder is not None


def registry() -> CollectorRegistry | None:
    """The registry being recorded into, if any."""
    recorder = _recorder
    return recorder.registry if recorder is not None else None


class MetricsServer:
    """``/metrics`` served over HTTP on a daemon thread (see :func:`serve`)."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.addr: str = server.server_address[0]
        self.port: int = int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    port: int = 0, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Enable metrics (onto ``registry``) and serve them on ``http://addr:port/metrics``.

    ``port=0`` picks a free port (``server.port`` says which). Loopback by
    default: pass ``addr="0.0.0.0"`` to let a Prometheus on another host scrape it.
    """
    from prometheus_client import start_http_server

    target = enable(registry)
    server, thread = start_http_server(port, addr=addr, registry=target)
    return MetricsServer(server, thread)
