"""Session locks, run against every store configuration, sync and async.

Stores with a Redis tier take the distributed lock; the others the
process-local one. Both must behave the same; only the Redis lock survives
(and is released by expiry after) the death of its holder's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from tests.conftest import REDIS_URL, Harness
from tieredstore import InvalidInput, LockTimeout, MemoryStore

REDIS_KINDS = [
    "redis",
    "tiered-memory-redis",
    "tiered-redis-pg",
    "async-redis",
    "async-tiered-memory-redis",
    "async-tiered-redis-pg",
]


def test_lock_excludes_others_until_released(store: Any) -> None:
    lock = store.lock("s1", timeout=10)
    assert lock.acquire()
    assert lock.owned and lock.locked()
    other = store.lock("s1", timeout=10, blocking_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(LockTimeout):
        other.acquire()
    assert 0.08 <= time.monotonic() - started < 1.5
    assert other.acquire(blocking=False) is False
    with store.lock("s2", blocking_timeout=0):
        pass  # other sessions are not affected
    assert lock.release() is True
    assert not lock.owned
    assert other.acquire(blocking=False) is True
    other.release()
    assert not store.lock("s1").locked()


def test_lock_expires_and_a_stale_release_is_reported(store: Any) -> None:
    first = store.lock("s1", timeout=0.2)
    first.acquire()
    second = store.lock("s1", timeout=5, blocking_timeout=3)
    started = time.monotonic()
    second.acquire()
    assert time.monotonic() - started < 1.5
    with pytest.raises(LockTimeout):
        first.release()  # it expired: the block it guarded may have overlapped
    assert second.locked(), "a stale release must not free the new holder's lock"
    second.release()


def test_extend_keeps_the_lock_alive(store: Any) -> None:
    with store.lock("s1", timeout=0.3) as lock:
        time.sleep(0.2)
        lock.extend()
        time.sleep(0.2)
        lock.extend(1.0)
        time.sleep(0.2)
        assert store.lock("s1").acquire(blocking=False) is False
    lost = store.lock("s1", timeout=0.1)
    lost.acquire()
    time.sleep(0.2)
    with pytest.raises(LockTimeout):
        lost.extend()
    assert not lost.owned


def test_lock_serialises_read_modify_write(store: Any) -> None:
    store.save("counter", [{"role": "system", "content": "0"}])
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(5):
                with store.lock("counter", timeout=10, blocking_timeout=30):
                    value = int(store.load("counter")[0]["content"])
                    store.save("counter", [{"role": "system", "content": str(value + 1)}])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.load("counter")[0]["content"] == "30"


def test_lock_arguments_are_checked(store: Any) -> None:
    for kwargs in ({"timeout": 0}, {"timeout": -1}, {"blocking_timeout": -1}, {"timeout": "5"}):
        with pytest.raises(InvalidInput):
            store.lock("s1", **kwargs)
    with pytest.raises(InvalidInput):
        store.lock("bad id")


def test_local_locks_are_per_store() -> None:
    a, b = MemoryStore(), MemoryStore()
    with a.lock("s1", blocking_timeout=0), b.lock("s1", blocking_timeout=0):
        pass


@pytest.mark.parametrize("harness", ["redis", "async-redis"], indirect=True)
def test_redis_lock_key_shares_the_session_hash_tag(harness: Harness, redis_client: Any) -> None:
    import zlib

    from redis.crc import key_slot

    store = harness.make()
    bucket = zlib.crc32(b"s-1") % store.keys.buckets
    tag = f"{harness.namespace}.{bucket}"
    with store.lock("s-1", timeout=5):
        key = f"{store.keys.prefix}:{harness.namespace}:{{{tag}}}:l:s-1"
        assert redis_client.exists(key)
        assert key_slot(key.encode()) == key_slot(store.keys.meta("s-1").encode())
        assert 0 < redis_client.pttl(key) <= 5000
    assert not redis_client.exists(key)


_HOLDER = textwrap.dedent(
    """
    import asyncio, sys, time
    from tieredstore.tiers.redis import AsyncRedisStore, RedisStore

    url, prefix, namespace, mode = sys.argv[1:5]
    message = {"role": "user", "content": "from the killed holder"}
    if mode == "sync":
        store = RedisStore.from_url(url, prefix=prefix, namespace=namespace)
        with store.conversation("shared", lock=True, lock_timeout=1.0) as conv:
            conv.add(message)
            print("holding", flush=True)
            time.sleep(60)
    else:
        async def main():
            store = AsyncRedisStore.from_url(url, prefix=prefix, namespace=namespace)
            async with store.conversation("shared", lock=True, lock_timeout=1.0) as conv:
                conv.add(message)
                print("holding", flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("harness", REDIS_KINDS, indirect=True)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_killed_holder_releases_the_lock_by_expiry(
    harness: Harness, redis_prefix: str, mode: str
) -> None:
    store = harness.make()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, REDIS_URL, redis_prefix, harness.namespace, mode],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"holding"
        assert store.lock("shared").locked()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        started = time.monotonic()
        with store.conversation("shared", lock=True, blocking_timeout=5) as conv:
            waited = time.monotonic() - started
            assert conv.history == (), "the killed block must not have written"
            conv.add({"role": "user", "content": "after the holder died"})
        assert waited < 1.5, waited
        assert store.load("shared") == [{"role": "user", "content": "after the holder died"}]
    finally:
        if holder.poll() is None:  # pragma: no cover - only on failure
            holder.kill()
            holder.wait()
