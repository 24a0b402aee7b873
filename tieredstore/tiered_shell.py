"""What ``TieredStore`` and ``AsyncTieredStore`` share besides the plans.

Construction from URLs, clients or the environment (the embedded default
when neither Redis nor an archive is given), the tiers' options, statistics
and the choice of lock; every tier decision is :class:`TieredCore`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

from tieredstore.base import StoreCore
from tieredstore.coherence import SeenGenerations
from tieredstore.config import DEFAULT_BUCKETS, env_number
from tieredstore.core import TTLLike
from tieredstore.locking import LocalLocks
from tieredstore.tiering import Durability, TieredCore
from tieredstore.tiers.memory import MemoryStore
from tieredstore.tiers.transfer import DEFAULT_TOMBSTONE_TTL

__all__ = [
    "TieredShell",
    "default_data_dir",
    "embedded_archive_url",
    "settings_from_env",
    "tier_options",
]


def default_data_dir() -> Path:
    """Where the embedded SQLite archive lives (``TIEREDSTORE_DATA_DIR`` overrides)."""
    configured = os.environ.get("TIEREDSTORE_DATA_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tieredstore"


def embedded_archive_url() -> str:
    """The embedded default archive's URL (SQLite in :func:`default_data_dir`), migrated."""
    from tieredstore.migration import migrate

    data_dir = default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{data_dir / 'archive.db'}"
    migrate(url)
    return url


def settings_from_env(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``from_url`` keyword arguments from ``TIEREDSTORE_*`` variables (README table)."""
    env = os.environ
    settings: dict[str, Any] = {
        "redis_url": env.get("TIEREDSTORE_REDIS_URL") or None,
        "database_url": env.get("TIEREDSTORE_DATABASE_URL") or None,
        "namespace": env.get("TIEREDSTORE_NAMESPACE", "default"),
        "prefix": env.get("TIEREDSTORE_PREFIX", "ts"),
        "durability": env.get("TIEREDSTORE_DURABILITY", "archive"),
        "migrate": env.get("TIEREDSTORE_MIGRATE", "0").lower() in ("1", "true", "yes"),
    }
    memory = env_number(env, "TIEREDSTORE_MEMORY_MAX_BYTES", int, None)
    if memory is not None:
        settings["memory_max_bytes"] = memory or None
    ttl = env_number(env, "TIEREDSTORE_DEFAULT_TTL", float, None)
    if ttl is not None:
        settings["default_ttl"] = timedelta(seconds=ttl)
    for name, key, kind in (
        ("TIEREDSTORE_MAX_MESSAGES", "max_messages", int),
        ("TIEREDSTORE_STALE_AFTER", "stale_after", float),
        ("TIEREDSTORE_BUCKETS", "buckets", int),
    ):
        value = env_number(env, name, kind, None)
        if value is not None:
            settings[key] = value
    settings.update(overrides)
    if not settings["redis_url"] and not settings["database_url"]:
        settings["database_url"] = f"sqlite:///{default_data_dir() / 'archive.db'}"
        settings["migrate"] = True
        default_data_dir().mkdir(parents=True, exist_ok=True)
    return settings


def tier_options(
    *,
    namespace: str,
    prefix: str,
    durability: Durability,
    max_messages: int | None,
    has_redis: bool,
    has_archive: bool,
    tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    buckets: int = DEFAULT_BUCKETS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options of the Redis and the archive tier of one tiered store.

    Redis spills what its trims drop when the worker archives (``archive``
    durability); the archive trims only when it is the primary.
    """
    redis_options = {
        "namespace": namespace,
        "prefix": prefix,
        "max_messages": max_messages,
        "spill": durability == "archive" and has_archive,
        "tombstone_ttl": tombstone_ttl,
        "buckets": buckets,
    }
    archive_options = {
        "namespace": namespace,
        "tombstone_ttl": tombstone_ttl,
        "max_messages": None if has_redis else max_messages,
    }
    return redis_options, archive_options


class TieredShell(StoreCore):
    """What ``TieredStore`` and ``AsyncTieredStore`` share besides the plans."""

    tier = "tiered"
    memory: MemoryStore | None
    redis: Any
    archive: Any
    listener: Any
    durability: Durability
    stale_after: float
    _core: TieredCore
    _redis_class: ClassVar[str] = "RedisStore"
    _archive_class: ClassVar[str] = "ArchiveStore"

    # -- construction (one copy for the sync and the async store) --------------

    @classmethod
    def _tier_classes(cls) -> tuple[Any, Any]:
        from tieredstore.tiers import archive, redis

        return getattr(redis, cls._redis_class), getattr(archive, cls._archive_class)

    @classmethod
    def from_url(
        cls,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        memory_max_bytes: int | None = 64 * 2**20,
        default_ttl: TTLLike | None = None,
        max_messages: int | None = None,
        durability: Durability = "archive",
        migrate: bool = False,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        buckets: int = DEFAULT_BUCKETS,
        **options: Any,
    ) -> Self:
        """Build the tiers from URLs; a ``None`` URL leaves that tier out.

        ``memory_max_bytes=None`` disables the memory tier. ``migrate=True``
        upgrades the archive schema first, blocking (the embedded SQLite
        default always does). The async store accepts sync or async driver URLs.
        """
        redis_cls, archive_cls = cls._tier_classes()
        redis_options, archive_options = tier_options(
            namespace=namespace,
            prefix=prefix,
            durability=durability,
            max_messages=max_messages,
            has_redis=bool(redis_url),
            has_archive=bool(database_url),
            tombstone_ttl=tombstone_ttl,
            buckets=buckets,
        )
        redis_store = archive_store = None
        if redis_url:
            redis_store = redis_cls.from_url(redis_url, default_ttl=default_ttl, **redis_options)
        if database_url:
            if migrate:
                from tieredstore.migration import migrate as run_migrations

                run_migrations(database_url)
            archive_store = archive_cls.from_url(
                database_url, default_ttl=default_ttl, **archive_options
            )
        build: Any = cls
        return build(  # type: ignore[no-any-return]
            memory=MemoryStore(max_bytes=memory_max_bytes) if memory_max_bytes else None,
            redis=redis_store,
            archive=archive_store,
            durability=durability,
            default_ttl=default_ttl,
            max_messages=max_messages,
            **options,
        )

    @classmethod
    def from_clients(
        cls,
        *,
        redis: Any | None = None,
        engine: Any | None = None,
        namespace: str = "default",
        prefix: str = "ts",
        memory_max_bytes: int | None = 64 * 2**20,
        durability: Durability = "archive",
        max_messages: int | None = None,
        clock: Any | None = None,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        buckets: int = DEFAULT_BUCKETS,
        **options: Any,
    ) -> Self:
        """Build the tiers over a Redis client and a SQLAlchemy engine you already have.

        Sync store: ``redis.Redis`` and ``Engine``; async store:
        ``redis.asyncio.Redis`` and ``AsyncEngine``. The caller keeps ownership
        of both. ``clock`` drives the memory and archive tiers; Redis keeps its
        own time.
        """
        redis_cls, archive_cls = cls._tier_classes()
        redis_options, archive_options = tier_options(
            namespace=namespace,
            prefix=prefix,
            durability=durability,
            max_messages=max_messages,
            has_redis=redis is not None,
            has_archive=engine is not None,
            tombstone_ttl=tombstone_ttl,
            buckets=buckets,
        )
        redis_store = redis_cls(redis, **redis_options) if redis is not None else None
        archive_store = (
            archive_cls(engine, clock=clock, **archive_options) if engine is not None else None
        )
        build: Any = cls
        return build(  # type: ignore[no-any-return]
            memory=MemoryStore(max_bytes=memory_max_bytes, clock=clock)
            if memory_max_bytes
            else None,
            redis=redis_store,
            archive=archive_store,
            durability=durability,
            max_messages=max_messages,
            clock=clock,
            **options,
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Build from ``TIEREDSTORE_*`` environment variables (see the README table).

        With neither ``TIEREDSTORE_REDIS_URL`` nor ``TIEREDSTORE_DATABASE_URL``
        set, this is the embedded default: memory + SQLite in the data dir.
        """
        return cls.from_url(**settings_from_env(overrides))

    def _init_core(
        self,
        memory: MemoryStore | None,
        redis: Any,
        archive: Any,
        durability: Durability,
        stale_after: float,
        *,
        options: Mapping[str, Any],
        listener_class: Any,
        listen: bool,
    ) -> None:
        """Set up the tiers (the embedded default when neither Redis nor an
        archive is given), the tiered core and, with memory and Redis, the
        invalidation listener (``listener_class``: thread or asyncio task)."""
        if redis is None and archive is None:
            archive_options = {k: v for k, v in options.items() if k != "max_messages"}
            archive = self._tier_classes()[1].from_url(embedded_archive_url(), **archive_options)
            memory = memory or MemoryStore()
        self.redis = redis
        self.archive = archive
        self._core = TieredCore(
            memory=memory,
            has_redis=redis is not None,
            has_archive=archive is not None,
            durability=durability,
            stale_after=stale_after,
            max_messages=self.max_messages,
            sliding_ttl=self.sliding_ttl,
            default_ttl_ms=self.default_ttl_ms,
            limits=self.limits,
            clock=self.clock,
        )
        self.memory = memory
        self.durability = durability
        self.stale_after = stale_after
        self._targets = {"redis": redis, "archive": archive}
        self.listener = None
        if memory is not None and redis is not None and listen:
            self.listener = listener_class(
                redis.client,
                redis.invalidation_channels,
                sharded=redis.cluster,
                on_invalidate=self._core.on_invalidate,
                on_resubscribe=self._core.on_resubscribe,
            )
            self._core.listener = self.listener

    @property
    def _seen(self) -> SeenGenerations:
        return self._core.seen

    @property
    def invalidations_sent(self) -> int:
        return self._core.invalidations_sent

    def stats(self) -> dict[str, Any]:
        """Per-tier hits, misses, promotions and errors, circuit breakers, coherence counters."""
        out = self._core.snapshot_stats(
            {
                "memory": self.memory is not None,
                "redis": self._core.has_redis,
                "archive": self._core.has_archive,
            }
        )
        for name in ("redis", "archive"):
            breaker = getattr(self._targets[name], "breaker", None)
            if breaker is not None:  # no I/O: readable while the tier is down
                out[name]["breaker"] = breaker.stats()
        return out

    def _lock_backend(self) -> Any:
        redis = self._targets["redis"]
        return redis if redis is not None else LocalLocks.scope(self._lock_scope())

    def _lock_scope(self) -> str:
        archive = self._targets["archive"]
        return archive._lock_scope() if archive is not None else super()._lock_scope()
