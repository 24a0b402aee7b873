"""What the worker tells its operator: missing tiers at start, and its metrics.

* At start the worker logs one WARNING for each tier its settings leave out
  that a task needs: without ``TIEREDSTORE_DATABASE_URL`` there is no
  archive, so ``archive_idle`` has nowhere to move sessions and does nothing
  (each run says so in the run log), and ``trim`` drops what it trims.
* With ``TIEREDSTORE_METRICS_PORT`` set, the worker records
  :mod:`tieredstore.metrics` and serves them on
  ``http://TIEREDSTORE_METRICS_ADDR:<port>/metrics`` (address default
  ``127.0.0.1``). Tasks run in the pool's processes, and each process serves
  its own figures: with the ``solo`` or ``threads`` pool that is the worker
  process on the port; with ``prefork`` (Celery's default) child *i* serves
  on port + *i* (``-c 4``: four ports from the port on), so scrape them all,
  or run the worker with ``--pool threads``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from tieredstore import metrics
from tieredstore.config import env_number
from tieredstore.errors import ConfigurationError, InvalidInput

__all__ = ["connect", "metrics_address", "missing_tiers"]

log = logging.getLogger("tieredstore.worker")

_served: metrics.MetricsServer | None = None
_served_pid = 0


def metrics_address(env: Mapping[str, str]) -> tuple[str, int] | None:
    """``(address, port)`` to serve metrics on, or ``None`` when
    ``TIEREDSTORE_METRICS_PORT`` is unset; a bad value raises, naming the setting."""
    port = env_number(env, "TIEREDSTORE_METRICS_PORT", int, None)
    if port is None:
        return None
    if not 1 <= port <= 65535:
        raise InvalidInput(f"TIEREDSTORE_METRICS_PORT must be a port (1-65535), got {port!r}")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "metrics",
            "TIEREDSTORE_METRICS_PORT is set but prometheus_client is not installed: "
            "pip install 'tieredstore[metrics]'",
        ) from None
    return (env.get("TIEREDSTORE_METRICS_ADDR") or "127.0.0.1").strip(), port


def missing_tiers(env: Mapping[str, str]) -> list[str]:
    """The warnings a worker with these settings logs at start (one per missing tier)."""
    redis_url = (env.get("TIEREDSTORE_REDIS_URL") or "").strip()
    database_url = (env.get("TIEREDSTORE_DATABASE_URL") or "").strip()
    if redis_url and not database_url:
        return [
            "no archive: TIEREDSTORE_DATABASE_URL is not set, so archive_idle has nowhere to "
            "move idle sessions and does nothing, and trim drops what it trims; expire and "
            "reconcile work on Redis alone"
        ]
    if not redis_url and not database_url:
        return [
            "no Redis tier: TIEREDSTORE_REDIS_URL is not set, so the worker maintains the "
            "embedded SQLite archive alone and archive_idle does nothing"
        ]
    return []


def _serve(address: tuple[str, int], offset: int) -> None:
    """Serve this process's metrics on ``port + offset`` (once per process)."""
    global _served, _served_pid
    if _served is not None and _served_pid == os.getpid():
        return
    addr, port = address
    try:
        _served = metrics.serve(port + offset, addr=addr)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%d (TIEREDSTORE_METRICS_PORT): %s",
                  addr, port + offset, exc)
        return
    _served_pid = os.getpid()
    log.info("serving metrics on %s (pid %d)", _served.url, _served_pid)


def _prefork(pool_cls: Any) -> bool:
    from celery.concurrency.prefork import TaskPool

    return isinstance(pool_cls, type) and issubclass(pool_cls, TaskPool)


def _after_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """The worker is set up (logging too), before it consumes: warn, serve metrics."""
    for warning in missing_tiers(os.environ):
        log.warning(warning)
    address = metrics_address(os.environ)
    if address is not None and not _prefork(getattr(instance, "pool_cls", None)):
        _serve(address, 0)


def _process_init(**_: Any) -> None:
    """A pool process started: a prefork child serves on port + its index."""
    from billiard.process import current_process  # type: ignore[import-untyped]

    index = getattr(current_process(), "index", None)
    if index is None:
        return  # the solo pool announces the worker process itself: served already
    address = metrics_address(os.environ)
    if address is not None:
        _serve(address, int(index))


def connect() -> None:
    """Connect the worker's start-up hooks to Celery's signals (idempotent)."""
    from celery import signals

    signals.celeryd_after_setup.connect(_after_setup, weak=False,
                                        dispatch_uid="tieredstore-after-setup")
    signals.worker_process_init.connect(_process_init, weak=False,
                                        dispatch_uid="tieredstore-process-init")
