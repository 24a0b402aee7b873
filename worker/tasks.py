"""Celery tasks: thin wrappers over :mod:`tieredstore.maintenance`.

Each task runs one bounded call of its maintenance function and, while the
result says work remains, enqueues itself again (at most
``TIEREDSTORE_MAX_CHAIN`` times in a row). Two guards, both in the store's
Redis, make a task run at most once at a time and at most once per interval
however many beats and workers there are:

* the **slot**: a scheduled run first claims the current interval slot
  ``n = floor(now / interval)`` in ``maint:slot:<task>``, atomically and by
  the Redis server's clock (so neither a worker stalled between reading its
  clock and claiming, nor clocks differing between hosts, can let a slot run
  twice); a second beat's message for a slot already claimed does nothing
  (continuations carry on the slot of the run that chained them);
* the **lock**: ``maint:lock:<task>`` holds a random token (``SET NX PX``),
  is extended after every batch and released by compare-and-delete. It
  expires after ``TIEREDSTORE_LOCK_TTL`` seconds, so a worker killed
  mid-run blocks the task only until then; a run that finds its lock taken
  over stops after its current batch.

With ``TIEREDSTORE_PARALLEL=N`` (default 1) a task runs N-wide: the run that
claims a slot enqueues N - 1 siblings for the same slot, and each run holds
one of N locks (``maint:lock:<task>``, ``maint:lock:<task>:1`` ...). The
maintenance functions lease Redis buckets one at a time (see
:mod:`tieredstore.maintenance`), so parallel runs work on disjoint buckets
and never repeat each other's work.

Every run is logged to the capped list ``maint:runs`` (newest first) for
operators and tests, with ``held``: when it took and released the lock
(read inside the lock, so one task's spans never overlap while the lock
holds). A run that has nothing to work on — ``archive_idle`` without an
archive or without Redis, ``checkpoints`` without an archive — says so there
(``"skipped": "no_archive"``) and in the log instead of doing nothing
silently. With metrics on, every run counts in
``tieredstore_worker_tasks_total`` by outcome.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Task

from tieredstore import maintenance, metrics
from tieredstore.integrations.langgraph.maintenance import CheckpointSettings, maintain_checkpoints
from tieredstore.maintenance import MaintenanceResult, MaintenanceSettings
from tieredstore.store import TieredStore
from tieredstore.tiers.redis import RedisKeys

from .app import app, broker_url

__all__ = [
    "RUN_LOG_SIZE",
    "LockLost",
    "Maintenance",
    "archive_idle",
    "checkpoints",
    "expire",
    "partitions",
    "reconcile",
    "retain",
    "trim",
]

log = logging.getLogger(__name__)

RUN_LOG_SIZE = 1000

# KEYS lock; ARGV token [ttl_ms]. Release (no ttl) or extend the lock, only if
# it still holds our token.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end " \
           "return 0"
_EXTEND = "if redis.call('GET', KEYS[1]) == ARGV[1] then " \
          "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
# KEYS slot hash; ARGV interval_ms owner. Claim the current slot by the server's
# clock unless this slot (or a later one) was claimed: returns {claimed, slot}.
_CLAIM = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local slot = math.floor(now / interval)
local last = redis.call('HGET', KEYS[1], 'claimed_ms')
if last and math.floor(tonumber(last) / interval) >= slot then return {0, slot} end
redis.call('HSET', KEYS[1], 'claimed_ms', now, 'owner', ARGV[2])
return {1, slot}
"""


class LockLost(Exception):
    """The run's lock expired and another run may hold it: stop after this batch."""


@dataclass
class Maintenance:
    """What a worker process needs: the store, the settings, and Redis for coordination."""

    store: TieredStore
    settings: MaintenanceSettings
    client: redis.Redis
    root: str
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)

    @classmethod
    def from_env(cls) -> Maintenance:
        env = os.environ
        settings = MaintenanceSettings.from_env(env)
        store = TieredStore.from_env(memory_max_bytes=None, listen=False)
        if store.redis is not None:
            client, root = store.redis.client, store.redis.keys.root
        else:  # no Redis tier: coordinate through the broker's Redis (or TIEREDSTORE_LOCK_URL)
            url = env.get("TIEREDSTORE_LOCK_URL") or broker_url(env)
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise RuntimeError("the worker needs Redis for its locks: set TIEREDSTORE_LOCK_URL")
            client = redis.Redis.from_url(url)
            prefix = env.get("TIEREDSTORE_PREFIX", "ts")
            root = RedisKeys(prefix, env.get("TIEREDSTORE_NAMESPACE", "default")).root
        return cls(store, settings, client, root + "maint:", CheckpointSettings.from_env(env))

    def claim_slot(self, task: str, interval: float) -> tuple[bool, int]:
        """Claim the task's current interval slot: ``(claimed, slot)``."""
        interval_ms = max(int(interval * 1000), 1)
        claimed, slot = self.client.eval(_CLAIM, 1, f"{self.root}slot:{task}", interval_ms,
                                         os.getpid())
        return bool(claimed), int(slot)

    def lock_key(self, task: str, index: int) -> str:
        return f"{self.root}lock:{task}" + (f":{index}" if index else "")

    def acquire(self, task: str) -> tuple[str, int] | None:
        """Take one of the task's ``parallel`` locks: ``(token, which)``, or ``None``."""
        token = uuid.uuid4().hex
        ttl = int(self.settings.lock_ttl * 1000)
        for index in range(self.settings.parallel):
            if self.client.set(self.lock_key(task, index), token, nx=True, px=ttl):
                return token, index
        return None

    def extend(self, task: str, token: str, index: int = 0) -> bool:
        ttl = int(self.settings.lock_ttl * 1000)
        return bool(self.client.eval(_EXTEND, 1, self.lock_key(task, index), token, ttl))

    def release(self, task: str, token: str, index: int = 0) -> None:
        self.client.eval(_RELEASE, 1, self.lock_key(task, index), token)

    def record(self, entry: dict[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.root + "runs", json.dumps(entry))
        pipe.ltrim(self.root + "runs", 0, RUN_LOG_SIZE - 1)
        pipe.execute()


_context: Maintenance | None = None
_context_pid = 0
_context_lock = threading.Lock()


def context() -> Maintenance:
    """This process's :class:`Maintenance`, built on first use (after the pool forks)."""
    global _context, _context_pid
    with _context_lock:
        if _context is None or _context_pid != os.getpid():
            _context, _context_pid = Maintenance.from_env(), os.getpid()
        return _context


Step = Callable[[Maintenance, maintenance.Progress], MaintenanceResult | None]


def run_task(task: Task, name: str, interval: float, step: Step, slot: int | None,
             chain: int) -> dict[str, Any]:
    """Claim the slot (scheduled runs; they also start the parallel siblings),
    take a lock, run one bounded step, chain if needed."""
    ctx = context()
    started = time.time()
    if slot is None:
        claimed, slot = ctx.claim_slot(name, interval)
        if not claimed:
            log.info("maintenance %s: slot %d already ran", name, slot)
            metrics.worker_task(name, "slot_taken")
            return {"task": name, "skipped": "slot"}
        for _ in range(ctx.settings.parallel - 1):
            task.apply_async(kwargs={"slot": slot, "chain": chain})
    held = ctx.acquire(name)
    if held is None:
        log.info("maintenance %s: another run holds the lock", name)
        metrics.worker_task(name, "locked")
        return {"task": name, "skipped": "locked"}
    token, index = held
    locked_at = time.time()

    def heartbeat(done: int, total: int) -> None:
        if not ctx.extend(name, token, index):
            raise LockLost(name)

    lost = False
    try:
        result = step(ctx, heartbeat)
    except LockLost:
        lost, result = True, None
    except Exception:
        metrics.worker_task(name, "error")
        raise
    finally:
        unlocked_at = time.time()
        ctx.release(name, token, index)
    metrics.worker_task(name, "lock_lost" if lost else "ran")
    summary: dict[str, Any] = {"task": name, "slot": slot, "chain": chain, "started": started,
                               "finished": time.time(), "held": [locked_at, unlocked_at],
                               "lock": index, "host": socket.gethostname(), "pid": os.getpid(),
                               "lock_lost": lost}
    if result is not None:
        summary["result"] = result.as_dict()
    ctx.record(summary)
    if result is not None and result.remaining and chain < ctx.settings.max_chain:
        task.apply_async(kwargs={"slot": slot, "chain": chain + 1})
    return summary


def _limits(ctx: Maintenance, progress: maintenance.Progress) -> dict[str, Any]:
    s = ctx.settings
    return {"batch_size": s.batch_size, "max_batches": s.max_batches,
            "time_budget": s.time_budget, "progress": progress}


def _leased(ctx: Maintenance, progress: maintenance.Progress) -> dict[str, Any]:
    return {**_limits(ctx, progress), "lease_ttl": ctx.settings.lock_ttl}


def _expire(ctx: Maintenance, progress: maintenance.Progress) -> MaintenanceResult:
    return maintenance.expire(ctx.store, **_leased(ctx, progress))


def _archive(ctx: Maintenance, progress: maintenance.Progress) -> MaintenanceResult:
    return maintenance.archive_idle(ctx.store, archive_after=ctx.settings.archive_after,
                                    **_leased(ctx, progress))


_NOTHING_TO_ARCHIVE = {
    "no_archive": "the store has no archive (TIEREDSTORE_DATABASE_URL is not set)",
    "no_redis": "the store has no Redis tier (TIEREDSTORE_REDIS_URL is not set)",
}


def nothing_to_do(ctx: Maintenance, name: str, reason: str) -> dict[str, Any]:
    """Report a run that had nothing to work on: the log, the run log and the metrics."""
    log.info("maintenance %s: did nothing: %s", name, _NOTHING_TO_ARCHIVE[reason])
    now = time.time()
    summary: dict[str, Any] = {"task": name, "skipped": reason, "started": now, "finished": now,
                               "host": socket.gethostname(), "pid": os.getpid()}
    ctx.record(summary)
    metrics.worker_task(name, reason)
    return summary


def _trim(ctx: Maintenance, progress: maintenance.Progress) -> MaintenanceResult:
    return maintenance.trim(ctx.store, max_bytes=ctx.settings.trim_max_bytes,
                            keep_trimmed=ctx.settings.trim_keep, **_leased(ctx, progress))


@app.task(name="tieredstore.expire", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def expire(self: Task, slot: int | None = None, chain: int = 0) -> dict[str, Any]:
    """Remove expired sessions everywhere and repair the Redis index (one bounded run)."""
    return run_task(self, "expire", context().settings.expire_interval, _expire, slot, chain)


@app.task(name="tieredstore.archive_idle", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def archive_idle(self: Task, slot: int | None = None, chain: int = 0) -> dict[str, Any]:
    """Archive sessions idle longer than ``TIEREDSTORE_ARCHIVE_AFTER`` (one bounded run)."""
    ctx = context()
    if ctx.store.archive is None or ctx.store.redis is None:
        return nothing_to_do(ctx, "archive_idle",
                             "no_archive" if ctx.store.archive is None else "no_redis")
    return run_task(self, "archive_idle", ctx.settings.archive_interval, _archive, slot, chain)


@app.task(name="tieredstore.trim", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def trim(self: Task, slot: int | None = None, chain: int = 0) -> dict[str, Any]:
    """Enforce the trim limits on hot and archived sessions (one bounded run)."""
    return run_task(self, "trim", context().settings.trim_interval, _trim, slot, chain)


def _retain(ctx: Maintenance, progress: maintenance.Progress) -> MaintenanceResult:
    return maintenance.retain(ctx.store, retention_days=ctx.settings.retention_days,
                              **_limits(ctx, progress))


@app.task(name="tieredstore.retain", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def retain(self: Task, slot: int | None = None, chain: int = 0) -> dict[str, Any]:
    """Delete archived sessions past ``TIEREDSTORE_RETENTION_DAYS`` (one bounded run)."""
    return run_task(self, "retain", context().settings.retain_interval, _retain, slot, chain)


def _partitions(ctx: Maintenance, progress: maintenance.Progress) -> MaintenanceResult:
    return maintenance.partitions(ctx.store, ahead=ctx.settings.partitions_ahead)


@app.task(name="tieredstore.partitions", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def partitions(self: Task, slot: int | None = None, chain: int = 0) -> dict[str, Any]:
    """Create the archive's partitions ``TIEREDSTORE_PARTITIONS_AHEAD`` months ahead; analyse."""
    return run_task(self, "partitions", context().settings.partitions_interval, _partitions,
                    slot, chain)


def _reconcile(ctx: Maintenance, progress: maintenance.Progress) -> MaintenanceResult:
    return maintenance.reconcile(ctx.store, **_limits(ctx, progress))


@app.task(name="tieredstore.reconcile", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def reconcile(self: Task, slot: int | None = None, chain: int = 0) -> dict[str, Any]:
    """After an outage: reconcile detached sessions and drain outboxes (one bounded run)."""
    return run_task(self, "reconcile", context().settings.reconcile_interval, _reconcile, slot,
                    chain)


def _checkpoints(ctx: Maintenance, progress: maintenance.Progress) -> MaintenanceResult:
    return maintain_checkpoints(ctx.store, archive_after=ctx.settings.archive_after,
                                window=ctx.checkpoints.window,
                                retention_days=ctx.settings.retention_days,
                                **_leased(ctx, progress))


@app.task(name="tieredstore.checkpoints", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def checkpoints(self: Task, slot: int | None = None, chain: int = 0) -> dict[str, Any]:
    """LangGraph checkpoints: archive idle threads and those over the hot window,
    expire, retain (one bounded run)."""
    ctx = context()
    if ctx.store.archive is None:
        return nothing_to_do(ctx, "checkpoints", "no_archive")
    return run_task(self, "checkpoints", ctx.checkpoints.interval, _checkpoints, slot, chain)
