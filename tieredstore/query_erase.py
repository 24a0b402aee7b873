"""Erasure: every session of a user removed from every tier (:func:`erase`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tieredstore.config import Limits
from tieredstore.core import check_session_id, check_user_id
from tieredstore.errors import InvalidInput
from tieredstore.query import ArchiveQuery
from tieredstore.query_results import EraseReport

if TYPE_CHECKING:
    from tieredstore.store import TieredStore

__all__ = ["erase", "user_session_ids"]


def user_session_ids(store: TieredStore, user_id: str, *, batch_size: int = 1000) -> list[str]:
    """The ids of ``user_id``'s sessions in every tier, sorted: what :func:`erase` would
    remove now (so an operator can be told how many before it runs)."""
    if not isinstance(user_id, str) or not user_id:
        raise InvalidInput("erase needs a user id (a non-empty string)")
    ids: set[str] = set()
    if store.archive is not None:
        ids.update(ArchiveQuery(store.archive).session_ids(user_id))
    if _valid_user_id(user_id, store.limits):
        ids.update(_hot_ids(store, user_id, batch_size))
    return sorted(ids)


def _hot_ids(store: TieredStore, user_id: str, batch_size: int) -> set[str]:
    """The user's session ids in Redis's per-user index (in pages) and the memory tier."""
    ids: set[str] = set()
    redis, memory = store.redis, store.memory
    if redis is not None:
        position: tuple[int, str] | None = None
        while True:
            found = redis.list_keys(user_id, batch_size, position, "asc")
            ids.update(sid for _, sid in found)
            if len(found) < batch_size:
                break
            position = found[-1]
    if memory is not None:
        cursor: str | None = None
        while True:
            page = memory.list(user_id=user_id, limit=batch_size, cursor=cursor)
            ids.update(page.ids)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return ids


def erase(
    store: TieredStore,
    user_id: str,
    *,
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> EraseReport:
    """Remove every session of ``user_id`` from every tier of ``store``; report what went.

    The ids come from Redis's per-user index (in pages), the archive and this
    process's memory tier; then each tier deletes them (memory, Redis, the
    archive). Redis deletes publish the usual invalidation, so other
    processes' memory tiers drop the sessions too. Sessions of other
    users are not touched. A session the user writes while this runs may
    survive it: stop the user's traffic first.

    Ids (and user ids) that today's validation refuses -- which no API call
    can have written to memory or Redis, but an old archive may hold -- are
    skipped in those tiers (listed in ``redis_skipped``) and deleted from the
    archive all the same. The archive delete runs even when Redis fails; the
    Redis error is raised after it (erase is idempotent: run it again).
    ``progress(done, total)`` is called after each session's Redis delete
    and once more when the archive's delete (one transaction) has committed.
    """
    if not isinstance(user_id, str) or not user_id:
        raise InvalidInput("erase needs a user id (a non-empty string)")
    report = EraseReport(user_id)
    redis, archive, memory = store.redis, store.archive, store.memory
    query = ArchiveQuery(archive) if archive is not None else None
    addressable = _valid_user_id(user_id, store.limits)
    ids: set[str] = set()
    if query is not None:
        ids.update(query.session_ids(user_id))
    try:
        if addressable:
            ids.update(_hot_ids(store, user_id, batch_size))
        if memory is not None:
            report.memory_sessions = sum(memory.invalidate(sid) for sid in sorted(ids))
        if redis is not None:
            for done, sid in enumerate(sorted(ids), 1):
                if _valid_session_id(sid, redis.limits):
                    report.redis_sessions += redis.drop(sid)
                else:
                    report.redis_skipped.append(sid)
                if progress is not None:
                    progress(done, len(ids))
    finally:
        if query is not None:
            archived, report.archive_messages = query.delete_user(user_id)
            report.archive_sessions = len(archived)
            ids.update(archived)
            if progress is not None:
                progress(len(ids), len(ids))
    if memory is not None:  # a read that raced the deletes may have cached a copy
        for sid in ids:
            memory.invalidate(sid)
    report.session_ids = sorted(ids)
    return report


def _valid_session_id(sid: str, limits: Limits) -> bool:
    try:
        check_session_id(sid, limits)
    except InvalidInput:
        return False
    return True


def _valid_user_id(user_id: str, limits: Limits) -> bool:
    try:
        check_user_id(user_id, limits)
    except InvalidInput:
        return False
    return True
