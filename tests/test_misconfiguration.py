"""Misconfiguration is :class:`ConfigurationError`, not the transient :class:`BackendUnavailable`.

``BackendUnavailable`` tells a caller "retry later"; a server refusing what
the store asks (ACL permissions, authentication, an unknown command, a key
of the wrong type, cross-slot keys, a missing database, a read-only file)
will refuse again, so it gets its own error. Each case is produced on a
real server where one can be set up on loopback, and by redis-py's own
reply parser otherwise.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
import sqlalchemy as sa
from redis import exceptions as rx
from redis._parsers.base import BaseParser
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.conftest import REDIS_URL
from tests.servers import RedisServer, free_port
from tieredstore import (
    ArchiveStore,
    BackendUnavailable,
    ConfigurationError,
    RedisStore,
    SchemaNotReady,
    TieredStoreError,
    migrate,
)
from tieredstore.query import ArchiveQuery
from tieredstore.tiers.redis import AsyncRedisStore, Call
from tieredstore.tiers.redis.errors import translate
from tieredstore.tiers.redis.plans import Plan

USER = {"role": "user", "content": "Hello"}


def reply(text: str) -> BaseException:
    """The exception redis-py raises for the server error reply ``text``."""
    return BaseParser.parse_error(text)  # type: ignore[no-any-return]


MISCONFIGURED = [
    reply("NOPERM User limited has no permissions to run the 'evalsha' command"),
    reply("NOAUTH Authentication required."),
    reply("WRONGPASS invalid username-password pair or user is disabled."),
    reply("WRONGTYPE Operation against a key holding the wrong kind of value"),
    reply("CROSSSLOT Keys in request don't hash to the same slot"),
    reply("NOSCRIPT No matching script. Please use EVAL."),
    reply("ERR unknown command 'EVALSHA', with args beginning with: "),
    reply("ERR Unknown Redis command called from script script: abc, on @user_script:1."),
    reply("ERR Script attempted to access a non local key in a cluster node"),
    reply("ERR This instance has cluster support disabled"),
    rx.AuthenticationError("invalid password"),
    rx.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
    rx.RedisClusterException("Cluster mode is not enabled on this node"),
    rx.CrossSlotTransactionError("keys in different slots"),
]
TRANSIENT = [
    rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
    rx.TimeoutError("Timeout reading from socket"),
    reply("LOADING Redis is loading the dataset in memory"),
    reply("READONLY You can't write against a read only replica."),
    reply("OOM command not allowed when used memory > 'maxmemory'."),
    reply("BUSY Redis is busy running a script."),
    reply("TRYAGAIN Multiple keys request during rehashing of slot"),
    reply("CLUSTERDOWN The cluster is down"),
    reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    rx.RedisClusterException("Redis Cluster cannot be connected. Please provide at least one "
                             "reachable node: Connection refused"),
    rx.SlotNotCoveredError("Slot 12 not covered by the cluster."),
]


@pytest.mark.parametrize("exc", MISCONFIGURED, ids=lambda e: str(e)[:40])
def test_redis_refusals_are_configuration_errors(exc: BaseException) -> None:
    error = translate(exc)
    assert type(error) is ConfigurationError and error.backend == "redis"
    assert str(exc)[:20] in str(error)


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: str(e)[:40])
def test_redis_outages_stay_backend_unavailable(exc: BaseException) -> None:
    assert type(translate(exc)) is BackendUnavailable


def test_error_tree() -> None:
    assert issubclass(ConfigurationError, TieredStoreError)
    assert not issubclass(ConfigurationError, BackendUnavailable)
    assert issubclass(SchemaNotReady, BackendUnavailable)


def test_real_server_replies_are_classified(redis_client: redis.Redis, redis_prefix: str) -> None:
    with pytest.raises(rx.ResponseError) as unknown:
        redis_client.execute_command("TIEREDSTORE-NO-SUCH-COMMAND")
    assert type(translate(unknown.value)) is ConfigurationError
    key = f"{redis_prefix}:wrongtype-{uuid.uuid4().hex[:8]}"
    redis_client.set(key, "a string")
    with pytest.raises(rx.ResponseError) as wrongtype:
        redis_client.lpush(key, "x")
    assert type(translate(wrongtype.value)) is ConfigurationError


# -- end to end on Redis -------------------------------------------------------------


def test_a_foreign_key_of_the_wrong_type_is_a_configuration_error(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix, namespace=f"wt-{uuid.uuid4().hex[:8]}")
    # someone else's key in our layout: the index of s1's bucket
    redis_client.set(store.keys.idx(store.keys.bucket("s1")), "not a sorted set")
    with pytest.raises(ConfigurationError, match="WRONGTYPE") as info:
        store.save("s1", [USER])
    assert isinstance(info.value.__cause__, rx.ResponseError)
    with pytest.raises(ConfigurationError):
        store.list()


def test_async_store_translates_the_same(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    namespace = f"wt-{uuid.uuid4().hex[:8]}"
    keys = RedisStore(redis_client, prefix=redis_prefix, namespace=namespace).keys
    redis_client.set(keys.idx(keys.bucket("s1")), "x")

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            store = AsyncRedisStore(client, prefix=redis_prefix, namespace=namespace)
            with pytest.raises(ConfigurationError, match="WRONGTYPE"):
                await store.save("s1", [USER])
            with pytest.raises(ConfigurationError, match="WRONGTYPE"):
                await store.list()
        finally:
            await client.aclose()

    asyncio.run(main())


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """A private Redis with a user that may not run scripts and one with a password."""
    server = RedisServer().start()
    try:
        admin = redis.Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "noscripts", "on", "nopass", "~*", "&*",
                              "+@all", "-evalsha", "-eval", "-script")
        admin.execute_command("ACL", "SETUSER", "secret", "on", ">right-password", "~*", "&*",
                              "+@all")
        admin.close()
        yield server
    finally:
        server.close()


def test_missing_acl_permissions_are_a_configuration_error(acl_server: RedisServer) -> None:
    client = redis.Redis(port=acl_server.port, username="noscripts")
    try:
        store = RedisStore(client, namespace="acl")
        with pytest.raises(ConfigurationError, match=r"(?i)permission") as info:
            store.save("s1", [USER])
        assert isinstance(info.value.__cause__, rx.NoPermissionError)
    finally:
        client.close()


def test_a_wrong_password_is_a_configuration_error(acl_server: RedisServer) -> None:
    client = redis.Redis(port=acl_server.port, username="secret", password="wrong")
    try:
        with pytest.raises(ConfigurationError):
            RedisStore(client, namespace="auth").load("s1")
    finally:
        client.close()


def test_a_dead_port_is_still_backend_unavailable() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=2)
    try:
        with pytest.raises(BackendUnavailable) as info:
            RedisStore(client, namespace="dead").load("s1")
        assert not isinstance(info.value, ConfigurationError)
    finally:
        client.close()


def _cross_slot_call(store: RedisStore) -> Plan[object]:
    """A script call naming keys of two buckets (no plan of the store makes one)."""
    keys = store.keys
    first = keys.idx(0)
    other = next(keys.idx(b) for b in range(1, keys.buckets)
                 if key_slot(keys.idx(b).encode()) != key_slot(first.encode()))
    reply = yield Call("layout", [first, other], [keys.buckets])
    return reply


def test_cluster_client_exceptions_are_translated(
    cluster_client: RedisCluster, redis_prefix: str
) -> None:
    """``RedisClusterException`` is not a ``RedisError``; the shells catch it too.

    The cluster client itself refuses a script whose keys span slots, before
    sending anything.
    """
    store = RedisStore(cluster_client, prefix=redis_prefix,
                       namespace=f"cl-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ConfigurationError, match="same key slot") as info:
        store._drive(_cross_slot_call(store))
    assert type(info.value.__cause__) is rx.RedisClusterException
    store.save("s1", [USER], user_id="u")  # the store's own calls stay in one slot
    assert store.load("s1") == [USER] and store.list(user_id="u").ids == ["s1"]
    assert store.delete("s1")


# -- the archive ----------------------------------------------------------------------


def test_a_missing_postgres_database_is_a_configuration_error(pg_url: str) -> None:
    url = sa.make_url(pg_url).set(database=f"tieredstore_missing_{uuid.uuid4().hex[:8]}")
    with (
        ArchiveStore.from_url(url.render_as_string(hide_password=False)) as store,
        pytest.raises(ConfigurationError, match="does not exist"),
    ):
        store.load("s1")


@pytest.fixture
def pg_role(pg_url: str) -> Iterator[str]:
    """A login role without any privilege on the tieredstore tables (dropped afterwards)."""
    role = f"tieredstore_noperm_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        yield role
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_missing_table_privileges_are_a_configuration_error(pg_url: str, pg_role: str) -> None:
    url = sa.make_url(pg_url).set(username=pg_role).render_as_string(hide_password=False)
    with (
        ArchiveStore.from_url(url) as store,
        pytest.raises(ConfigurationError, match="permission denied"),
    ):
        store.save("s1", [USER])
    engine = sa.create_engine(url)
    try:
        with pytest.raises(ConfigurationError, match="permission denied"):
            ArchiveQuery(engine).sessions()
    finally:
        engine.dispose()


def test_a_read_only_sqlite_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    migrate(f"sqlite:///{path}")
    with ArchiveStore.from_url(f"sqlite:///{path}") as writable:
        writable.save("s1", [USER])
    with ArchiveStore.from_url(f"sqlite:///file:{path}?mode=ro&uri=true") as store:
        assert store.load("s1") == [USER]
        with pytest.raises(ConfigurationError, match=r"(?i)read.?only"):
            store.append("s1", USER)
        assert store.load("s1") == [USER]


def test_queries_on_an_unmigrated_database_say_to_migrate(
    pg_database: Callable[[], str],
) -> None:
    engine = sa.create_engine(pg_database())
    try:
        with pytest.raises(SchemaNotReady, match="migrate"):
            ArchiveQuery(engine).sessions()
    finally:
        engine.dispose()
