"""write_through when Redis goes back to an older copy of a session than the archive holds.

Redis replication is asynchronous: a replica promoted after its primary died
may lack the last acknowledged writes, and even the acknowledgement of an
outbox record whose write it has. These tests make Redis lose a write
deterministically, without a failover, by restoring a DUMP of the session's
keys taken before it (``RESTORE ... REPLACE``). Every acknowledged write is
in the archive, so nothing may be lost, and the next write must not be
acknowledged with a version a caller has already seen.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from typing import Any

import pytest
import redis

from tieredstore import ArchiveStore
from tieredstore.core import prepare_batch
from tieredstore.tiers.redis.scripts import script_sha

SID = "s"


def msg(i: int | str) -> dict[str, Any]:
    return {"role": "user", "content": f"m{i}"}


@pytest.fixture
def namespace() -> str:
    return f"stale-{uuid.uuid4().hex[:10]}"


def dump_session(client: Any, store: Any, sid: str) -> dict[str, bytes | None]:
    """DUMP of the session's hash, message list and outbox (``None``: key absent)."""
    keys = store.redis.keys
    names = [keys.meta(sid), keys.messages(sid), keys.outbox(sid)]
    return {name: client.dump(name) for name in names}


def restore_session(client: Any, store: Any, sid: str, dumped: dict[str, bytes | None]) -> None:
    """Put the dumped keys back as they were (an older copy of the session)."""
    for name, payload in dumped.items():
        client.delete(name)
        if payload is not None:
            client.restore(name, 0, payload, replace=True)
    if dumped[store.redis.keys.outbox(sid)] is not None:
        bucket = store.redis.keys.bucket(sid)
        client.zadd(store.redis.keys.obx(bucket), {sid: 0})


def write_with_pending_record(store: Any, sid: str, message: dict[str, Any]) -> int:
    """An append Redis and the archive hold whose outbox record Redis still keeps
    (its acknowledgement is the part a replica may not have got)."""
    batch = prepare_batch([message], store.redis.limits)
    receipt = store.redis.write_append(
        sid, batch=batch, ttl_ms=None, expected_version=None, create=False, outbox=True
    )
    assert receipt is not None and receipt.pending == 1
    assert store.archive.mirror(sid, batch, receipt, replace=False)
    return int(receipt.version)


def check_one_history(direct: ArchiveStore, store: Any, versions: list[int],
                      expected: list[dict[str, Any]]) -> None:
    assert all(a < b for a, b in itertools.pairwise(versions)), f"versions: {versions}"
    full = store.load(SID, full=True)
    twice = [c for c, n in Counter(m["content"] for m in full).items() if n > 1]
    assert twice == [], f"stored twice: {twice}"
    assert full == expected
    assert direct.load(SID) == expected


@pytest.mark.parametrize("ack", ["lost", "kept"])
def test_a_write_on_a_copy_behind_the_archive_gets_a_new_version(
    make_tiered: Any, redis_client: Any, pg_engine: Any, namespace: str, ack: str
) -> None:
    """Redis loses the last acknowledged append (``lost``: and the acknowledgement of
    the outbox record before it, so the next write finds two records pending). The
    next append reuses the lost write's seq and version in Redis; the archive holds
    them, so the session is reconciled and the append is acknowledged above both."""
    store = make_tiered(durability="write_through", memory_max_bytes=None)
    direct = ArchiveStore(pg_engine, namespace=namespace)
    versions = [store.append(SID, msg(i)) for i in range(3)]
    if ack == "lost":
        versions.append(write_with_pending_record(store, SID, msg(3)))
    else:
        versions.append(store.append(SID, msg(3)))
    older = dump_session(redis_client, store, SID)
    versions.append(store.append(SID, msg(4)))  # acknowledged: Redis and the archive
    restore_session(redis_client, store, SID, older)  # Redis forgets it
    assert store.redis.load(SID) == [msg(i) for i in range(4)]
    versions.append(store.append(SID, msg(5)))
    versions.append(store.append(SID, msg(6)))
    check_one_history(direct, store, versions, [msg(i) for i in range(7)])
    assert store.get(SID).version == versions[-1]


def test_a_merge_redis_lost_does_not_repeat_its_version(
    make_tiered: Any, redis_client: Any, pg_engine: Any, namespace: str
) -> None:
    """Redis loses an acknowledged merge_metadata (a version without messages): the
    next append would take that version again in Redis; it is acknowledged above it."""
    store = make_tiered(durability="write_through", memory_max_bytes=None)
    direct = ArchiveStore(pg_engine, namespace=namespace)
    versions = [store.append(SID, msg(i)) for i in range(2)]
    older = dump_session(redis_client, store, SID)
    store.merge_metadata(SID, {"k": "v"})
    versions.append(store.get(SID).version)
    restore_session(redis_client, store, SID, older)
    versions.append(store.append(SID, msg(2)))
    check_one_history(direct, store, versions, [msg(i) for i in range(3)])
    assert store.get(SID).metadata == {"k": "v"}


def test_the_async_store_acknowledges_no_version_twice(
    make_tiered: Any, redis_client: Any, pg_url: str, redis_prefix: str, pg_engine: Any,
    namespace: str,
) -> None:
    """The same plans under AsyncTieredStore: the lost write's version is not reused."""
    import redis.asyncio

    from tests.conftest import REDIS_URL
    from tieredstore.aio import AsyncTieredStore
    from tieredstore.tiers.archive import create_async_engine

    setup = make_tiered(durability="write_through", memory_max_bytes=None)
    direct = ArchiveStore(pg_engine, namespace=namespace)
    versions = [setup.append(SID, msg(i)) for i in range(2)]
    versions.append(write_with_pending_record(setup, SID, msg(2)))
    older = dump_session(redis_client, setup, SID)

    async def main() -> list[int]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        engine = create_async_engine(pg_url)
        store = AsyncTieredStore.from_clients(
            redis=client, engine=engine, namespace=namespace, prefix=redis_prefix,
            durability="write_through",
        )
        try:
            got = [await store.append(SID, msg(3))]
            restore_session(redis_client, setup, SID, older)
            got.append(await store.append(SID, msg(4)))
            got.append(await store.append(SID, msg(5)))
            return got
        finally:
            await store.aclose()
            await client.aclose()
            await engine.dispose()

    versions += asyncio.run(main())
    check_one_history(direct, setup, versions, [msg(i) for i in range(6)])


class RepliesLost(redis.Redis):
    """A client that, like redis-py's cluster client after a dropped connection,
    sends each append script a second time: the first run's reply never arrives."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[:2] == ("EVALSHA", script_sha("append")):
            super().execute_command(*args, **options)
        return super().execute_command(*args, **options)


@pytest.mark.parametrize("durability", ["write_through", "archive"])
def test_an_append_sent_twice_is_applied_once(
    make_tiered: Any, pg_engine: Any, namespace: str, durability: str
) -> None:
    """A retried append script (same call) replies as the first run did and appends
    nothing: versions and history are those of one append per call."""
    from tests.conftest import REDIS_URL

    client = RepliesLost.from_url(REDIS_URL)
    try:
        store = make_tiered(redis=client, durability=durability, memory_max_bytes=None)
        versions = [store.append(SID, msg(i)) for i in range(3)]
        versions.append(store.append(SID, msg(3), expected_version=3))
        assert versions == [1, 2, 3, 4]
        assert store.load(SID, full=True) == [msg(i) for i in range(4)]
        if durability == "write_through":
            assert ArchiveStore(pg_engine, namespace=namespace).load(SID) == [
                msg(i) for i in range(4)]
            assert store.redis is not None and store.redis.outbox_sessions() == []
    finally:
        client.close()


class OutboxReadFails(redis.Redis):
    """A client whose next read of an outbox fails as if Redis had just died."""

    fail = False

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.fail and args[:2] == ("EVALSHA", script_sha("outbox")):
            self.fail = False
            raise redis.ConnectionError("Connection closed by server.")
        return super().execute_command(*args, **options)


def test_an_append_is_in_the_archive_when_redis_fails_under_the_drain(
    make_tiered: Any, pg_engine: Any, namespace: str
) -> None:
    """The append finds an older outbox record pending and Redis fails before the
    outbox can be read: the append itself still reaches the archive before it is
    acknowledged (the Redis copy that alone holds it may be about to be lost)."""
    from tests.conftest import REDIS_URL

    client = OutboxReadFails.from_url(REDIS_URL)
    try:
        store = make_tiered(redis=client, durability="write_through", memory_max_bytes=None)
        direct = ArchiveStore(pg_engine, namespace=namespace)
        versions = [store.append(SID, msg(0))]
        versions.append(write_with_pending_record(store, SID, msg(1)))
        client.fail = True
        versions.append(store.append(SID, msg(2)))
        assert not client.fail, "precondition: the outbox read failed"
        assert direct.load(SID) == [msg(0), msg(1), msg(2)]
        versions.append(store.append(SID, msg(3)))
        check_one_history(direct, store, versions, [msg(i) for i in range(4)])
    finally:
        client.close()
