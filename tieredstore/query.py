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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from tieredstore.codec import encode_json
from tieredstore.config import Limits
from tieredstore.core import check_session_id
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
from tieredstore.query_results import (
    EraseReport,
    ImportReport,
    SearchHit,
    SearchPage,
    SessionPage,
    SessionSummary,
)
from tieredstore.query_search import Search, SearchRows, run_pg
from tieredstore.query_text import (
    headline_word,
    index_language,
    make_snippet,
    parse_terms,
    pg_tsquery,
    sqlite_metadata_clause,
    sqlite_text_clauses,
)
from tieredstore.schema import DEFAULT_FTS_LANGUAGE, normalize_url
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import sessions as SESSIONS
from tieredstore.tiers.archive import partitions
from tieredstore.tiers.archive.rows import _NUL_ESCAPE
from tieredstore.tiers.sql_errors import misconfigured, schema_missing

if TYPE_CHECKING:
    from tieredstore.query_async import AsyncArchiveQuery
    from tieredstore.query_erase import erase
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
# Set by explain(): the search it runs collects each statement's plan here.
_EXPLAINED: ContextVar[list[str] | None] = ContextVar("tieredstore_explained", default=None)
TimeLike = datetime | float | int
"""A moment: an aware/naive ``datetime`` (naive = UTC) or unix seconds."""

_S = SESSIONS.c
_M = MESSAGES.c
_MAX_LIMIT = 1000
_IN_CHUNK = 500  # ids per IN (...) list
_LANGUAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_MARK = ("<mark>", "</mark>")


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
        self._months: set[int] = set()  # partitions known to exist
        #: The plan the last PostgreSQL search ran (see :mod:`tieredstore.query_search`).
        self.last_plan: str | None = None

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
            raise translate_error(self.engine, exc) from exc

    def language(self) -> str:
        """The text-search configuration in use (PostgreSQL): the FTS index's by default."""
        if self._language is None:
            self._language = self._run(index_language) if self._pg else DEFAULT_FTS_LANGUAGE
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
        return [sqlite_metadata_clause(key, value) for key, value in metadata.items()]

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
        live = self._live(include_expired)
        meta = self._metadata_filter(metadata or {})
        since_ms = _to_ms(since) if since is not None else None
        until_ms = _to_ms(until) if until is not None else None
        ids = list(session_ids) if session_ids is not None else None

        def window(m: Any) -> list[sa.ColumnElement[bool]]:
            """Conditions on message columns alone (a time walk's window takes them)."""
            conds: list[sa.ColumnElement[bool]] = []
            if since_ms is not None:
                conds.append(m.created_ms >= since_ms)
            if until_ms is not None:
                conds.append(m.created_ms < until_ms)
            if ids is not None:
                conds.append(m.session_id.in_(ids))
            return conds

        def scope(s: Any) -> list[sa.ColumnElement[bool]]:
            """The sessions a user filter selects (none: every session)."""
            return [s.user_id == user_id] if user_id is not None else []

        def filters(m: Any) -> list[sa.ColumnElement[bool]]:
            conds = [live, *meta, *window(m), *scope(_S)]
            if role is not None:
                conds.append(m.role == role)
            return conds

        key: tuple[int, str, int] | None = None
        if cursor is not None:
            c_ms, c_sid, c_seq = _decode_cursor(cursor, 3)
            key = (c_ms, c_sid, c_seq)
        has_text = text is not None and bool(text.strip())
        if self._pg:
            found = self._search_pg(text if has_text else None, limit, filters, window, scope,
                                    ids, key, highlight=highlight)
            rows, resume = found.rows, found.resume
        else:
            terms = parse_terms(text) if has_text and text is not None else []
            conds = [_M.namespace == self.namespace, *filters(_M),
                     *sqlite_text_clauses(terms)]
            if key is not None:
                conds.append(sa.tuple_(_M.created_ms, _M.session_id, _M.seq)
                             < sa.tuple_(*(sa.literal(v) for v in key)))
            stmt = (
                sa.select(_M.session_id, _M.seq, _M.created_ms, _M.role, _S.user_id,
                          _M.content_text)
                .select_from(MESSAGES.join(SESSIONS, sa.and_(
                    _S.namespace == _M.namespace, _S.session_id == _M.session_id)))
                .where(*conds)
                .order_by(_M.created_ms.desc(), _M.session_id.desc(), _M.seq.desc())
                .limit(limit + 1)
            )
            rows = [
                (r.session_id, r.seq, r.created_ms, r.role, r.user_id,
                 make_snippet(r.content_text or "", terms, highlight))
                for r in self._run(lambda conn: conn.execute(stmt).all())
            ]
            resume = None
        hits = [SearchHit(sid, int(seq), int(ms), role_, user, snippet)
                for sid, seq, ms, role_, user, snippet in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = hits[-1]
            next_cursor = _encode_cursor(last.created_ms, last.session_id, last.seq)
        elif resume is not None:  # the walk ran out of budget: resume where it stopped
            next_cursor = _encode_cursor(*resume)
        return SearchPage(hits, next_cursor)

    def _search_pg(
        self,
        text: str | None,
        limit: int,
        filters: Any,
        window: Any,
        scope: Any,
        session_ids: list[str] | None,
        cursor: tuple[int, str, int] | None,
        *,
        highlight: tuple[str, str],
    ) -> SearchRows:
        options = (f"StartSel={headline_word(highlight[0])}, "
                   f"StopSel={headline_word(highlight[1])}, "
                   "MaxWords=30, MinWords=10, MaxFragments=2, FragmentDelimiter=\" … \"")
        language = self.language()
        spec = Search(
            namespace=self.namespace, limit=limit, language=language,
            tsquery=pg_tsquery(language, text) if text is not None else None,
            filters=filters, window=window, scope=scope, session_ids=session_ids, cursor=cursor,
            headline=options, explained=_EXPLAINED.get(),
        )
        found = self._run(lambda conn: run_pg(conn, spec))
        self.last_plan = found.plan
        rows = [tuple(r) for r in found.rows]
        if text is None:  # the statement gave the whole text: the start of it is the snippet
            rows = [(*r[:5], make_snippet(r[5], [], highlight)) for r in rows]
        return SearchRows(rows, found.plan, found.resume)

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

    def explain(self, text: str | None = None, **filters: Any) -> str:
        """How :meth:`search` finds this page (PostgreSQL): the plan, then each statement's
        ``EXPLAIN (ANALYZE, BUFFERS)`` (they run, so this costs a search and more)."""
        if not self._pg:
            raise InvalidInput("explain() is for PostgreSQL")
        explained: list[str] = []
        token = _EXPLAINED.set(explained)
        try:
            self.search(text, **filters)
        finally:
            _EXPLAINED.reset(token)
        return f"plan: {self.last_plan}\n\n" + "\n\n".join(explained)

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
            raise translate_error(self.engine, exc) from exc

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
                    self._ensure_partitions({row.values["month"] for row in sessions})
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
            raise translate_error(self.engine, exc) from exc
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

    def _ensure_partitions(self, months: set[int]) -> None:
        """Partitions for ``months`` (PostgreSQL), made on a connection of their own.

        Each ``CREATE`` commits at once: the import's long transaction never
        holds the messages table's lock.
        """
        if not self._pg or months <= self._months:
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            partitions.ensure(conn, months)
        self._months |= months

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
                copy.set_types(("text", "text", "int8", "int4", "int8", "text", "text", "bytea",
                                "text"))
                for row in rows:  # the text is read from the payload, unless it can't be
                    copy.write_row(row if _NUL_ESCAPE in row[7] else (*row[:8], ""))
        except conn.dialect.loaded_dbapi.Error as exc:  # the raw cursor: not translated by SA
            raise translate_error(self.engine, exc) from exc

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
            raise translate_error(self.engine, exc) from exc


class BoundQuery(ArchiveQuery):
    """An :class:`ArchiveQuery` whose work runs on one given (sync-facade) connection."""

    def __init__(self, base: ArchiveQuery, conn: sa.Connection) -> None:
        self.__dict__.update(base.__dict__)
        self._conn = conn

    def _run(self, work: Callable[[sa.Connection], T]) -> T:
        return work(self._conn)


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


def translate_error(engine: sa.Engine, exc: Exception) -> BackendUnavailable | ConfigurationError:
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


def __getattr__(name: str) -> Any:
    # The asyncio twin and erasure live in modules of their own (they import this one).
    if name == "AsyncArchiveQuery":
        from tieredstore.query_async import AsyncArchiveQuery

        return AsyncArchiveQuery
    if name == "erase":
        from tieredstore.query_erase import erase

        return erase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
