"""The Redis tier: sessions in buckets, one atomic Lua script per operation.

* :mod:`.keys` — the key layout (every session in one of B buckets, each
  bucket's keys in one hash slot); read its docstring first.
* ``scripts/*.lua`` — one script per file, KEYS and ARGV in its header,
  shared helpers in ``scripts/includes``; :mod:`.scripts` loads them.
* :mod:`.records` — what plans send (:class:`Call`, :class:`Calls`,
  :class:`Commands`) and the records replies are parsed into.
* :mod:`.plans`, :mod:`.upkeep` — the I/O-free plans of every operation and
  of the maintenance work.
* :mod:`.store`, :mod:`.aio_store` — the sync and asyncio shells that drive
  the plans (:class:`RedisStore`, :class:`AsyncRedisStore`);
  :mod:`.shell` holds what they share, :mod:`.errors` the translation of
  redis-py's exceptions.

Every write publishes ``"<created_ms> <version> <sid>"`` in its own script
(see :mod:`tieredstore.coherence`): with PUBLISH on the namespace's channel
on standalone Redis, with SPUBLISH on the bucket's channel on a cluster.
Times come from the server's clock (``TIME``), so app servers with skewed
clocks agree. Use a ``noeviction`` or ``volatile-*`` ``maxmemory-policy``:
evicting per-session keys behind the index's back leaves index entries
that ``list`` cannot tell from live sessions.
"""

from tieredstore.tiers.redis.aio_store import AsyncRedisStore
from tieredstore.tiers.redis.keys import DEFAULT_BUCKETS, RedisKeys, bucket_of
from tieredstore.tiers.redis.plans import RedisOps
from tieredstore.tiers.redis.records import (
    MAX_TTL_MS,
    Call,
    Calls,
    Captured,
    Commands,
    Fenced,
    OutboxRecord,
    Spilled,
    outbox_body,
)
from tieredstore.tiers.redis.scripts import SCRIPTS
from tieredstore.tiers.redis.shell import RedisShared
from tieredstore.tiers.redis.store import RedisStore

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_TTL_MS",
    "SCRIPTS",
    "AsyncRedisStore",
    "Call",
    "Calls",
    "Captured",
    "Commands",
    "Fenced",
    "OutboxRecord",
    "RedisKeys",
    "RedisOps",
    "RedisShared",
    "RedisStore",
    "Spilled",
    "bucket_of",
    "outbox_body",
]
