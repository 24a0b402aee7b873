"""What the Redis Cluster fault tests share: ids spread over buckets, waits, checks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from tieredstore.tiers.redis import bucket_of


def msg(i: int | str) -> dict[str, Any]:
    return {"role": "user", "content": f"m{i}"}


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (a bound, not a measure)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what or predicate}")
        time.sleep(0.01)


def spread_ids(stem: str, buckets: int, per_bucket: int) -> list[str]:
    """Session ids, ``per_bucket`` in each of ``buckets`` buckets."""
    counts = [0] * buckets
    out: list[str] = []
    i = 0
    while min(counts) < per_bucket:
        sid = f"{stem}{i}"
        b = bucket_of(sid, buckets)
        if counts[b] < per_bucket:
            counts[b] += 1
            out.append(sid)
        i += 1
    return out


def spanning_namespace(client: Any, stem: str, buckets: int) -> str:
    """A fresh namespace whose buckets' slots lie on every primary of the cluster
    (a random one leaves a primary without a bucket about once in 200 draws)."""
    from redis.crc import key_slot

    manager = client.nodes_manager
    primaries = {node.name for node in client.get_primaries()}
    for _ in range(1000):
        namespace = f"{stem}-{uuid.uuid4().hex[:10]}"
        owners = {
            manager.get_node_from_slot(key_slot(f"{namespace}.{b}".encode())).name
            for b in range(buckets)
        }
        if owners == primaries:
            return namespace
    raise AssertionError("no namespace spans every primary")


def cluster_nodes_of(client: Any, sids: list[str], keys: Any) -> set[str]:
    """The primaries (``host:port``) holding the sessions' buckets."""
    return {client.get_node_from_key(keys.meta(sid)).name for sid in sids}


def session_keys(client: Any, root: str) -> list[bytes]:
    """Every key under ``root`` on a cluster's primaries or a standalone Redis
    except the namespace's layout record, lease, cursor and lap keys."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        found = client.scan_iter(match=f"{root}*", count=1000, target_nodes=RedisCluster.PRIMARIES)
    else:
        found = client.scan_iter(match=f"{root}*", count=1000)
    skip = (b":buckets", b":lease:", b":cur:", b":lap:")
    return sorted(k for k in found if not any(part in k for part in skip))


def archive_rows(engine: Any, namespace: str) -> dict[str, list[int]]:
    """Per archived session, the seqs of its messages in the archive, in order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT session_id, seq FROM tieredstore_messages "
                "WHERE namespace = :ns ORDER BY session_id, seq"
            ),
            {"ns": namespace},
        )
        out: dict[str, list[int]] = {}
        for row in rows:
            out.setdefault(row.session_id, []).append(int(row.seq))
        return out


def archived_sessions(engine: Any, namespace: str) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT session_id FROM tieredstore_sessions WHERE namespace = :ns"),
            {"ns": namespace},
        )
        return {row.session_id for row in rows}
