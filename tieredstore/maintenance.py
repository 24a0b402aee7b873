"""Maintenance: expire, archive idle sessions, trim. Plain functions, bounded and idempotent.

Each function takes a :class:`~tieredstore.store.TieredStore` and keyword
limits — ``batch_size`` (sessions per batch), ``max_batches`` and
``time_budget`` (seconds) per call — does at most that much work, and returns
a :class:`MaintenanceResult` of counts whose ``remaining`` says whether work
is left for another call. Running one twice, or concurrently with itself or
with the application, loses and duplicates nothing: the archive absorbs
sessions by seq (re-absorbing changes nothing) and Redis is changed only by
compare-and-set scripts that check the session's ``(created, version)``.
The Celery tasks in ``worker/`` and ``tieredstore maintain`` call these.
With metrics or tracing on, every call is counted, timed and traced by
task and outcome (:mod:`tieredstore.instrumentation`).

* :func:`expire` — drops expired sessions from Redis (index entries and
  keys) and from the archive, and sweeps the Redis index for entries whose
  keys are gone and keys that lost the TTL their hash says they have.
* :func:`archive_idle` — copies sessions idle longer than ``archive_after``
  (window and spill list) into the archive, one transaction per batch, then
  evicts each from Redis only if its generation is unchanged, so a message
  appended meanwhile stays in Redis and is archived by a later run.
* :func:`reconcile` — after an outage of either server in
  ``write_through`` mode: reconciles sessions the archive took while Redis
  was unreachable and copies outboxes (writes Redis kept while the archive
  was unreachable) into the archive (:meth:`TieredStore.settle`).
* :func:`trim` — enforces ``max_messages`` / ``max_bytes`` by
  :func:`tieredstore.policy.plan_trim_bytes` on hot sessions (copying what
  it drops into the archive first when ``keep_trimmed``) and, when trimmed
  messages are not kept, on archived sessions too. It also archives and
  drains spill lists.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tieredstore.config import env_number
from tieredstore.errors import InvalidInput
from tieredstore.instrumentation import maintenance_task
from tieredstore.policy import plan_trim_bytes
from tieredstore.tiers.archive import ArchiveCopy, PreparedCopies
from tieredstore.tiers.archive.retention import HOLD_KEY
from tieredstore.tiers.redis import Captured

if TYPE_CHECKING:
    from tieredstore.store import TieredStore
    from tieredstore.tiers.redis import RedisStore

__all__ = [
    "MaintenanceResult",
    "MaintenanceSettings",
    "Progress",
    "archive_idle",
    "expire",
    "partitions",
    "reconcile",
    "retain",
    "trim",
]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 300.0
"""Seconds a maintenance call's lease on a bucket lasts unless renewed (after
each batch) or released; a crashed worker's buckets come free after it."""

Progress = Callable[[int, int], None]
"""Called after each batch with ``(sessions done so far, estimated total)``."""


@dataclass(frozen=True, slots=True)
class MaintenanceResult:
    """What one maintenance call did.

    ``changed``: sessions expired / archived / trimmed (in a dry run: that
    would be). ``skipped``: sessions left alone because they changed while
    being processed (a later run takes them). ``repaired``: Redis index
    entries or TTLs fixed. ``messages``: messages archived, trimmed or
    deleted by retention. ``partitions``: partitions dropped (``retain``) or
    created (``partitions``). ``remaining``: work is left that a further
    call would do.
    """

    task: str
    scanned: int = 0
    changed: int = 0
    skipped: int = 0
    repaired: int = 0
    messages: int = 0
    batches: int = 0
    remaining: bool = False
    dry_run: bool = False
    elapsed: float = 0.0
    partitions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if not raw:
        return None
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class MaintenanceSettings:
    """How the worker runs maintenance, from ``TIEREDSTORE_*`` variables (see the README)."""

    archive_after: float = 3600.0
    expire_interval: float = 300.0
    archive_interval: float = 60.0
    trim_interval: float = 3600.0
    batch_size: int = 500
    max_batches: int = 20
    time_budget: float = 60.0
    lock_ttl: float = 300.0
    max_chain: int = 100
    reconcile_interval: float = 60.0
    trim_max_bytes: int | None = None
    trim_keep: bool | None = None
    parallel: int = 1
    retention_days: float | None = None
    retain_interval: float = 3600.0
    partitions_interval: float = 86400.0
    partitions_ahead: int = 3

    def __post_init__(self) -> None:
        if self.lock_ttl <= self.time_budget:
            raise InvalidInput("TIEREDSTORE_LOCK_TTL must exceed TIEREDSTORE_TIME_BUDGET")
        if not 1 <= self.parallel <= 64:
            raise InvalidInput(f"TIEREDSTORE_PARALLEL must be 1 to 64, got {self.parallel!r}")
        if self.retention_days is not None and not self.retention_days > 0:
            raise InvalidInput(
                f"TIEREDSTORE_RETENTION_DAYS must be positive, got {self.retention_days!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MaintenanceSettings:
        env = os.environ if env is None else env
        d = cls()

        def seconds(name: str, default: float) -> float:
            return env_number(env, name, float, default)

        def count(name: str, default: int | None) -> int | None:
            return env_number(env, name, int, default)

        return cls(
            archive_after=seconds("TIEREDSTORE_ARCHIVE_AFTER", d.archive_after),
            expire_interval=seconds("TIEREDSTORE_EXPIRE_INTERVAL", d.expire_interval),
            archive_interval=seconds("TIEREDSTORE_ARCHIVE_INTERVAL", d.archive_interval),
            trim_interval=seconds("TIEREDSTORE_TRIM_INTERVAL", d.trim_interval),
            reconcile_interval=seconds("TIEREDSTORE_RECONCILE_INTERVAL", d.reconcile_interval),
            batch_size=count("TIEREDSTORE_BATCH_SIZE", d.batch_size) or d.batch_size,
            max_batches=count("TIEREDSTORE_MAX_BATCHES", d.max_batches) or d.max_batches,
            time_budget=seconds("TIEREDSTORE_TIME_BUDGET", d.time_budget),
            lock_ttl=seconds("TIEREDSTORE_LOCK_TTL", d.lock_ttl),
            max_chain=count("TIEREDSTORE_MAX_CHAIN", d.max_chain) or 0,
            trim_max_bytes=count("TIEREDSTORE_TRIM_MAX_BYTES", None),
            trim_keep=_env_bool(env, "TIEREDSTORE_TRIM_KEEP"),
            parallel=count("TIEREDSTORE_PARALLEL", d.parallel) or d.parallel,
            retention_days=seconds("TIEREDSTORE_RETENTION_DAYS", 0.0) or None,
            retain_interval=seconds("TIEREDSTORE_RETAIN_INTERVAL", d.retain_interval),
            partitions_interval=seconds("TIEREDSTORE_PARTITIONS_INTERVAL", d.partitions_interval),
            partitions_ahead=count("TIEREDSTORE_PARTITIONS_AHEAD", d.partitions_ahead) or 0,
        )


# -- bounds and bookkeeping ------------------------------------------------------


@dataclass
class _Run:
    """Counts of one call plus its limits: ``more()`` says whether another batch fits."""

    task: str
    batch_size: int
    max_batches: int | None
    time_budget: float | None
    dry_run: bool
    progress: Progress | None
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    scanned: int = 0
    changed: int = 0
    skipped: int = 0
    repaired: int = 0
    messages: int = 0
    batches: int = 0
    remaining: bool = False
    partitions: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not 1 <= self.batch_size <= 100_000:
            raise InvalidInput(f"batch_size must be between 1 and 100000, got {self.batch_size!r}")
        if self.max_batches is not None and self.max_batches < 1:
            raise InvalidInput(f"max_batches must be positive, got {self.max_batches!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise InvalidInput(f"time_budget must be positive, got {self.time_budget!r}")

    def more(self) -> bool:
        if self.max_batches is not None and self.batches >= self.max_batches:
            return False
        return self.time_budget is None or time.monotonic() - self.started < self.time_budget

    def batch_done(self, scanned: int) -> None:
        self.batches += 1
        self.scanned += scanned
        if self.progress is not None:
            self.progress(self.scanned, max(self.total, self.scanned))

    def result(self) -> MaintenanceResult:
        result = MaintenanceResult(
            task=self.task, scanned=self.scanned, changed=self.changed, skipped=self.skipped,
            repaired=self.repaired, messages=self.messages, batches=self.batches,
            remaining=self.remaining, dry_run=self.dry_run,
            elapsed=round(time.monotonic() - self.started, 6), partitions=self.partitions,
        )
        log.info("maintenance %s: %s", self.task, result.as_dict())
        return result


# -- buckets and leases -------------------------------------------------------------


class _Buckets:
    """The Redis buckets one maintenance call works through, one lease at a time.

    Each bucket is claimed (a lease per bucket and task, in the bucket's own
    slot) just before its work and released after it, so workers running the
    same task at once take disjoint buckets; a crashed worker's lease expires
    after ``lease_ttl``. The walk starts at a random bucket so that workers
    spread out. A dry run takes no leases.
    """

    def __init__(self, redis: RedisStore, task: str, lease_ttl: float, dry_run: bool) -> None:
        if not lease_ttl > 0:
            raise InvalidInput(f"lease_ttl must be positive, got {lease_ttl!r}")
        self.redis = redis
        self.task = task
        self.holder = uuid.uuid4().hex
        self.ttl_ms = max(int(lease_ttl * 1000), 1)
        self.dry_run = dry_run
        count = redis.bucket_count
        first = random.randrange(count)
        self.order = [(first + i) % count for i in range(count)]

    def each(self, work: Callable[[int], bool]) -> None:
        """Run ``work(bucket)`` on every bucket this call can lease, until it returns False."""
        for bucket in self.order:
            if self.dry_run:
                if not work(bucket):
                    return
                continue
            if not self.redis.claim_buckets([bucket], self.task, self.holder, self.ttl_ms):
                continue  # another worker has it
            try:
                if not work(bucket):
                    return
            finally:
                self.redis.release_buckets([bucket], self.task, self.holder)

    def renew(self, bucket: int) -> bool:
        """Keep the lease on ``bucket`` (``True`` in a dry run); ``False`` if lost."""
        return self.dry_run or self.redis.renew_bucket(bucket, self.task, self.holder,
                                                       self.ttl_ms)


class _Lap:
    """A task's walk over every bucket's index, resumable across calls.

    Each bucket records its place in the current lap (``T(b)cur:<task>``);
    a call goes on where the bucket stopped and skips buckets that already
    finished the lap, so calls repeated while ``remaining`` holds finish the
    lap whatever their budget. Once every bucket is through, the lap ends and
    the next call starts the next one.
    """

    def __init__(self, redis: RedisStore, task: str, dry_run: bool) -> None:
        self.redis = redis
        self.task = task
        self.dry_run = dry_run
        self.number, self.places = redis.lap_state(task)

    def start(self, bucket: int) -> int | None:
        """Where to go on in ``bucket`` (``None``: it finished this lap)."""
        return self.places.get(bucket, 0)

    def save(self, bucket: int, place: int | None) -> None:
        self.places[bucket] = place
        if not self.dry_run:
            self.redis.set_place(bucket, self.task, self.number, place)

    def close(self) -> bool:
        """End the lap if every bucket is through it (by any worker); whether it was."""
        number, places = self.redis.lap_state(self.task)
        done = number == self.number and all(
            places.get(b, 0) is None for b in range(self.redis.bucket_count))
        if done and not self.dry_run:
            self.redis.finish_lap(self.task, number)
        return done or number > self.number


def _now_ms(now: float | None) -> int | None:
    return None if now is None else int(now * 1000)


# -- expire --------------------------------------------------------------------------


@maintenance_task("expire")
def expire(
    store: TieredStore,
    *,
    batch_size: int = 1000,
    max_batches: int | None = 10,
    time_budget: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> MaintenanceResult:
    """Remove expired sessions from Redis (index and keys) and the archive; repair the index.

    Redis is worked bucket by bucket under a lease (see :class:`_Buckets`):
    expired sessions are buried, then the bucket's index is swept from a
    cursor kept in the bucket for entries whose keys are gone and keys that
    lost their TTL. ``remaining`` is true while an expired session is left
    or a sweep lap is unfinished, so calls repeated while it holds finish a
    lap over every index entry. Redis judges expiry by its own clock; ``now``
    (seconds) overrides the archive's clock. An archived copy whose session
    lives on in Redis is kept and takes the Redis expiry instead.
    """
    run = _Run("expire", batch_size, max_batches, time_budget, dry_run, progress)
    hot = store.redis
    if dry_run:
        return _expire_dry(store, hot, run)
    if hot is not None:
        buckets = _Buckets(hot, "expire", lease_ttl, dry_run)
        lap = _Lap(hot, "sweep", dry_run)
        sweep_budget = [batch_size * (max_batches or 10)]

        def expire_bucket(bucket: int) -> bool:
            while True:
                if not run.more() or not buckets.renew(bucket):
                    run.remaining = True
                    return False
                purged = hot.purge_batch(bucket, batch_size)
                if purged:
                    run.changed += purged
                    run.batch_done(purged)
                if purged < batch_size:
                    break
            return _sweep(hot, run, bucket, buckets, lap, sweep_budget)

        buckets.each(expire_bucket)
        if not lap.close():
            run.remaining = True
    if store.archive is not None and run.more():
        live = hot.live_expiry if hot is not None else None
        while run.more():
            seen, purged = store.archive.purge_expired_batch(
                batch_size, live=live, now_ms=_now_ms(now))
            run.changed += purged
            run.batch_done(seen)
            if seen < batch_size:
                break
        else:
            run.remaining = True
    elif store.archive is not None:
        run.remaining = True
    return run.result()


def _sweep(hot: RedisStore, run: _Run, bucket: int, buckets: _Buckets, lap: _Lap,
           budget: list[int]) -> bool:
    """Go on with ``bucket``'s part of the sweep lap, taking index entries
    from the call's shared ``budget``; ``False`` when it ran out first."""
    start = lap.start(bucket)
    if start is None:
        return True
    while budget[0] > 0 and buckets.renew(bucket):
        count = min(run.batch_size, budget[0])
        scanned, gone, fixed, dead = hot.sweep(bucket, start, count)
        budget[0] -= max(scanned, 1)
        run.repaired += gone + fixed
        run.changed += dead
        run.scanned += scanned
        start += scanned - gone - dead  # the buried entries left the index
        if scanned < count:
            lap.save(bucket, None)
            return True
    lap.save(bucket, start)
    return False


def _expire_dry(store: TieredStore, hot: RedisStore | None, run: _Run) -> MaintenanceResult:
    if hot is not None:
        run.changed += hot.count_expired()
        _, places = hot.lap_state("sweep")
        for bucket in range(hot.bucket_count):
            place = places.get(bucket, 0)
            scanned, gone, fixed, dead = hot.sweep(bucket, place or 0, run.batch_size, True)
            run.repaired += gone + fixed
            run.changed += dead
            run.scanned += scanned
    if store.archive is not None:
        run.changed += store.archive.stats()["expired_sessions"]
    run.batches = 1
    return run.result()


# -- archive_idle ----------------------------------------------------------------------


@maintenance_task("archive_idle")
def archive_idle(
    store: TieredStore,
    *,
    archive_after: float,
    batch_size: int = 500,
    max_batches: int | None = 20,
    time_budget: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> MaintenanceResult:
    """Move sessions idle for ``archive_after`` seconds from Redis to the archive.

    Bucket by bucket, under a lease (so concurrent workers take disjoint
    buckets), per batch: one atomic read of the sessions (window and spill
    list), one archive transaction (:meth:`ArchiveStore.absorb_many`), then
    one compare-and-delete script that removes each from Redis only if its
    ``(created, version)`` is unchanged; ``skipped`` counts those that
    changed (they stay in Redis, whole, and a later run archives them). Idle
    time is measured by Redis's clock unless ``now`` (seconds) is given.
    """
    if store.redis is None or store.archive is None:
        raise InvalidInput("archive_idle needs a store with both a Redis tier and an archive")
    if not archive_after >= 0:
        raise InvalidInput(f"archive_after must be non-negative, got {archive_after!r}")
    run = _Run("archive_idle", batch_size, max_batches, time_budget, dry_run, progress)
    hot = store.redis
    now_ms = _now_ms(now)
    cutoff = (now_ms if now_ms is not None else hot.now_ms()) - int(archive_after * 1000)
    if progress is not None:
        run.total = hot.count_idle(cutoff)
    buckets = _Buckets(hot, "archive_idle", lease_ttl, dry_run)
    archive = store.archive

    def read(sids: list[str]) -> tuple[list[Captured], PreparedCopies]:
        captured = [cap for cap in hot.capture_many(sids) if cap is not None]
        return captured, archive.prepare([cap.copy() for cap in captured])

    # Threads do the rest while a batch is written to the archive: one reads and
    # prepares the next batch, the other evicts the batch written before.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tieredstore-archive") as pool:
        def archive_bucket(bucket: int) -> bool:
            # The bucket's evictions finish before its lease is released, so a
            # worker taking the bucket next never archives these sessions again.
            evicting: list[tuple[list[ArchiveCopy], Future[list[bool]]]] = []
            try:
                return archive_batches(bucket, evicting)
            finally:
                for copies, evicted in evicting:
                    for copy, gone in zip(copies, evicted.result(), strict=True):
                        if gone:
                            run.changed += 1
                            run.messages += len(copy.seqs)
                        else:
                            run.skipped += 1

        def archive_batches(bucket: int,
                            evicting: list[tuple[list[ArchiveCopy], Future[list[bool]]]]) -> bool:
            keys = hot.idle_keys(bucket, cutoff, batch_size, None)
            reading: Future[tuple[list[Captured], PreparedCopies]] | None = None
            while keys:
                if not run.more() or not buckets.renew(bucket):
                    run.remaining = True
                    return False
                following = (hot.idle_keys(bucket, cutoff, batch_size, keys[-1])
                             if len(keys) == batch_size else [])
                if dry_run:
                    run.changed += len(keys)
                else:
                    captured, prepared = (reading.result() if reading is not None
                                          else read([sid for _, sid in keys]))
                    reading = (pool.submit(read, [sid for _, sid in following])
                               if following else None)
                    stored = archive.absorb_many(prepared)
                    kept = [(cap, copy) for cap, copy, ok
                            in zip(captured, prepared.copies, stored, strict=True) if ok]
                    run.skipped += len(captured) - len(kept)
                    evicting.append(([copy for _, copy in kept],
                                     pool.submit(hot.evict_many, bucket, [c for c, _ in kept])))
                run.batch_done(len(keys))
                keys = following
            return True

        buckets.each(archive_bucket)
    return run.result()


# -- trim ------------------------------------------------------------------------------


@maintenance_task("trim")
def trim(
    store: TieredStore,
    *,
    max_messages: int | None = None,
    max_bytes: int | None = None,
    keep_trimmed: bool | None = None,
    batch_size: int = 500,
    max_batches: int | None = 20,
    time_budget: float | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> MaintenanceResult:
    """Enforce ``max_messages`` (default: the store's) and ``max_bytes`` on every session.

    Hot sessions are walked bucket by bucket (under a lease) from a cursor
    kept in each bucket; each one over a limit, or holding spilled entries,
    is trimmed by the store's policy (:func:`~tieredstore.policy.plan_trim_bytes`,
    so a tool result never outlives its call) with a compare-and-set on its
    generation. With ``keep_trimmed`` (default: whenever there is an archive)
    what is dropped, and any spill list, is first absorbed into the archive,
    one transaction per batch; without it the archive's sessions are trimmed
    as well.
    """
    if max_messages is None:
        max_messages = store.max_messages
    if max_messages is not None and max_messages < 1:
        raise InvalidInput(f"max_messages must be positive, got {max_messages!r}")
    if max_bytes is not None and max_bytes < 1:
        raise InvalidInput(f"max_bytes must be positive, got {max_bytes!r}")
    keep = store.archive is not None if keep_trimmed is None else keep_trimmed
    if keep and store.archive is None:
        raise InvalidInput("keep_trimmed needs an archive")
    run = _Run("trim", batch_size, max_batches, time_budget, dry_run, progress)
    if store.redis is not None:
        hot = store.redis
        if run.progress is not None:
            run.total = hot.count_indexed()
        buckets = _Buckets(hot, "trim", lease_ttl, dry_run)
        lap = _Lap(hot, "trim", dry_run)
        buckets.each(lambda bucket: _trim_bucket(
            store, hot, run, buckets, lap, bucket, max_messages, max_bytes, keep))
        if not lap.close():
            run.remaining = True
    if store.archive is not None and not keep and (max_messages or max_bytes):
        _trim_archive(store, run, max_messages, max_bytes)
    return run.result()


def _trim_bucket(store: TieredStore, hot: RedisStore, run: _Run, buckets: _Buckets,
                 lap: _Lap, bucket: int, max_messages: int | None, max_bytes: int | None,
                 keep: bool) -> bool:
    start = lap.start(bucket)
    if start is None:
        return True
    while run.more() and buckets.renew(bucket):
        sids = hot.ranked(bucket, start, run.batch_size)
        if sids:
            _trim_batch(hot, run, store.archive, sids, max_messages, max_bytes, keep)
        run.batch_done(len(sids))
        if len(sids) < run.batch_size:
            lap.save(bucket, None)
            return True
        start += len(sids)
    run.remaining = True
    lap.save(bucket, start)
    return False


def _trim_batch(hot: RedisStore, run: _Run, archive: Any, sids: list[str],
                max_messages: int | None, max_bytes: int | None, keep: bool) -> None:
    if max_bytes is None:
        # Only sessions over the count (or with a spill list) need a full read.
        sizes = hot.window_sizes(sids)
        sids = [sid for sid, (n, spilled) in zip(sids, sizes, strict=True)
                if spilled or (max_messages is not None and n > max_messages)]
    plans: list[tuple[Captured, int, int, int]] = []
    copies: list[ArchiveCopy] = []
    for cap in hot.capture_many(sids):
        if cap is None:
            continue
        kinds = "".join(e[1] for e in cap.window)
        lead, drop = plan_trim_bytes(kinds, [len(e[3]) for e in cap.window], max_messages,
                                     max_bytes)
        if not drop and not cap.spill:
            continue
        if drop:
            run.changed += 1
            run.messages += drop
        if run.dry_run:
            continue
        dropped = frozenset(e[0] for e in cap.window[lead : lead + drop])
        if archive is not None and (cap.spill or (keep and drop)):
            copies.append(cap.copy(frozenset() if keep else dropped))
        drain = cap.spill[-1][0] if cap.spill and archive is not None else -1
        if drop or drain >= 0:
            plans.append((cap, lead, drop, drain))
    if copies:
        archive.absorb_many(copies)
    done = hot.trim_many(plans)
    for (_, _, drop, _), ok in zip(plans, done, strict=True):
        if not ok:
            run.skipped += 1
            if drop:
                run.changed -= 1
                run.messages -= drop


def _trim_archive(store: TieredStore, run: _Run, max_messages: int | None,
                  max_bytes: int | None) -> None:
    archive = store.archive
    assert archive is not None
    after: str | None = None
    while run.more():
        ids, trimmed, dropped = archive.trim_batch(
            max_messages=max_messages, max_bytes=max_bytes, batch_size=run.batch_size,
            after=after, dry_run=run.dry_run)
        run.changed += trimmed
        run.messages += dropped
        run.batch_done(len(ids))
        if len(ids) < run.batch_size:
            return
        after = ids[-1]
    run.remaining = True


# -- reconcile ---------------------------------------------------------------------------


@maintenance_task("reconcile")
def reconcile(
    store: TieredStore,
    *,
    batch_size: int = 500,
    max_batches: int | None = 20,
    time_budget: float | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> MaintenanceResult:
    """Settle what an outage left behind: detached sessions and outboxes.

    ``changed`` counts sessions reconciled, ``messages`` outbox records
    copied into the archive; ``remaining`` says more is waiting. Needs both
    a Redis tier and an archive (with either missing there is nothing to do).
    A dry run counts up to ``batch_size`` detached sessions (``changed``) and
    sessions with outboxes (``scanned``).
    """
    run = _Run("reconcile", batch_size, max_batches, time_budget, dry_run, progress)
    if store.redis is None or store.archive is None:
        return run.result()
    if dry_run:
        run.changed = len(store.archive.detached_sessions(batch_size))
        run.batch_done(len(store.redis.outbox_sessions(batch_size)))
        return run.result()
    while run.more():
        reconciled, drained, more = store.settle(limit=batch_size)
        run.changed += reconciled
        run.messages += drained
        run.batch_done(reconciled + drained)
        if not more:
            break
    else:
        run.remaining = True
    return run.result()


# -- retention and partitions --------------------------------------------------------------


@maintenance_task("retain")
def retain(
    store: TieredStore,
    *,
    retention_days: float | None,
    batch_size: int = 500,
    max_batches: int | None = 20,
    time_budget: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
    hold_key: str = HOLD_KEY,
) -> MaintenanceResult:
    """Delete archived sessions whose last activity is older than ``retention_days``.

    Whole months go first (PostgreSQL: a partition whose sessions are all
    past retention is dropped; ``partitions`` counts them), then the rest in
    batches of ``batch_size`` sessions, oldest activity first. Sessions on
    legal hold (``metadata[hold_key] is True``) and sessions the Redis tier
    holds alive are never deleted (``skipped`` counts those met). ``changed``
    counts sessions deleted, ``messages`` their messages (in a dry run: that
    would be). ``retention_days=None`` keeps everything.
    """
    run = _Run("retain", batch_size, max_batches, time_budget, dry_run, progress)
    archive = store.archive
    if archive is None or retention_days is None:
        return run.result()
    if isinstance(retention_days, bool) or not retention_days > 0:
        raise InvalidInput(f"retention_days must be positive, got {retention_days!r}")
    now_ms = int((archive.clock() if now is None else now) * 1000)
    cutoff = now_ms - int(retention_days * 86_400_000)
    hot = store.redis
    live = (lambda ids: list(hot.live_expiry(ids))) if hot is not None else None
    dropped: list[tuple[int, int]] = []
    for partition in archive.partitions():
        if not run.more():
            run.remaining = True
            return run.result()
        month = archive.drop_month(partition, cutoff, live=live, hold_key=hold_key,
                                   dry_run=dry_run)
        if month is not None:
            dropped.append((partition.low, partition.high))
            run.partitions += 1
            run.changed += month.sessions
            run.messages += month.messages
            run.batch_done(month.sessions)
    after: tuple[int, str] | None = None
    while run.more():
        batch = archive.retain_batch(cutoff, batch_size=batch_size, after=after, live=live,
                                     hold_key=hold_key, dry_run=dry_run, skip=dropped)
        run.changed += batch.sessions
        run.messages += batch.messages
        run.skipped += batch.held + batch.live
        run.batch_done(batch.seen)
        if batch.seen < batch_size:
            break
        after = batch.after
    else:
        run.remaining = True
    return run.result()


@maintenance_task("partitions")
def partitions(store: TieredStore, *, ahead: int = 3, analyze: bool = True) -> MaintenanceResult:
    """Create the archive's partitions for this month and ``ahead`` more; ``ANALYZE`` it.

    ``partitions`` counts the partitions created. Analysing keeps the
    planner's statistics of the partitioned table (which autovacuum never
    analyses) current. A no-op without a PostgreSQL archive.
    """
    run = _Run("partitions", 1, None, None, False, None)
    archive = store.archive
    if archive is not None:
        run.partitions = len(archive.ensure_partitions(ahead))
        if analyze:
            archive.analyze()
        run.batch_done(run.partitions)
    return run.result()
