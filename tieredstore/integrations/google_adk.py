"""Google ADK sessions on tieredstore (``pip install 'tieredstore[google-adk]'``).

::

    from google.adk.runners import Runner
    from tieredstore import TieredStore
    from tieredstore.integrations.google_adk import TieredSessionService

    store = TieredStore.from_url(redis_url=..., database_url=...)
    runner = Runner(app_name="support", agent=agent,
                    session_service=TieredSessionService(store))

    # or one object that owns its store (a sync TieredStore, so Runner.run works too):
    service = TieredSessionService.from_url(redis_url=..., database_url=...)

:class:`TieredSessionService` is an ADK ``BaseSessionService``. It takes any
store: an async one (``AsyncTieredStore``, ...) is awaited directly, a sync
one (``TieredStore``, ...) runs each call in a worker thread, so it serves
every event loop, including the new one ``Runner.run`` starts for each call.

**Layout.** One store namespace holds any number of ADK apps; the ADK names
become record ids (each part percent-escaped where tieredstore ids forbid a
character, and hashed beyond 64 characters, so different names never meet):

* ``adk.s/<app>/<user>/<session>`` — a session. Its metadata holds the
  ADK identity (``adk``) and the initial session state (``adk_state``); its
  tieredstore ``user_id`` is the user's record id, so a user's sessions are
  one indexed ``list``. Each event is one message ``{"role": "user" |
  "assistant", "adk_event": <Event as JSON>, "adk_state": <session state
  after it>, "adk_n": <its ordinal>}``, written by one atomic ``append``
  conditional on the version the caller's ``Session`` was read at: the event
  and its session-state delta are stored together or not at all, and an
  append to a session written since it was read raises ADK's
  ``StaleSessionError``.
* ``adk.u/<app>/<user>`` — the ``user:`` state shared by the user's sessions
  in the app, one metadata key per state key (each value wrapped in a
  one-element list, so ``None`` stays a value).
* ``adk.a/<app>`` — the ``app:`` state, likewise; its messages list the app's
  users (system messages, which trimming never drops) for
  ``list_sessions(app_name=...)`` without a user.

``temp:`` keys reach the caller's ``Session`` and are never stored. Events
round-trip exactly (``Event.model_dump(mode="json", exclude_none=True)`` and
back, as ADK's database service stores them).

**What the store cannot honour.**

* ``app:`` and ``user:`` deltas are separate records, merged (atomically
  per key) right after the event's append: a process that dies in between
  leaves the event and its session state stored without them, and two
  sessions writing one key concurrently keep the later write.
* ``get_session(after_timestamp=...)`` filters on the client: the service
  reads ever larger windows of the newest events until one reaches back
  past the timestamp. Events sharing a timestamp keep the order they were
  appended in (ADK's database service orders them by id).
* A store with ``max_messages`` keeps the newest events only. A
  ``TieredStore`` reads the rest from its archive when asked for them; other
  stores have dropped them. The session state is never lost: it rides on
  the newest event.
* Every event record carries the whole session state, so keep state small
  (ADK's own advice; artifacts hold large data). An event record is bounded
  by ``Limits.max_message_bytes`` (4 MiB), app and user state each by
  ``Limits.max_metadata_bytes`` (64 KiB).
* ``ttl`` applies to session records; app and user records follow the
  store's ``default_ttl`` (none: they are kept).
* ``list_sessions`` reads each listed session (its newest event, for its
  state and update time): one read per session; without a user it first
  reads the app's user list.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.platform import time as platform_time
from google.adk.platform import uuid as platform_uuid
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.session import Session
from google.adk.sessions.state import State
from pydantic_core import to_jsonable_python

from tieredstore.core import _UNSAFE_ID_CHARS, TTLLike
from tieredstore.errors import SessionNotFound, VersionConflict
from tieredstore.integrations import async_target
from tieredstore.integrations.shared import shared_stores
from tieredstore.model import thaw_json

try:
    from google.adk.errors import StaleSessionError
except ImportError:  # google-adk before StaleSessionError: its services raised ValueError

    class StaleSessionError(ValueError):  # type: ignore[no-redef]
        """The session was written since it was loaded."""


__all__ = [
    "StaleSessionError",
    "TieredSessionService",
    "app_record_id",
    "session_record_id",
    "user_record_id",
]

_EVENT, _STATE, _ORDINAL, _USER = "adk_event", "adk_state", "adk_n", "adk_user"
_STALE = (
    "session {!r} was modified in storage since it was loaded: "
    "reload it with get_session before appending more events"
)
_ESCAPED = re.compile(r"[%/~]|" + _UNSAFE_ID_CHARS.pattern)
_MAX_PART = 64
_FIRST_WINDOW = 64  # events read first when looking back for after_timestamp
_LAG_RETRIES = 6  # re-reads (10 ms doubling, 0.63 s in all) of a tier behind the caller
_LIST_PAGE = 1000
_CONCURRENCY = 32  # reads in flight at once when listing

T = TypeVar("T")


# -- record ids -----------------------------------------------------------------------


def _part(name: str) -> str:
    """One ADK name as part of a record id: escaped, or hashed when long."""
    escaped = _ESCAPED.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
        name,
    )
    if len(escaped) <= _MAX_PART:
        return escaped
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16)
    return "~" + digest.hexdigest()  # "~" is always escaped above, so no name looks like this


def session_record_id(app_name: str, user_id: str, session_id: str) -> str:
    """The tieredstore id of an ADK session."""
    return f"adk.s/{_part(app_name)}/{_part(user_id)}/{_part(session_id)}"


def user_record_id(app_name: str, user_id: str) -> str:
    """The tieredstore id of a user's ``user:`` state (and the user id of their sessions)."""
    return f"adk.u/{_part(app_name)}/{_part(user_id)}"


def app_record_id(app_name: str) -> str:
    """The tieredstore id of an app's ``app:`` state and user list."""
    return f"adk.a/{_part(app_name)}"


# -- state ---------------------------------------------------------------------------


def _split_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(app, user, session)`` parts of a state or delta, JSON-safe; ``temp:`` dropped."""
    app: dict[str, Any] = {}
    user: dict[str, Any] = {}
    session: dict[str, Any] = {}
    for key, value in to_jsonable_python(dict(state), fallback=repr).items():
        if key.startswith(State.APP_PREFIX):
            app[key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            user[key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            session[key] = value
    return app, user, session


def _merged(
    session: Mapping[str, Any], app: Mapping[str, Any], user: Mapping[str, Any]
) -> dict[str, Any]:
    merged = dict(session)
    merged.update((State.APP_PREFIX + key, value) for key, value in app.items())
    merged.update((State.USER_PREFIX + key, value) for key, value in user.items())
    return merged


def _wrap(delta: Mapping[str, Any]) -> dict[str, Any]:
    return {key: [value] for key, value in delta.items()}


def _unwrap(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {key: thaw_json(value[0]) for key, value in metadata.items()}


# -- event records --------------------------------------------------------------------


def _record(event: Event, state: Mapping[str, Any], ordinal: int) -> dict[str, Any]:
    return {
        "role": "user" if event.author == "user" else "assistant",
        _EVENT: event.model_dump(mode="json", exclude_none=True),
        _STATE: dict(state),
        _ORDINAL: ordinal,
    }


def _event(record: Mapping[str, Any]) -> Event:
    return Event.model_validate(thaw_json(record[_EVENT]))


def _after(records: list[Any], after: float) -> list[Any]:
    """The events from the last one before ``after`` on (ADK's in-memory rule)."""
    i = len(records) - 1
    while i >= 0 and records[i][_EVENT]["timestamp"] >= after:
        i -= 1
    return records[i + 1 :]


class _View:
    """One read of a session record: identity, version and the events loaded."""

    def __init__(self, found: Any, records: list[Any]) -> None:
        self.meta = found.metadata["adk"]
        self.version: int = found.version
        self.records = records
        self.newest = records[-1] if records else None
        self.initial_state = found.metadata.get(_STATE, {})

    @property
    def state(self) -> dict[str, Any]:
        """The stored session state (without ``app:`` and ``user:`` keys)."""
        source = self.initial_state if self.newest is None else self.newest[_STATE]
        return thaw_json(source)  # type: ignore[no-any-return]

    @property
    def updated(self) -> float:
        if self.newest is None:
            return float(self.meta["created"])
        return float(self.newest[_EVENT]["timestamp"])

    @property
    def ordinal(self) -> int:
        return 0 if self.newest is None else int(self.newest[_ORDINAL])

    @property
    def complete(self) -> bool:
        """Whether ``records`` starts at the session's first event."""
        return not self.records or self.records[0][_ORDINAL] == 1

    @property
    def marker(self) -> str:
        return f"{self.version}:{self.meta['gen']}"

    def session(self, state: dict[str, Any], records: Iterable[Any]) -> Session:
        session = Session(
            id=self.meta["id"],
            app_name=self.meta["app_name"],
            user_id=self.meta["user_id"],
            state=state,
            events=[_event(record) for record in records],
            last_update_time=self.updated,
        )
        session._storage_update_marker = self.marker
        return session


# -- the service ---------------------------------------------------------------------


class TieredSessionService(BaseSessionService):
    """ADK sessions, events and ``app:``/``user:``/session state in a tieredstore store.

    ``store`` is any store, sync or async (see the module docstring);
    ``ttl`` (seconds or a ``timedelta``) is set on a session by every write
    to it. The service holds nothing in memory, so any number of services,
    in any number of processes, may share a store.
    """

    def __init__(self, store: Any, *, ttl: TTLLike | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self._store = async_target(store)
        self._has_full_history = hasattr(store, "history_all")
        self._release: Callable[[], None] | None = None
        self._turns: weakref.WeakValueDictionary[
            tuple[asyncio.AbstractEventLoop, str], asyncio.Lock
        ] = weakref.WeakValueDictionary()
        self._turns_guard = threading.Lock()

    @classmethod
    def from_url(
        cls,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        ttl: TTLLike | None = None,
        **options: Any,
    ) -> Self:
        """A service over a sync ``TieredStore.from_url(...)``, which serves every event loop.

        ``options`` (``namespace``, ``max_messages``, ``migrate``, ...) go to
        the store; with neither URL it is the embedded default (memory +
        SQLite). Services built with the same settings share one store;
        :meth:`close` gives it back and the last one closes it.
        """
        from tieredstore.store import TieredStore

        settings = {"redis_url": redis_url, "database_url": database_url, **options}
        store, release = shared_stores.acquire(settings, lambda: TieredStore.from_url(**settings))
        try:
            service = cls(store, ttl=ttl)
        except BaseException:
            release()
            raise
        service._release = release
        return service

    async def close(self) -> None:
        """Give back the store :meth:`from_url` took (a store passed in is left open)."""
        release, self._release = self._release, None
        if release is not None:
            await asyncio.to_thread(release)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- BaseSessionService ---------------------------------------------------------

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Create a session (``AlreadyExistsError`` if ``session_id`` is taken)."""
        sid = session_id or platform_uuid.new_uuid()
        app_delta, user_delta, session_state = _split_state(state or {})
        created = platform_time.get_time()
        identity = {
            "app_name": app_name,
            "user_id": user_id,
            "id": sid,
            "created": created,
            "gen": platform_uuid.new_uuid(),
        }
        try:
            version = await self._store.save(
                session_record_id(app_name, user_id, sid),
                [],
                metadata={"adk": identity, _STATE: session_state},
                user_id=user_record_id(app_name, user_id),
                ttl=self.ttl,
                expected_version=0,
            )
        except VersionConflict:
            raise AlreadyExistsError(f"Session with id {sid} already exists.") from None
        app_state, user_state = await asyncio.gather(
            self._scoped(app_record_id(app_name), app_delta),
            self._user_state(app_name, user_id, user_delta),
        )
        session = Session(
            id=sid,
            app_name=app_name,
            user_id=user_id,
            state=_merged(session_state, app_state, user_state),
            last_update_time=created,
        )
        session._storage_update_marker = f"{version}:{identity['gen']}"
        return session

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        """The session with its events (``config`` narrows them), or ``None``."""
        recent = config.num_recent_events if config else None
        after = config.after_timestamp if config else None
        view, app_state, user_state = await asyncio.gather(
            self._view(session_record_id(app_name, user_id, session_id), recent, after),
            self._scoped(app_record_id(app_name), {}),
            self._scoped(user_record_id(app_name, user_id), {}),
        )
        if view is None:
            return None
        records = view.records
        if recent is not None:
            records = records[-recent:] if recent else []
        if after is not None:
            records = _after(records, after)
        session: Session = view.session(_merged(view.state, app_state, user_state), records)
        return session

    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        """The app's (or one user's) sessions without events, oldest update first."""
        users = [user_id] if user_id is not None else await self._users(app_name)
        app_state, *user_states = await _bounded(
            [
                self._scoped(app_record_id(app_name), {}),
                *(self._scoped(user_record_id(app_name, uid), {}) for uid in users),
            ]
        )
        sessions: list[Session] = []
        for uid, user_state in zip(users, user_states, strict=True):
            rids = await self._user_sessions(user_record_id(app_name, uid))
            views = await _bounded(self._view(rid, 0, None) for rid in rids)
            sessions.extend(
                view.session(_merged(view.state, app_state, user_state), [])
                for view in views
                if view is not None
            )
        sessions.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=sessions)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Delete the session and its events (nothing happens if it does not exist)."""
        await self._store.delete(session_record_id(app_name, user_id, session_id))

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user's ``user:`` state, keys without the prefix (``{}`` if none)."""
        return await self._scoped(user_record_id(app_name, user_id), {})

    async def append_event(self, session: Session, event: Event) -> Event:
        """Store ``event`` and its state delta, then apply both to ``session``.

        Raises ``StaleSessionError`` if the session was written since
        ``session`` was read, ``SessionNotFoundError`` if it is gone. An
        event equal to one ``session`` already holds (a re-delivery) is
        not stored again.
        """
        if event.partial:
            return event
        if any(held == event for held in session.events if held.id == event.id):
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        delta = event.actions.state_delta if event.actions and event.actions.state_delta else {}
        app_delta, user_delta, session_delta = _split_state(delta)
        rid = session_record_id(session.app_name, session.user_id, session.id)
        async with self._turn(rid):
            current = await self._current(rid, session)
            record = _record(event, {**current.state, **session_delta}, current.ordinal + 1)
            try:
                version = await self._store.append(
                    rid, record, ttl=self.ttl, expected_version=current.version
                )
            except VersionConflict:
                if not await self._store.exists(rid):
                    raise SessionNotFoundError(f"Session {session.id} not found.") from None
                raise StaleSessionError(_STALE.format(session.id)) from None
            session.last_update_time = event.timestamp
            session._storage_update_marker = f"{version}:{current.meta['gen']}"
            self._update_session_state(session, event)
            session.events.append(event)
        scoped = []
        if app_delta:
            scoped.append(self._scoped(app_record_id(session.app_name), app_delta))
        if user_delta:
            scoped.append(self._user_state(session.app_name, session.user_id, user_delta))
        await asyncio.gather(*scoped)
        return event

    @contextlib.asynccontextmanager
    async def _turn(self, rid: str) -> AsyncIterator[None]:
        """Serialise this process's appends to one session (on one event loop).

        Concurrent appends through one ``Session`` object (parallel agents
        share it) then follow each other instead of failing as stale.
        """
        key = (asyncio.get_running_loop(), rid)
        with self._turns_guard:
            lock = self._turns.get(key)
            if lock is None:
                lock = self._turns[key] = asyncio.Lock()
        async with lock:
            yield

    # -- reading ----------------------------------------------------------------------

    async def _read(self, rid: str, last: int | None) -> _View | None:
        try:
            found = await self._store.get(rid, last=last)
        except SessionNotFound:
            return None
        return _View(found, list(found.messages))

    async def _view(self, rid: str, recent: int | None, after: float | None) -> _View | None:
        """Read the events that ``recent`` and ``after`` may select, newest last.

        ``recent`` alone reads that many; ``after`` reads growing windows until
        one reaches back past it; neither reads the whole history. Where the
        store holds fewer than asked (a trimmed hot window), a tiered store's
        full history is read instead.
        """
        if recent is not None or after is None:
            window = None if recent is None else max(recent, 1)
            view = await self._read(rid, window)
            if view is None or view.complete:
                return view
            if window is not None and len(view.records) >= window:
                return view
            return await self._full(rid, view)
        window = _FIRST_WINDOW
        while True:
            view = await self._read(rid, window)
            if view is None or view.complete:
                return view
            if len(view.records) < window:
                return await self._full(rid, view)
            if any(record[_EVENT]["timestamp"] < after for record in view.records):
                return view
            window *= 4

    async def _full(self, rid: str, view: _View) -> _View:
        """``view`` with the session's whole history, where the store keeps it."""
        if not self._has_full_history:
            return view
        for _ in range(_LAG_RETRIES):
            history = await self._store.load(rid, full=True)
            if history and history[-1][_ORDINAL] == view.ordinal:
                view.records = list(history)
                return view
            fresh = await self._read(rid, 1)  # written meanwhile: match a newer read
            if fresh is None:
                return view
            view = fresh
        return view

    async def _current(self, rid: str, session: Session) -> _View:
        """The stored state ``session`` must match to be appended to."""
        version, gen = _parse_marker(session._storage_update_marker)
        for attempt in range(_LAG_RETRIES + 1):
            current = await self._read(rid, 1)
            if current is None:
                raise SessionNotFoundError(f"Session {session.id} not found.")
            if version is None:
                if _matches(current, session):
                    return current
            elif gen == current.meta["gen"]:
                if version == current.version:
                    return current
                if version > current.version and attempt < _LAG_RETRIES:
                    # This process's copy is behind the one the caller read: wait for it.
                    await asyncio.sleep(0.01 * 2**attempt)
                    continue
            break
        raise StaleSessionError(_STALE.format(session.id))

    async def _scoped(
        self, rid: str, delta: Mapping[str, Any], *, create: bool = False
    ) -> dict[str, Any]:
        """A state record's state after merging ``delta`` into it (empty: just read it).

        A missing record is created when there is a delta or ``create``.
        """
        updates = _wrap(delta)
        for _ in range(3):
            try:
                if updates:
                    return _unwrap(await self._store.merge_metadata(rid, updates))
                return _unwrap((await self._store.get(rid, last=0)).metadata)
            except SessionNotFound:
                if not (updates or create):
                    return {}
            try:
                await self._store.save(rid, [], metadata=updates, expected_version=0)
            except VersionConflict:
                continue  # created meanwhile: merge into it
            return _unwrap(updates)
        return _unwrap(await self._store.merge_metadata(rid, updates))

    async def _user_state(
        self, app_name: str, user_id: str, delta: Mapping[str, Any]
    ) -> dict[str, Any]:
        """:meth:`_scoped` for a user record; a new user is first entered in the app's list."""
        rid = user_record_id(app_name, user_id)
        try:
            if delta:
                return _unwrap(await self._store.merge_metadata(rid, _wrap(delta)))
            return _unwrap((await self._store.get(rid, last=0)).metadata)
        except SessionNotFound:
            pass
        await self._store.append(app_record_id(app_name), {"role": "system", _USER: user_id})
        return await self._scoped(rid, delta, create=True)

    async def _users(self, app_name: str) -> list[str]:
        try:
            entries = await self._store.load(app_record_id(app_name))
        except SessionNotFound:
            return []
        return list(dict.fromkeys(entry[_USER] for entry in entries if _USER in entry))

    async def _user_sessions(self, user_rid: str) -> list[str]:
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page = await self._store.list(user_id=user_rid, limit=_LIST_PAGE, cursor=cursor)
            ids.extend(page.ids)
            cursor = page.next_cursor
            if cursor is None:
                return ids


async def _bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``calls`` concurrently, at most ``_CONCURRENCY`` at a time, in order."""
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


def _parse_marker(marker: str | None) -> tuple[int | None, str | None]:
    """``(version, generation)`` of a marker this service set; ``(None, None)`` otherwise."""
    version, _, gen = (marker or "").partition(":")
    if not version.isdigit() or not gen:
        return None, None
    return int(version), gen


def _matches(current: _View, session: Session) -> bool:
    """A session without a marker matches storage it has seen all of (ADK's fallback)."""
    if current.updated <= session.last_update_time:
        return True
    newest = current.newest
    if newest is None:
        return not session.events
    return bool(session.events) and newest[_EVENT].get("id") == session.events[-1].id
