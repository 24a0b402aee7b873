"""The Redis key layout: sessions in buckets, each bucket in one hash slot.

``P`` = ``{prefix}:{namespace}``; ``T(b)`` = ``P:{<namespace>.<b>}:``, the
bucket's hash tag. A session belongs to bucket ``crc32(id) % B`` (B fixed
per namespace: :attr:`RedisKeys.buckets`, recorded at ``P:buckets``)::

    T(b)m:<sid>      LIST   entries ``<kind><seq>:<unix-ms>:<json>`` (see codec)
    T(b)h:<sid>      HASH   version, created, updated, expires, ttl, user,
                            lead (leading system entries), n (next seq),
                            b (base seq), f (fenced), m:<key> -> JSON
    T(b)x:<sid>      LIST   spilled entries (what trims dropped, ``spill=True``)
    T(b)d:<sid>      STRING the tombstone of the session's last delete (unix ms)
    T(b)o:<sid>      HASH   outbox (write_through): version -> record
    T(b)l:<sid>      STRING the session lock's holder token (PX expiry)
    T(b)idx          ZSET   sid -> updated ms (last activity; for ``list``)
    T(b)exp          ZSET   sid -> expires ms (sessions with a TTL)
    T(b)own          HASH   sid -> user id
    T(b)obx          ZSET   sid -> ms: sessions with outbox records
    T(b)u:<user>     ZSET   sid -> updated ms, the user's sessions in the bucket
    T(b)lease:<task> STRING the maintenance worker holding the bucket for a task
    T(b)cur:<task>   STRING a maintenance task's place in the bucket: ``<lap> <rank>``,
                            or ``<lap> done`` once the bucket finished that lap
    T(b)inval        sharded pub/sub channel of the bucket (on a cluster)
    P:inval          pub/sub channel of invalidations (standalone Redis)
    P:buckets        STRING B
    P:lap:<task>     STRING the lap a bucket-walking maintenance task is on

Every key of a session and of its bucket's indexes shares the bucket's
hash tag, so each script runs in one slot, on standalone Redis and on a
cluster alike; scripts get every key they touch in KEYS.
"""

from __future__ import annotations

import zlib

from tieredstore.config import DEFAULT_BUCKETS, Limits
from tieredstore.core import check_session_id
from tieredstore.errors import InvalidInput

__all__ = ["DEFAULT_BUCKETS", "MAX_BUCKETS", "RedisKeys", "bucket_of"]

MAX_BUCKETS = 1024


def bucket_of(sid: str, buckets: int) -> int:
    """The bucket of a session id: a stable hash, the same in every process."""
    return zlib.crc32(sid.encode("utf-8", "surrogatepass")) % buckets


def _check_part(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    check_session_id(value, Limits(), what=what)
    if ":" in value:
        # The first two ':'-separated fields of a key name its scope.
        raise InvalidInput(f"{what} must not contain ':', got {value!r}")
    return value


def check_buckets(buckets: object) -> int:
    if isinstance(buckets, bool) or not isinstance(buckets, int):
        raise InvalidInput(f"buckets must be an integer, got {buckets!r}")
    if not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidInput(f"buckets must be between 1 and {MAX_BUCKETS}, got {buckets!r}")
    return buckets


class RedisKeys:
    """Key names of one ``prefix``/``namespace`` with ``buckets`` buckets."""

    __slots__ = ("buckets", "channel", "layout", "namespace", "prefix", "root", "tags")

    def __init__(self, prefix: str, namespace: str, buckets: int = DEFAULT_BUCKETS) -> None:
        self.prefix = _check_part(prefix, "prefix")
        self.namespace = _check_part(namespace, "namespace")
        self.buckets = check_buckets(buckets)
        self.root = f"{prefix}:{namespace}:"
        self.channel = self.root + "inval"
        self.layout = self.root + "buckets"
        self.tags = tuple(f"{self.root}{{{namespace}.{b}}}:" for b in range(buckets))

    def bucket(self, sid: str) -> int:
        return bucket_of(sid, self.buckets)

    def tag(self, sid: str) -> str:
        return self.tags[bucket_of(sid, self.buckets)]

    # -- a session's own keys ---------------------------------------------------

    def messages(self, sid: str) -> str:
        return f"{self.tag(sid)}m:{sid}"

    def meta(self, sid: str) -> str:
        return f"{self.tag(sid)}h:{sid}"

    def spill(self, sid: str) -> str:
        return f"{self.tag(sid)}x:{sid}"

    def tombstone(self, sid: str) -> str:
        return f"{self.tag(sid)}d:{sid}"

    def outbox(self, sid: str) -> str:
        return f"{self.tag(sid)}o:{sid}"

    def lock(self, sid: str) -> str:
        """The session lock (:mod:`tieredstore.locking`); not one of :meth:`session`."""
        return f"{self.tag(sid)}l:{sid}"

    def session(self, sid: str) -> list[str]:
        """The session's data keys: list, hash, spill list."""
        t = self.tag(sid)
        return [f"{t}m:{sid}", f"{t}h:{sid}", f"{t}x:{sid}"]

    def writes(self, sid: str) -> list[str]:
        """KEYS of the write scripts (before the user indexes): the session's
        keys, its tombstone and outbox, then its bucket's indexes."""
        t = self.tag(sid)
        return [
            f"{t}m:{sid}",
            f"{t}h:{sid}",
            f"{t}x:{sid}",
            f"{t}d:{sid}",
            f"{t}o:{sid}",
            t + "idx",
            t + "exp",
            t + "own",
            t + "obx",
        ]

    def user_of(self, sid: str, user_id: str) -> str:
        """The index of ``user_id``'s sessions in ``sid``'s bucket."""
        return f"{self.tag(sid)}u:{user_id}"

    # -- a bucket's keys --------------------------------------------------------

    def idx(self, bucket: int) -> str:
        return self.tags[bucket] + "idx"

    def exp(self, bucket: int) -> str:
        return self.tags[bucket] + "exp"

    def own(self, bucket: int) -> str:
        return self.tags[bucket] + "own"

    def obx(self, bucket: int) -> str:
        return self.tags[bucket] + "obx"

    def user(self, bucket: int, user_id: str) -> str:
        return f"{self.tags[bucket]}u:{user_id}"

    def lease(self, bucket: int, task: str) -> str:
        return f"{self.tags[bucket]}lease:{task}"

    def cursor(self, bucket: int, task: str) -> str:
        return f"{self.tags[bucket]}cur:{task}"

    def lap(self, task: str) -> str:
        return f"{self.root}lap:{task}"

    def bucket_channel(self, bucket: int) -> str:
        return self.tags[bucket] + "inval"

    def bucket_channels(self) -> list[str]:
        return [tag + "inval" for tag in self.tags]
