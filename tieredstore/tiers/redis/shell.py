"""What the sync and async Redis shells share: construction, layout, driving rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tieredstore.base import StoreCore
from tieredstore.breaker import CircuitBreaker, resolve_breaker
from tieredstore.errors import ConfigurationError, InvalidInput
from tieredstore.tiers.redis.errors import driver_fault
from tieredstore.tiers.redis.keys import DEFAULT_BUCKETS, RedisKeys
from tieredstore.tiers.redis.plans import Plan, RedisOps
from tieredstore.tiers.redis.records import Call
from tieredstore.tiers.redis.scripts import SCRIPTS, script_sha
from tieredstore.tiers.redis.upkeep import UpkeepOps
from tieredstore.tiers.transfer import DEFAULT_TOMBSTONE_TTL, tombstone_ms
from tieredstore.timeouts import REDIS_TIMEOUTS

__all__ = ["CLUSTER_SCHEMES", "RedisShared", "evalsha_args", "is_cluster", "redis_down"]

STORE_OPTIONS = (
    "namespace",
    "prefix",
    "default_ttl",
    "max_messages",
    "sliding_ttl",
    "limits",
    "clock",
    "publish",
    "spill",
    "tombstone_ttl",
    "breaker",
    "buckets",
)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that ask for a cluster client: ``redis+cluster://host:port``
(any node of the cluster) is ``redis://host:port`` through ``RedisCluster``."""

_CLUSTER_CLASSES = (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a redis-py cluster client (sync or asyncio)."""
    return isinstance(client, _CLUSTER_CLASSES)


def redis_down(exc: BaseException) -> bool:
    """For the circuit breaker: Redis unreachable or silent (not an error reply),
    or a connection torn down under the call (:func:`.errors.driver_fault`)."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError) or (
        driver_fault(exc))


def evalsha_args(call: Call) -> tuple[Any, ...]:
    """The ``EVALSHA`` arguments of a script call."""
    return (script_sha(call.script), len(call.keys), *call.keys, *call.args)


def source(name: str) -> str:
    return SCRIPTS[name]


def split_cluster_url(url: str) -> tuple[bool, str]:
    """``(cluster?, the URL redis-py reads)`` for a store URL."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in CLUSTER_SCHEMES:
        return True, f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}"
    return False, url


class RedisShared(StoreCore):
    """What :class:`RedisStore` and :class:`AsyncRedisStore` share; no I/O.

    Construction rules, key names and the plans live here; the two shells
    only drive plans with their client.
    """

    tier = "redis"
    _client_class: Any = redis.Redis
    _cluster_class: Any = redis.cluster.RedisCluster
    _pool_class: Any = redis.ConnectionPool
    keys: RedisKeys
    client: Any
    cluster: bool
    _ops: RedisOps
    _upkeep: UpkeepOps
    _owns_client: bool
    _layout_checked: bool

    def _setup(
        self,
        client: Any,
        url: str | None,
        connection_pool: Any,
        *,
        namespace: str,
        prefix: str,
        publish: bool,
        spill: bool,
        breaker: CircuitBreaker | bool,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        buckets: int = DEFAULT_BUCKETS,
    ) -> None:
        if sum(x is not None for x in (client, url, connection_pool)) > 1:
            raise InvalidInput("pass at most one of client, url and connection_pool")
        self.keys = RedisKeys(prefix, namespace, buckets)
        self.publish = publish
        self.spill = spill
        self.breaker = resolve_breaker(breaker, "redis")
        self._owns_client = client is None
        if client is None:
            if url is not None:
                client = self._client_from_url(url, dict(REDIS_TIMEOUTS))
            elif connection_pool is not None:
                client = self._client_class(connection_pool=connection_pool)
            else:
                client = self._client_class(**REDIS_TIMEOUTS)
        if client.get_encoder().decode_responses:
            raise InvalidInput(
                f"{type(self).__name__} needs a client with decode_responses=False "
                "(it stores binary entries)"
            )
        self.client = client
        self.cluster = is_cluster(client)
        self._layout_checked = False
        self._ops = RedisOps(
            self.keys,
            max_messages=self.max_messages,
            sliding_ttl=self.sliding_ttl,
            channel=self.keys.channel if publish else "",
            sharded=self.cluster,
            spill=spill,
            default_ttl_ms=self.default_ttl_ms,
            limits=self.limits,
            tombstone_ms=tombstone_ms(tombstone_ttl),
        )
        self._upkeep = UpkeepOps(self._ops)

    @classmethod
    def _client_from_url(cls, url: str, options: Mapping[str, Any]) -> Any:
        cluster, url = split_cluster_url(url)
        if cluster:
            return cls._cluster_class.from_url(url, **options)
        return cls._client_class.from_pool(cls._pool_class.from_url(url, **options))

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A store on a client it builds (and closes) from ``url``.

        ``redis://``, ``rediss://`` and ``unix://`` URLs give a client of one
        server; ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS),
        naming any node, a Redis Cluster client. Store options (``namespace``,
        ``prefix``, ``default_ttl``, ``max_messages``, ``sliding_ttl``,
        ``limits``, ``clock``, ``publish``, ``spill``, ``tombstone_ttl``,
        ``breaker``, ``buckets``) configure the store; any other keyword goes
        to the client's ``from_url`` (for example ``max_connections``).
        ``socket_timeout`` and ``socket_connect_timeout`` default to
        :data:`~tieredstore.timeouts.REDIS_TIMEOUTS` (5 s, 2 s); a keyword or
        a URL parameter (``?socket_timeout=1``) overrides them.
        """
        store_options = {k: kwargs.pop(k) for k in STORE_OPTIONS if k in kwargs}
        client = cls._client_from_url(url, {**REDIS_TIMEOUTS, **kwargs})
        store = cls(client, **store_options)  # type: ignore[call-arg]
        store._owns_client = True
        return store

    @property
    def invalidation_channel(self) -> str:
        """The pub/sub channel write scripts announce new generations on
        (standalone Redis; see :attr:`invalidation_channels`)."""
        return self.keys.channel

    @property
    def invalidation_channels(self) -> list[str]:
        """The channels invalidations arrive on: the namespace's channel, or on
        a cluster the sharded channel of every bucket (SSUBSCRIBE)."""
        return self.keys.bucket_channels() if self.cluster else [self.keys.channel]

    def keys_of(self, session_id: str) -> list[str]:
        """The session's own keys: message list, hash, spill list."""
        return self.keys.session(self._sid(session_id))

    def _lock_backend(self) -> Any:
        return self  # the lock_* methods of the shells

    def _layout_plan(self) -> Plan[None]:
        """Refuse a namespace whose recorded bucket count differs from ours."""
        recorded = yield Call("layout", [self.keys.layout], [self.keys.buckets])
        if int(recorded) != self.keys.buckets:
            raise ConfigurationError(
                "redis",
                f"namespace {self.keys.namespace!r} under prefix {self.keys.prefix!r} has "
                f"{int(recorded)} buckets in Redis, this store was configured with "
                f"buckets={self.keys.buckets}; the count is fixed per namespace",
            )
        self._layout_checked = True
