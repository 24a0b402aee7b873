"""Maintenance of LangGraph checkpoints: archival, expiry, retention. No LangGraph needed.

:func:`maintain_checkpoints` is what the worker's ``tieredstore.checkpoints``
task runs (and what an application may call itself): bounded, idempotent,
returning a :class:`~tieredstore.maintenance.MaintenanceResult`.

1. **Archival**, bucket by bucket under a lease (so concurrent workers take
   disjoint buckets): threads not written for ``archive_after`` seconds are
   copied whole into the archive and removed from Redis; threads holding
   more than ``window`` checkpoints in a namespace have the older ones (and
   their writes) copied and removed. Each removal is a compare-and-delete on
   what was copied, so a checkpoint or write that arrives meanwhile stays in
   Redis for a later run; a copy the archive refuses (the thread was deleted
   since) is left alone.
2. **Expiry**: archived threads past their TTL are deleted (those alive in
   Redis keep going by Redis's expiry).
3. **Retention** (``retention_days``): archived threads without a write for
   that long are deleted, except those alive in Redis.

``changed`` counts threads archived, trimmed or deleted; ``messages`` the
checkpoints copied into the archive; ``skipped`` threads left because they
changed meanwhile (or were refused).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tieredstore.config import env_number
from tieredstore.errors import InvalidInput
from tieredstore.instrumentation import maintenance_task
from tieredstore.integrations.langgraph.cold import ColdCheckpoints
from tieredstore.integrations.langgraph.hot import HotCheckpoints
from tieredstore.maintenance import (
    DEFAULT_LEASE_TTL,
    MaintenanceResult,
    Progress,
    _Buckets,
    _now_ms,
    _Run,
)

__all__ = ["DEFAULT_WINDOW", "CheckpointSettings", "maintain_checkpoints"]

DEFAULT_WINDOW = 10
"""Checkpoints per thread and namespace that stay in Redis when archival runs."""

TASK = "checkpoints"


class HasTiers(Protocol):
    """A :class:`~tieredstore.TieredStore` or a ``TieredCheckpointSaver``."""

    @property
    def redis(self) -> Any: ...

    @property
    def archive(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class CheckpointSettings:
    """How the worker maintains checkpoints, from ``TIEREDSTORE_*`` variables.

    ``TIEREDSTORE_CHECKPOINT_INTERVAL`` (seconds between runs, default 60),
    ``TIEREDSTORE_CHECKPOINT_WINDOW`` (hot checkpoints per thread and
    namespace, default 10); archival and retention use the sessions'
    ``TIEREDSTORE_ARCHIVE_AFTER`` and ``TIEREDSTORE_RETENTION_DAYS``.
    """

    interval: float = 60.0
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise InvalidInput(
                f"TIEREDSTORE_CHECKPOINT_INTERVAL must be positive, got {self.interval!r}")
        if self.window < 1:
            raise InvalidInput(
                f"TIEREDSTORE_CHECKPOINT_WINDOW must be positive, got {self.window!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CheckpointSettings:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            interval=env_number(env, "TIEREDSTORE_CHECKPOINT_INTERVAL", float, d.interval),
            window=env_number(env, "TIEREDSTORE_CHECKPOINT_WINDOW", int, d.window),
        )


@maintenance_task(TASK)
def maintain_checkpoints(
    store: HasTiers,
    *,
    archive_after: float,
    window: int = DEFAULT_WINDOW,
    retention_days: float | None = None,
    batch_size: int = 500,
    max_batches: int | None = 20,
    time_budget: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> MaintenanceResult:
    """Archive idle threads and checkpoints beyond the hot window; expire; retain.

    ``store``: anything with ``redis`` and ``archive`` tiers (a ``TieredStore``,
    a ``TieredCheckpointSaver``). Idle time is measured by Redis's clock, expiry
    and retention by the archive's, unless ``now`` (seconds) is given.
    """
    if not archive_after >= 0:
        raise InvalidInput(f"archive_after must be non-negative, got {archive_after!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InvalidInput(f"window must be a positive integer, got {window!r}")
    if retention_days is not None and (isinstance(retention_days, bool)
                                       or not retention_days > 0):
        raise InvalidInput(f"retention_days must be positive, got {retention_days!r}")
    run = _Run(TASK, batch_size, max_batches, time_budget, dry_run, progress)
    hot = HotCheckpoints(store.redis, window=window) if store.redis is not None else None
    cold = ColdCheckpoints(store.archive) if store.archive is not None else None
    now_ms = _now_ms(now)
    if hot is not None and cold is not None:
        _archive(hot, cold, run, store.redis, archive_after, now_ms, lease_ttl)
    if cold is not None:
        at = now_ms if now_ms is not None else cold.now_ms()
        live = hot.live if hot is not None else None
        _sweep(cold, run, "expires_ms", at, live)
        if retention_days is not None:
            _sweep(cold, run, "updated_ms", at - int(retention_days * 86_400_000), live)
    return run.result()


def _archive(hot: HotCheckpoints, cold: ColdCheckpoints, run: _Run, redis: Any,
             archive_after: float, now_ms: int | None, lease_ttl: float) -> None:
    cutoff = (now_ms if now_ms is not None else hot.now_ms()) - int(archive_after * 1000)
    buckets = _Buckets(redis, TASK, lease_ttl, run.dry_run)
    size = run.batch_size

    def bucket_work(bucket: int) -> bool:
        for mode in ("all", "surplus"):
            while True:
                if not run.more() or not buckets.renew(bucket):
                    run.remaining = True
                    return False
                tids = (hot.idle(bucket, cutoff, size) if mode == "all"
                        else hot.over_window(bucket, size))
                if not tids:
                    break
                if run.dry_run:
                    run.changed += len(tids)
                    run.batch_done(len(tids))
                    break
                captured = [c for c in hot.capture_many(tids, mode) if c is not None]
                taken = cold.absorb([c.copy for c in captured])
                kept = [c for c, ok in zip(captured, taken, strict=True) if ok]
                done = hot.evict_many(kept, mode)
                moved = sum(done)
                run.changed += moved
                run.skipped += len(captured) - moved
                run.messages += sum(len(c.copy.checkpoints) for c in kept)
                run.batch_done(len(tids))
                if len(tids) < size or not moved:
                    break  # what is left changed meanwhile: a later run takes it
        return True

    buckets.each(bucket_work)


def _sweep(cold: ColdCheckpoints, run: _Run, column: str, cutoff_ms: int,
           live: Any) -> None:
    after = None
    while True:
        if not run.more():
            run.remaining = True
            return
        swept = cold.sweep(column=column, cutoff_ms=cutoff_ms, batch_size=run.batch_size,
                           after=after, live=live, dry_run=run.dry_run)
        run.changed += swept.deleted
        run.skipped += swept.live
        run.batch_done(swept.seen)
        if swept.seen < run.batch_size:
            return
        after = swept.after
