"""The Redis key layout of LangGraph threads: in the namespace's buckets, cluster-safe.

A thread lives in the bucket of its id (``crc32(thread_id) % B``, the same
buckets as the namespace's sessions, see :mod:`tieredstore.tiers.redis.keys`),
and every key of a thread and of its bucket's indexes carries the bucket's
hash tag ``T(b)`` = ``{prefix}:{namespace}:{<namespace>.<b>}:``, so each
checkpoint script runs in one slot::

    T(b)gt:<tid>   HASH   head: created (generation, unix ms), ver (changes),
                          updated, ttl, expires
    T(b)gc:<tid>   ZSET   checkpoint members ``<ns>\\0<checkpoint id>`` (score 0:
                          lexicographic, so a namespace's ids are a range, newest last)
    T(b)gv:<tid>   HASH   ``c\\0<member>`` -> checkpoint record,
                          ``w\\0<member>\\0<task id>\\0<idx>`` -> write record,
                          ``n\\0<member>`` -> the checkpoint's change count
    T(b)gw:<tid>   ZSET   write members ``<member>\\0<task id>\\0<idx>``
    T(b)gd:<tid>   STRING the tombstone of the thread's last delete (unix ms)
    T(b)gidx       ZSET   thread id -> last write (unix ms): what archival walks
    T(b)gfull      ZSET   threads with a namespace over the hot window

Thread ids follow the session-id rules (no whitespace, braces, ...), so a
thread's keys never collide with a session's (``m:``, ``h:``, ``l:``, ...)
nor with another thread's. Namespaces, checkpoint and task ids hold no NUL,
the separator inside members.
"""

from __future__ import annotations

from tieredstore.tiers.redis.keys import RedisKeys

__all__ = ["CheckpointKeys"]


class CheckpointKeys:
    """Key names of LangGraph threads under one :class:`RedisKeys` scope."""

    __slots__ = ("scope",)

    def __init__(self, scope: RedisKeys) -> None:
        self.scope = scope

    @property
    def buckets(self) -> int:
        return self.scope.buckets

    def bucket(self, tid: str) -> int:
        return self.scope.bucket(tid)

    def thread(self, tid: str) -> list[str]:
        """KEYS of the checkpoint scripts: the thread's keys, then its bucket's indexes."""
        t = self.scope.tag(tid)
        return [
            f"{t}gt:{tid}",
            f"{t}gc:{tid}",
            f"{t}gv:{tid}",
            f"{t}gw:{tid}",
            f"{t}gd:{tid}",
            t + "gidx",
            t + "gfull",
        ]

    def head(self, tid: str) -> str:
        return f"{self.scope.tag(tid)}gt:{tid}"

    def index(self, bucket: int) -> str:
        return self.scope.tags[bucket] + "gidx"

    def full(self, bucket: int) -> str:
        return self.scope.tags[bucket] + "gfull"
