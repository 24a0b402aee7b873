"""Archival queries: search, session summaries, export/import and erasure.

:class:`ArchiveQuery` reads the archive tables (:mod:`tieredstore.schema`)
directly, for operators and analytics rather than the hot path::

    q = ArchiveQuery(store.archive)            # or an Engine / URL, namespace=...
    page = q.search(text='"refund policy" OR invoice*', user_id="u-1", limit=20)
    for hit in page.hits:
        print(hit.session_id, hit.seq, hit.created_ms, hit.snippet)
    more = q.search(text=..., cursor=page.next_cursor)
    q.sessions(metadata={"plan": "pro"}, active_since=datetime(2026, 1, 1))
    with open("u-1.jsonl", "wb") as out:
        q.export_to(out, user_id="u-1")        # streamed, flat memory
    erase(store, "u-1")                        # every tier

Only what the archive holds is queried: sessions still hot in Redis appear
once archived (``durability="write_through"`` or the archival worker).
Expired sessions are left out unless ``include_expired=True``.

**Ordering and cursors.** Search hits come newest first by message time,
ties broken by session id and seq, both descending; session summaries by last
activity, then session id. Cursors are keysets over those columns, so a page
never repeats or skips a row when rows are added meanwhile (new rows newer
than the first page just do not appear on later pages).

**PostgreSQL** searches ``content_text`` with full text search: a GIN index on
``to_tsvector(<language>, content_text)`` (migration 0002) and
``websearch_to_tsquery`` syntax — ``word``, ``"a phrase"``, ``a OR b``,
``-word`` — plus prefix terms ``word*`` (always ANDed with the rest).
Snippets come from ``ts_headline``. The language is the index's: set
``TIEREDSTORE_FTS_LANGUAGE`` (a regconfig such as ``english``, ``simple``,
``german``) when running the migration; queries read it back from the index.
``metadata={...}`` is JSONB containment (``@>``, GIN index): nested objects
match if they contain the given keys, arrays if they contain the elements.

**SQLite** offers the same API without indexes: every term is a
case-insensitive substring test (``instr(lower(text), term)``: ASCII case
folding only, no stemming, ``cat`` also matches ``concatenate``); phrases are
substrings; ``OR``, ``-`` and ``*`` keep their meaning. ``metadata`` compares
top-level keys for equality of the decoded JSON value (no nested containment).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from tieredstore.codec import encode_json
from tieredstore.config import Limits
from tieredstore.core import check_session_id, check_user_id
from tieredstore.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidInput,
    SchemaNotReady,
    SessionExists,
)
from tieredstore.jsonl import (
    MESSAGE_COLUMNS,
    ExportLines,
    ImportReader,
    ImportSource,
    MessageRow,
    SessionRow,
)
from tieredstore.jsonl import json_object as _json_dict
from tieredstore.schema import DEFAULT_FTS_LANGUAGE, FTS_INDEX, normalize_url
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import sessions as SESSIONS
from tieredstore.tiers.sql_errors import misconfigured, schema_missing

if TYPE_CHECKING:
    from tieredstore.store import TieredStore
    from tieredstore.tiers.archive import ArchiveStore

__all__ = [
    "ArchiveQuery",
    "AsyncArchiveQuery",
    "EraseReport",
    "ImportReport",
    "SearchHit",
    "SearchPage",
    "SessionPage",
    "SessionSummary",
    "erase",
]

T = TypeVar("T")
TimeLike = datetime | float | int
"""A moment: an aware/naive ``datetime`` (naive = UTC) or unix seconds."""

_S = SESSIONS.c
_M = MESSAGES.c
_MAX_LIMIT = 1000
_IN_CHUNK = 500  # ids per IN (...) list
_SNIPPET_CHARS = 160
_LANGUAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_TOKEN = re.compile(r'-?"[^"]*"?|\S+')
_PREFIX = re.compile(r"(-?)(\w+)\*", re.UNICODE)
_MARK = ("<mark>", "</mark>")


# -- results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One matching message: where it is, when, and a snippet with matches marked."""

    session_id: str
    seq: int
    created_ms: int
    role: str
    user_id: str | None
    snippet: str

    @property
    def created_at(self) -> datetime:
        return _from_ms(self.created_ms)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of hits; pass ``next_cursor`` back for the next (``None``: the last)."""

    hits: list[SearchHit]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """An archived session without its messages."""

    session_id: str
    user_id: str | None
    message_count: int
    first_activity_ms: int
    last_activity_ms: int
    metadata: dict[str, Any]
    version: int
    expires_ms: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[SessionSummary]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[SessionSummary]:
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self.sessions)


@dataclass(slots=True)
class ImportReport:
    sessions: int = 0
    messages: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sessions": self.sessions, "messages": self.messages}


@dataclass(slots=True)
class EraseReport:
    """What :func:`erase` removed, per tier (memory counts this process's cache)."""

    user_id: str
    session_ids: list[str] = field(default_factory=list)
    memory_sessions: int = 0
    redis_sessions: int = 0
    archive_sessions: int = 0
    archive_messages: int = 0
    redis_skipped: list[str] = field(default_factory=list)
    """Ids Redis cannot hold (refused by today's validation): not asked there."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the query API ------------------------------------------------------------------


class ArchiveQuery:
    """Queries over one namespace of the archive.

    ``source`` is an :class:`ArchiveStore` (its engine and namespace are used),
    an :class:`sqlalchemy.Engine` (shared; never disposed here) or a URL (an
    engine owned and disposed by :meth:`close`). ``language`` overrides the
    text-search configuration read from the FTS index (PostgreSQL; a different
    one cannot use the index). ``clock`` returns unix seconds (expiry checks).
    ``limits`` (default: the archive store's, else :class:`Limits`) bound imports.
    """

    def __init__(
        self,
        source: ArchiveStore | sa.Engine | str | sa.URL,
        *,
        namespace: str | None = None,
        language: str | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
    ) -> None:
        self._owns_engine = False
        self.limits = limits or getattr(source, "limits", None) or Limits()
        if isinstance(source, sa.Engine):
            engine = source
        elif isinstance(source, str | sa.URL):
            engine = sa.create_engine(normalize_url(source))
            self._owns_engine = True
        else:
            engine = source.engine
            namespace = source.namespace if namespace is None else namespace
        self.engine = engine
        # The same rule as the stores' (namespaces are compared exactly in SQL).
        self.namespace = check_session_id(
            "default" if namespace is None else namespace, Limits(), what="namespace"
        )
        self._pg = engine.dialect.name == "postgresql"
        if language is not None and not _LANGUAGE.fullmatch(language):
            raise InvalidInput(f"not a text-search configuration name: {language!r}")
        self._language = language
        self.clock = clock

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> ArchiveQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------

    def _run(self, work: Callable[[sa.Connection], T]) -> T:
        try:
            with self.engine.connect() as conn:
                return work(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise _translate(self.engine, exc) from exc

    def language(self) -> str:
        """The text-search configuration in use (PostgreSQL): the FTS index's by default."""
        if self._language is None:
            self._language = self._run(_index_language) if self._pg else DEFAULT_FTS_LANGUAGE
        return self._language

    def _live(self, include_expired: bool) -> sa.ColumnElement[bool]:
        if include_expired:
            return _S.version > 0  # a delete's tombstone row is no session

        now = int(self.clock() * 1000)
        return sa.or_(_S.expires_ms.is_(None), _S.expires_ms > now)

    def _metadata_filter(self, metadata: Mapping[str, Any]) -> list[sa.ColumnElement[bool]]:
        if not metadata:
            return []
        if self._pg:
            wanted = sa.literal(encode_json(dict(metadata)).decode(), sa.Text())
            return [_S["metadata"].op("@>")(sa.cast(wanted, postgresql.JSONB()))]
        return [_sqlite_metadata_clause(key, value) for key, value in metadata.items()]

    # -- search -------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        *,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        role: str | None = None,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        session_ids: Sequence[str] | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_expired: bool = False,
        highlight: tuple[str, str] = _MARK,
    ) -> SearchPage:
        """Messages matching every filter given, newest first (see the module docs).

        ``since`` is inclusive, ``until`` exclusive (message time). Without
        ``text`` the snippet is the start of the message text.
        """
        limit = _check_limit(limit)
        conds: list[sa.ColumnElement[bool]] = [
            _M.namespace == self.namespace,
            self._live(include_expired),
        ]
        tsquery: sa.ColumnElement[Any] | None = None
        terms: list[list[tuple[bool, str]]] = []
        if text is not None and text.strip():
            if self._pg:
                tsquery = _pg_tsquery(self.language(), text)
                conds.append(_pg_tsvector(self.language()).op("@@")(tsquery))
            else:
                terms = _parse_terms(text)
                conds.extend(_sqlite_text_clauses(terms))
        if user_id is not None:
            conds.append(_S.user_id == user_id)
        if metadata:
            conds.extend(self._metadata_filter(metadata))
        if role is not None:
            conds.append(_M.role == role)
        if since is not None:
            conds.append(_M.created_ms >= _to_ms(since))
        if until is not None:
            conds.append(_M.created_ms < _to_ms(until))
        if session_ids is not None:
            conds.append(_M.session_id.in_(list(session_ids)))
        if cursor is not None:
            c_ms, c_sid, c_seq = _decode_cursor(cursor, 3)
            conds.append(sa.tuple_(_M.created_ms, _M.session_id, _M.seq)
                         < sa.tuple_(sa.literal(c_ms), sa.literal(c_sid), sa.literal(c_seq)))
        inner = (
            sa.select(_M.session_id, _M.seq, _M.created_ms, _M.role, _S.user_id,
                      _M.content_text)
            .select_from(MESSAGES.join(SESSIONS, sa.and_(
                _S.namespace == _M.namespace, _S.session_id == _M.session_id)))
            .where(*conds)
            .order_by(_order_time(tsquery is not None).desc(), _M.session_id.desc(),
                      _M.seq.desc())
            .limit(limit + 1)
        )
        if tsquery is not None:
            sub = inner.subquery()
            options = (f"StartSel={_headline_word(highlight[0])}, "
                       f"StopSel={_headline_word(highlight[1])}, "
                       "MaxWords=30, MinWords=10, MaxFragments=2, FragmentDelimiter=\" … \"")
            snippet = sa.func.ts_headline(
                sa.literal_column(f"'{self.language()}'::regconfig"),
                sa.func.coalesce(sub.c.content_text, ""), tsquery, options)
            stmt: sa.Select[Any] = sa.select(
                sub.c.session_id, sub.c.seq, sub.c.created_ms, sub.c.role, sub.c.user_id,
                snippet.label("snippet"),
            ).order_by(sub.c.created_ms.desc(), sub.c.session_id.desc(), sub.c.seq.desc())
        else:
            stmt = inner
        rows = self._run(lambda conn: conn.execute(stmt).all())
        hits = []
        for row in rows[:limit]:
            if tsquery is not None:
                snippet_text = row.snippet
            else:
                snippet_text = _snippet(row.content_text or "", terms, highlight)
            hits.append(SearchHit(row.session_id, int(row.seq), int(row.created_ms), row.role,
                                  row.user_id, snippet_text))
        next_cursor = None
        if len(rows) > limit:
            last = hits[-1]
            next_cursor = _encode_cursor(last.created_ms, last.session_id, last.seq)
        return SearchPage(hits, next_cursor)

    def search_all(self, text: str | None = None, **filters: Any) -> Iterator[SearchHit]:
        """Every hit of :meth:`search`, page after page."""
        cursor: str | None = None
        filters.setdefault("limit", _MAX_LIMIT)
        while True:
            page = self.search(text, cursor=cursor, **filters)
            yield from page.hits
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def explain(self, text: str, **filters: Any) -> str:
        """PostgreSQL ``EXPLAIN`` of the statement :meth:`search` runs for ``text``."""
        if not self._pg:
            raise InvalidInput("explain() is for PostgreSQL")
        language = self.language()
        limit = _check_limit(filters.pop("limit", 20))
        if filters:
            raise InvalidInput("explain() takes text and limit only")
        stmt = sa.text(
            f"EXPLAIN SELECT m.session_id, m.seq FROM {MESSAGES.name} m JOIN {SESSIONS.name} s "
            "ON s.namespace = m.namespace AND s.session_id = m.session_id "
            f"WHERE m.namespace = :ns AND to_tsvector('{language}'::regconfig, m.content_text) "
            f"@@ ({_pg_tsquery_sql(language, text)[0]}) "
            "AND (s.expires_ms IS NULL OR s.expires_ms > :now) "
            "ORDER BY m.created_ms + 0 DESC, m.session_id DESC, m.seq DESC LIMIT :limit"
        )
        params = {"ns": self.namespace, "now": int(self.clock() * 1000), "limit": limit + 1,
                  **_pg_tsquery_sql(language, text)[1]}
        rows = self._run(lambda conn: conn.execute(stmt, params).scalars().all())
        return "\n".join(rows)

    # -- sessions -----------------------------------------------------------------

    def sessions(
        self,
        *,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        active_since: TimeLike | None = None,
        active_until: TimeLike | None = None,
        limit: int = 100,
        cursor: str | None = None,
        include_expired: bool = False,
    ) -> SessionPage:
        """Session summaries, most recently active first.

        ``active_since``/``active_until`` select sessions active at some point
        in that window: last activity at or after ``active_since`` and first
        activity before ``active_until``.
        """
        limit = _check_limit(limit)
        conds: list[sa.ColumnElement[bool]] = [
            _S.namespace == self.namespace, self._live(include_expired)]
        if user_id is not None:
            conds.append(_S.user_id == user_id)
        conds.extend(self._metadata_filter(metadata or {}))
        if active_since is not None:
            conds.append(_S.updated_ms >= _to_ms(active_since))
        if active_until is not None:
            conds.append(_S.created_ms < _to_ms(active_until))
        if cursor is not None:
            c_ms, c_sid = _decode_cursor(cursor, 2)
            conds.append(sa.tuple_(_S.updated_ms, _S.session_id)
                         < sa.tuple_(sa.literal(c_ms), sa.literal(c_sid)))
        stmt = (
            sa.select(_S.session_id, _S.user_id, _S.message_count, _S.created_ms,
                      _S.updated_ms, _S["metadata"], _S.version, _S.expires_ms)
            .where(*conds)
            .order_by(_S.updated_ms.desc(), _S.session_id.desc())
            .limit(limit + 1)
        )
        rows = self._run(lambda conn: conn.execute(stmt).all())
        found = [
            SessionSummary(row.session_id, row.user_id, int(row.message_count),
                           int(row.created_ms), int(row.updated_ms), _json_dict(row.metadata),
                           int(row.version), row.expires_ms)
            for row in rows[:limit]
        ]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = _encode_cursor(found[-1].last_activity_ms, found[-1].session_id)
        return SessionPage(found, next_cursor)

    def session_ids(self, user_id: str, *, include_expired: bool = True) -> list[str]:
        """Every archived session id of ``user_id`` (expired ones too by default)."""
        stmt = sa.select(_S.session_id).where(
            _S.namespace == self.namespace, _S.user_id == user_id,
            self._live(include_expired)).order_by(_S.session_id)
        return self._run(lambda conn: list(conn.execute(stmt).scalars()))

    def stats(self) -> dict[str, int]:
        """Sessions, messages and payload bytes of this namespace (plus table sizes on PG)."""

        def work(conn: sa.Connection) -> dict[str, int]:
            sessions = conn.execute(sa.select(sa.func.count()).where(
                _S.namespace == self.namespace)).scalar_one()
            count, nbytes = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(
                    sa.func.length(_M.payload)), 0)).where(_M.namespace == self.namespace)
            ).one()
            result = {"sessions": int(sessions), "messages": int(count),
                      "payload_bytes": int(nbytes)}
            if self._pg:
                result["table_bytes"] = int(conn.execute(sa.text(
                    f"SELECT pg_total_relation_size('{SESSIONS.name}') + "
                    f"pg_total_relation_size('{MESSAGES.name}')")).scalar_one())
            return result

        return self._run(work)

    # -- export / import ------------------------------------------------------------

    def export(
        self,
        *,
        user_id: str | None = None,
        session_ids: Sequence[str] | None = None,
        format: str = "jsonl",
        include_expired: bool = False,
        batch_size: int = 1000,
    ) -> Iterator[bytes]:
        """Stream sessions as JSON lines (each ending in ``\\n``), one snapshot.

        Per session, ordered by id: a ``{"type": "session", ...}`` line with its
        bookkeeping, then one ``{"type": "message", "session_id", "seq",
        "created_ms", "message"}`` line per message by seq, ``message`` being
        the stored bytes verbatim. Rows come through a server-side cursor
        ``batch_size`` at a time, so memory stays flat however much is exported.
        """
        stmt = self._export_statement(user_id, session_ids, format, include_expired)
        engine = self.engine
        if self._pg:
            engine = engine.execution_options(isolation_level="REPEATABLE READ")
        lines = ExportLines()
        try:
            with engine.connect() as conn:
                result = conn.execution_options(stream_results=True,
                                                yield_per=batch_size).execute(stmt)
                for row in result:
                    yield from lines.feed(row)
        except sa.exc.SQLAlchemyError as exc:
            raise _translate(self.engine, exc) from exc

    def _export_statement(
        self,
        user_id: str | None,
        session_ids: Sequence[str] | None,
        format: str,
        include_expired: bool,
    ) -> sa.Select[Any]:
        if format != "jsonl":
            raise InvalidInput(f"unknown export format {format!r} (only 'jsonl')")
        if (user_id is None) == (session_ids is None):
            raise InvalidInput("export needs exactly one of user_id or session_ids")
        conds: list[sa.ColumnElement[bool]] = [
            _S.namespace == self.namespace, self._live(include_expired)]
        if user_id is not None:
            conds.append(_S.user_id == user_id)
        else:
            assert session_ids is not None
            conds.append(_S.session_id.in_(sorted(set(session_ids))))
        return (
            sa.select(_S.session_id, _S.user_id, _S["metadata"], _S.created_ms, _S.updated_ms,
                      _S.expires_ms, _S.ttl_ms, _S.version, _S.message_count, _S.next_seq,
                      _S.base_seq, _S.lead, _M.seq, _M.created_ms.label("m_created_ms"),
                      _M.payload)
            .select_from(SESSIONS.outerjoin(MESSAGES, sa.and_(
                _M.namespace == _S.namespace, _M.session_id == _S.session_id)))
            .where(*conds)
            .order_by(_S.session_id, _M.seq)
        )

    def export_to(self, out: IO[bytes], **options: Any) -> dict[str, int]:
        """Write :meth:`export` into a binary file; returns what it wrote, counted."""
        counts = {"sessions": 0, "messages": 0, "bytes": 0}
        for line in self.export(**options):
            out.write(line)
            counts["bytes"] += len(line)
            counts["sessions" if line.startswith(b'{"type":"session"') else "messages"] += 1
        return counts

    def import_jsonl(
        self,
        lines: ImportSource,
        *,
        batch_size: int = 5000,
        progress: Callable[[int], None] | None = None,
        limits: Limits | None = None,
        max_line_bytes: int | None = None,
    ) -> ImportReport:
        """Load :meth:`export` output into this namespace: all of it, or nothing.

        ``lines`` is a binary (or text) file, an iterable of lines, or a whole
        text. Each line is parsed fully and validated as the store API
        validates a write (ids, user ids, metadata, messages and ``limits``:
        the archive store's, when this query was built on one), and each
        session's bookkeeping against its messages; messages are stored as
        the codec re-encodes them, so exporting again gives the same lines.
        A line over ``max_line_bytes`` (default: twice the message limit plus
        64 KiB) is refused after reading that much. See :mod:`tieredstore.jsonl`.

        **One transaction for the whole file**: a bad line raises
        :class:`~tieredstore.errors.InvalidRecord` (``.line``; a
        :class:`~tieredstore.errors.RecordTooLarge` for sizes), a session that
        already exists :class:`SessionExists` (``.line``), a database failure
        :class:`BackendUnavailable` -- and then nothing of the file is stored,
        neither the failing session nor those before it. Validated rows go
        in ``batch_size`` at a time (binary ``COPY`` on PostgreSQL);
        ``progress(messages_so_far)`` is called after each batch.
        """
        reader = ImportReader(self.namespace, limits or self.limits,
                              max_line_bytes=max_line_bytes)
        batch_size = _check_batch(batch_size)
        report = ImportReport()

        def work(conn: sa.Connection) -> None:
            sessions: list[SessionRow] = []
            messages: list[MessageRow] = []

            def flush() -> None:
                if sessions:  # before the messages that refer to them
                    self._insert_sessions(conn, sessions)
                    report.sessions += len(sessions)
                    sessions.clear()
                if messages:
                    self._insert_messages(conn, messages)
                    report.messages += len(messages)
                    messages.clear()
                    if progress is not None:
                        progress(report.messages)

            for item in reader.read(lines):
                if isinstance(item, SessionRow):
                    sessions.append(item)
                else:
                    messages.append(item)
                if len(messages) >= batch_size or len(sessions) >= batch_size:
                    flush()
            flush()

        engine = self.engine
        if not self._pg:
            engine = engine.execution_options(tieredstore_sqlite_begin="IMMEDIATE")
        try:
            with engine.begin() as conn:
                work(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise _translate(self.engine, exc) from exc
        return report

    def _insert_sessions(self, conn: sa.Connection, rows: list[SessionRow]) -> None:
        """Insert session rows, first making sure none exists (:class:`SessionExists`)."""
        line_of = {row.session_id: row.line for row in rows}
        ids = list(line_of)
        for start in range(0, len(ids), _IN_CHUNK):
            taken = conn.execute(sa.select(_S.session_id).where(
                _S.namespace == self.namespace, _S.session_id.in_(ids[start:start + _IN_CHUNK])
            )).scalars().first()
            if taken is not None:
                raise SessionExists(taken, line_of[taken])
        try:
            conn.execute(SESSIONS.insert(), [row.values for row in rows])
        except sa.exc.IntegrityError as exc:  # created concurrently, after the check
            raise SessionExists(ids[0] if len(ids) == 1 else f"one of {ids[0]!r}…",
                                rows[0].line) from exc

    def _insert_messages(self, conn: sa.Connection, rows: list[MessageRow]) -> None:
        if not self._pg:
            conn.execute(MESSAGES.insert(), [dict(zip(MESSAGE_COLUMNS, row, strict=True))
                                             for row in rows])
            return
        dbapi: Any = conn.connection.driver_connection
        try:
            with dbapi.cursor() as cursor, cursor.copy(
                f"COPY {MESSAGES.name} ({', '.join(MESSAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(("text", "text", "int8", "int8", "text", "text", "bytea", "text"))
                for row in rows:
                    copy.write_row(row)
        except conn.dialect.loaded_dbapi.Error as exc:  # the raw cursor: not translated by SA
            raise _translate(self.engine, exc) from exc

    # -- erasure ------------------------------------------------------------------

    def delete_user(self, user_id: str) -> tuple[list[str], int]:
        """Delete every archived session of ``user_id``: ``(session ids, messages deleted)``."""

        def work(conn: sa.Connection) -> tuple[list[str], int]:
            owned = sa.select(_S.session_id).where(
                _S.namespace == self.namespace, _S.user_id == user_id)
            if self._pg:
                owned = owned.with_for_update()
            ids = list(conn.execute(owned).scalars())
            if not ids:
                return [], 0
            deleted = conn.execute(sa.delete(MESSAGES).where(
                _M.namespace == self.namespace, _M.session_id.in_(ids))).rowcount
            conn.execute(sa.delete(SESSIONS).where(
                _S.namespace == self.namespace, _S.session_id.in_(ids)))
            return sorted(ids), int(deleted)

        engine = self.engine
        if not self._pg:
            engine = engine.execution_options(tieredstore_sqlite_begin="IMMEDIATE")
        try:
            with engine.begin() as conn:
                return work(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise _translate(self.engine, exc) from exc



class _BoundQuery(ArchiveQuery):
    """An :class:`ArchiveQuery` whose work runs on one given (sync-facade) connection."""

    def __init__(self, base: ArchiveQuery, conn: sa.Connection) -> None:
        self.__dict__.update(base.__dict__)
        self._conn = conn

    def _run(self, work: Callable[[sa.Connection], T]) -> T:
        return work(self._conn)


class AsyncArchiveQuery:
    """The asyncio twin of :class:`ArchiveQuery` over SQLAlchemy's async engine.

    Each query runs the very same code as the sync class, on the async
    connection's synchronous facade (``AsyncConnection.run_sync``), so the
    event loop never blocks; ``export`` streams rows with ``AsyncConnection.stream``.
    ``source`` is an :class:`AsyncArchiveStore`, an ``AsyncEngine`` or a URL.
    """

    def __init__(
        self,
        source: Any,
        *,
        namespace: str | None = None,
        language: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from sqlalchemy.ext.asyncio import AsyncEngine

        from tieredstore.tiers.archive import create_async_engine

        self._owns_engine = False
        if isinstance(source, AsyncEngine):
            engine = source
        elif isinstance(source, str | sa.URL):
            engine = create_async_engine(normalize_url(source))
            self._owns_engine = True
        else:
            engine = source.engine
            namespace = source.namespace if namespace is None else namespace
        self.engine: AsyncEngine = engine
        self.sync = ArchiveQuery(engine.sync_engine, namespace=namespace, language=language,
                                 clock=clock)
        self.namespace = self.sync.namespace

    async def aclose(self) -> None:
        if self._owns_engine:
            await self.engine.dispose()

    async def __aenter__(self) -> AsyncArchiveQuery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def work(conn: sa.Connection) -> T:
            return method(_BoundQuery(self.sync, conn), *args, **kwargs)

        try:
            async with self.engine.connect() as conn:
                return await conn.run_sync(work)
        except sa.exc.SQLAlchemyError as exc:
            raise _translate(self.sync.engine, exc) from exc

    async def search(self, text: str | None = None, **filters: Any) -> SearchPage:
        """See :meth:`ArchiveQuery.search`."""
        return await self._call(ArchiveQuery.search, text, **filters)

    async def sessions(self, **filters: Any) -> SessionPage:
        """See :meth:`ArchiveQuery.sessions`."""
        return await self._call(ArchiveQuery.sessions, **filters)

    async def session_ids(self, user_id: str, *, include_expired: bool = True) -> list[str]:
        """See :meth:`ArchiveQuery.session_ids`."""
        return await self._call(ArchiveQuery.session_ids, user_id,
                                include_expired=include_expired)

    async def stats(self) -> dict[str, int]:
        """See :meth:`ArchiveQuery.stats`."""
        return await self._call(ArchiveQuery.stats)

    async def explain(self, text: str, **filters: Any) -> str:
        """See :meth:`ArchiveQuery.explain`."""
        return await self._call(ArchiveQuery.explain, text, **filters)

    async def export(
        self,
        *,
        user_id: str | None = None,
        session_ids: Sequence[str] | None = None,
        format: str = "jsonl",
        include_expired: bool = False,
    ) -> AsyncIterator[bytes]:
        """See :meth:`ArchiveQuery.export`: the same lines, streamed."""
        stmt = self.sync._export_statement(user_id, session_ids, format, include_expired)
        lines = ExportLines()
        try:
            async with self.engine.connect() as conn:
                if self.sync._pg:
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                result = await conn.stream(stmt)
                async for row in result:
                    for line in lines.feed(row):
                        yield line
        except sa.exc.SQLAlchemyError as exc:
            raise _translate(self.sync.engine, exc) from exc


def erase(store: TieredStore, user_id: str, *, batch_size: int = 1000) -> EraseReport:
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
        if redis is not None and addressable:
            position: tuple[int, str] | None = None
            while True:
                found = redis.list_keys(user_id, batch_size, position, "asc")
                ids.update(sid for _, sid in found)
                if len(found) < batch_size:
                    break
                position = found[-1]
        if memory is not None and addressable:
            cursor: str | None = None
            while True:
                page = memory.list(user_id=user_id, limit=batch_size, cursor=cursor)
                ids.update(page.ids)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        if memory is not None:
            report.memory_sessions = sum(memory.invalidate(sid) for sid in sorted(ids))
        if redis is not None:
            for sid in sorted(ids):
                if _valid_session_id(sid, redis.limits):
                    report.redis_sessions += redis.drop(sid)
                else:
                    report.redis_skipped.append(sid)
    finally:
        if query is not None:
            archived, report.archive_messages = query.delete_user(user_id)
            report.archive_sessions = len(archived)
            ids.update(archived)
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


# -- helpers ------------------------------------------------------------------------


def _check_batch(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidInput(f"batch_size must be a positive integer, got {size!r}")
    return size


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {_MAX_LIMIT}")
    return limit


def _to_ms(moment: TimeLike) -> int:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            from datetime import UTC

            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    if isinstance(moment, int | float) and not isinstance(moment, bool):
        return int(moment * 1000)
    raise InvalidInput(f"not a time: {moment!r}")


def _from_ms(ms: int) -> datetime:
    from datetime import UTC

    return datetime.fromtimestamp(ms / 1000, UTC)


def _encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def _decode_cursor(cursor: str, size: int) -> list[Any]:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise InvalidInput("invalid cursor") from exc
    if not isinstance(parts, list) or len(parts) != size or not isinstance(parts[0], int):
        raise InvalidInput("invalid cursor")
    return parts


def _translate(engine: sa.Engine, exc: Exception) -> BackendUnavailable | ConfigurationError:
    """A database error (SQLAlchemy's or the driver's own) as one of ours."""
    where = engine.url.render_as_string(hide_password=True)
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    text = str(orig).strip()
    first = text.splitlines()[0] if text else str(exc)
    detail = f"{where}: {first}"
    if schema_missing(exc, first):
        return SchemaNotReady("database", f"{detail}; run tieredstore.migrate(url) first")
    if misconfigured(exc):
        return ConfigurationError("database", detail)
    return BackendUnavailable("database", detail)


def _index_language(conn: sa.Connection) -> str:
    definition = conn.execute(
        sa.text("SELECT pg_get_indexdef(to_regclass(:name))"), {"name": FTS_INDEX}
    ).scalar()
    if definition:
        found = re.search(r"to_tsvector\('([^']+)'::regconfig", definition)
        if found:
            return found.group(1)
    return DEFAULT_FTS_LANGUAGE


def _order_time(full_text: bool) -> sa.ColumnElement[int]:
    """The time sort key; ``created_ms + 0`` with full-text search on PostgreSQL.

    Sorting by an expression keeps the planner off the time index for text
    queries: walking it newest first would compute ``to_tsvector`` for every
    row it filters (seconds on a million rows when matches are rare). The GIN
    index then always drives, and a query costs in proportion to its matches.
    """
    return _M.created_ms + 0 if full_text else _M.created_ms


def _pg_tsvector(language: str) -> sa.ColumnElement[Any]:
    return sa.func.to_tsvector(sa.literal_column(f"'{language}'::regconfig"), _M.content_text)


def _split_prefix(text: str) -> tuple[str, list[str]]:
    """``text`` without its prefix terms (``word*``), and those as tsquery operands."""
    rest: list[str] = []
    prefixes: list[str] = []
    for token in _TOKEN.findall(text):
        found = _PREFIX.fullmatch(token)
        if found:
            prefixes.append(f"{'!' if found.group(1) else ''}{found.group(2)}:*")
        else:
            rest.append(token)
    return " ".join(rest), prefixes


def _pg_tsquery(language: str, text: str) -> sa.ColumnElement[Any]:
    config: sa.ColumnElement[Any] = sa.literal_column(f"'{language}'::regconfig")
    rest, prefixes = _split_prefix(text)
    parts: list[sa.ColumnElement[Any]] = []
    if rest.strip():
        parts.append(sa.func.websearch_to_tsquery(config, rest))
    if prefixes:
        parts.append(sa.func.to_tsquery(config, " & ".join(prefixes)))
    query = parts[0]
    for part in parts[1:]:
        query = query.op("&&")(part)
    return query


def _pg_tsquery_sql(language: str, text: str) -> tuple[str, dict[str, str]]:
    rest, prefixes = _split_prefix(text)
    parts: list[str] = []
    params: dict[str, str] = {}
    if rest.strip():
        parts.append(f"websearch_to_tsquery('{language}'::regconfig, :q_rest)")
        params["q_rest"] = rest
    if prefixes:
        parts.append(f"to_tsquery('{language}'::regconfig, :q_prefix)")
        params["q_prefix"] = " & ".join(prefixes)
    return " && ".join(parts), params


def _headline_word(marker: str) -> str:
    if not marker or any(c in marker for c in ',"= '):
        raise InvalidInput(f"unusable highlight marker {marker!r}")
    return marker


def _parse_terms(text: str) -> list[list[tuple[bool, str]]]:
    """A conjunction of disjunctions of ``(negated, lowercase substring)`` (SQLite search)."""
    groups: list[list[tuple[bool, str]]] = []
    join_next = False
    for token in _TOKEN.findall(text):
        if token == "OR":
            join_next = bool(groups)
            continue
        negated = token.startswith("-") and len(token) > 1
        body = token[1:] if negated else token
        body = body.strip('"') if body.startswith('"') else body.rstrip("*")
        body = body.strip().lower()
        if not body:
            continue
        if join_next and not negated and not any(neg for neg, _ in groups[-1]):
            groups[-1].append((False, body))
        else:
            groups.append([(negated, body)])
        join_next = False
    return groups


def _sqlite_text_clauses(groups: list[list[tuple[bool, str]]]) -> list[sa.ColumnElement[bool]]:
    lowered = sa.func.lower(sa.func.coalesce(_M.content_text, ""))
    clauses: list[sa.ColumnElement[bool]] = []
    for group in groups:
        tests = []
        for negated, term in group:
            found = sa.func.instr(lowered, term) > 0
            tests.append(sa.not_(found) if negated else found)
        clauses.append(sa.or_(*tests))
    return clauses


def _sqlite_metadata_clause(key: str, value: Any) -> sa.ColumnElement[bool]:
    if not isinstance(key, str) or '"' in key or "\\" in key:
        raise InvalidInput(f"unsupported metadata key for SQLite: {key!r}")
    path = f'$."{key}"'
    column = _S["metadata"]
    kind = sa.func.json_type(column, path)
    extracted = sa.func.json_extract(column, path)
    if value is None:
        return kind == "null"
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    if isinstance(value, int | float):
        return sa.and_(kind.in_(("integer", "real")), extracted == value)
    if isinstance(value, str):
        return sa.and_(kind == "text", extracted == value)
    return sa.and_(kind.in_(("object", "array")),
                   extracted == sa.func.json(encode_json(value).decode()))


def _snippet(text: str, groups: list[list[tuple[bool, str]]], marks: tuple[str, str]) -> str:
    """The first ``_SNIPPET_CHARS`` around the first match, matches marked (SQLite, no text)."""
    terms = sorted({term for group in groups for negated, term in group if not negated},
                   key=len, reverse=True)
    lowered = text.lower()
    first = min((i for i in (lowered.find(t) for t in terms) if i >= 0), default=0)
    start = max(0, first - _SNIPPET_CHARS // 3)
    window = text[start:start + _SNIPPET_CHARS]
    if terms:
        pattern = re.compile("|".join(re.escape(t) for t in terms), re.IGNORECASE)
        window = pattern.sub(lambda m: f"{marks[0]}{m.group(0)}{marks[1]}", window)
    prefix = "…" if start else ""
    suffix = "…" if start + _SNIPPET_CHARS < len(text) else ""
    return f"{prefix}{window}{suffix}"
