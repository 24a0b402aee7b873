"""How :meth:`tieredstore.query.ArchiveQuery.search` finds a page in bounded time on PostgreSQL.

Hits come newest first, by ``(created_ms, session_id, seq)`` descending. A
full-text index cannot return rows in that order, and the two ways of using
it cost in proportion to different things: reading every match from the
index and sorting them costs in proportion to the matches (fine for a rare
word, seconds for a common one), walking the time index newest first and
testing each row costs in proportion to the rows read per hit (fine for a
common word, a full scan for a rare one). So a search asks the planner how
many rows the text matches and picks one of three plans:

* ``index`` (at most :data:`FEW_MATCHES` estimated): one statement, the
  full-text index drives, matches are sorted;
* ``partitions`` (more, but under :data:`COMMON_SHARE` of the rows): the
  same, one partition at a time, newest first, stopping once the page is
  full and no partition left can hold a newer message (each knows its
  newest message: one index probe);
* ``walk`` (common text, or no text): the time index newest first, reading
  at most :data:`SCAN_BUDGET` rows for the page. When the budget runs out
  first, the page holds the hits found so far, possibly none, and its
  cursor resumes the walk where it stopped: a page is bounded in time, and
  following the cursors still yields every hit exactly once.

A filter by user or by session ids is selective by itself: one statement,
and the planner starts from those sessions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tieredstore.query_text import pg_tsvector_of
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import sessions as SESSIONS
from tieredstore.tiers.archive import partitions

__all__ = ["COMMON_SHARE", "FEW_MATCHES", "SCAN_BUDGET", "Search", "SearchRows", "run_pg"]

#: Estimated matches up to which one index-driven statement is best.
FEW_MATCHES = 2_000
#: Share of the rows from which text counts as common (walk the time index).
COMMON_SHARE = 0.02
#: Rows a page's time walk reads at most.
SCAN_BUDGET = 1_500

_S = SESSIONS.c
Filters = Callable[[Any], list[sa.ColumnElement[bool]]]
Key = tuple[int, str, int]


@dataclass(frozen=True)
class Search:
    """One page's question: conditions over a messages source ``m`` (the table or a window)."""

    namespace: str
    limit: int
    language: str
    tsquery: sa.ColumnElement[Any] | None
    filters: Filters
    window: Filters
    selective: bool
    cursor: Key | None
    headline: str


@dataclass(frozen=True)
class SearchRows:
    """The rows of a page (at most ``limit + 1``) and the walk's stop, if it ran out of budget."""

    rows: list[Any]
    plan: str
    resume: Key | None = None


def _key(c: Any) -> Any:
    return sa.tuple_(c.created_ms, c.session_id, c.seq)


def _below(search: Search, c: Any) -> list[sa.ColumnElement[bool]]:
    if search.cursor is None:
        return []
    return [_key(c) < sa.tuple_(*(sa.literal(v) for v in search.cursor))]


def _statement(search: Search, m: Any, *, full_text: bool, where: Sequence[Any] = ()) -> Any:
    """The page's rows from messages source ``m`` (a table or a window), newest first."""
    c = m.c
    conds = [c.namespace == search.namespace, *search.filters(c), *where, *_below(search, c)]
    if search.tsquery is not None:
        conds.append(pg_tsvector_of(search.language, c).op("@@")(search.tsquery))
    # ``created_ms + 0``: keep the planner off the time index (the full-text index drives)
    order_ms = c.created_ms + 0 if full_text else c.created_ms
    inner = (
        sa.select(c.session_id, c.seq, c.created_ms, c.role, _S.user_id, c.payload,
                  c.content_text)
        .select_from(m.join(SESSIONS, sa.and_(
            _S.namespace == c.namespace, _S.session_id == c.session_id, _S.month == c.month)))
        .where(*conds)
        .order_by(order_ms.desc(), c.session_id.desc(), c.seq.desc())
        .limit(search.limit + 1)
        .subquery()
    )
    text = sa.func.tieredstore_message_text(inner.c.payload, inner.c.content_text,
                                            type_=sa.Text())
    config: sa.ColumnElement[Any] = sa.literal_column(f"'{search.language}'::regconfig")
    snippet = (
        sa.func.ts_headline(config, sa.func.coalesce(text, ""), search.tsquery, search.headline)
        if search.tsquery is not None
        else sa.func.left(sa.func.coalesce(text, ""), 160)
    )
    return sa.select(
        inner.c.session_id, inner.c.seq, inner.c.created_ms, inner.c.role, inner.c.user_id,
        snippet.label("snippet"),
    ).order_by(inner.c.created_ms.desc(), inner.c.session_id.desc(), inner.c.seq.desc())


def _rows(conn: sa.Connection, stmt: Any) -> list[Any]:
    return list(conn.execute(stmt).all())


def estimate(conn: sa.Connection, search: Search) -> tuple[float, float]:
    """The planner's estimate of the rows the text matches, and of the namespace's rows."""
    m = MESSAGES.c
    base = sa.select(sa.literal(1)).where(m.namespace == search.namespace)

    def rows(stmt: Any) -> float:
        compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
        plan = conn.execute(sa.text(f"EXPLAIN (FORMAT JSON) {compiled}")).scalar_one()
        parsed = plan if isinstance(plan, list) else json.loads(plan)
        return float(parsed[0]["Plan"]["Plan Rows"])

    total = rows(base)
    if search.tsquery is None:
        return total, total
    matched = rows(base.where(pg_tsvector_of(search.language, m).op("@@")(search.tsquery)))
    return matched, total


def run_pg(conn: sa.Connection, search: Search) -> SearchRows:
    """The page's rows by the plan that bounds its cost (see the module docs)."""
    if search.selective:
        return SearchRows(_rows(conn, _statement(search, MESSAGES, full_text=True)),
                          "index")
    matched, total = estimate(conn, search)
    if search.tsquery is not None and matched <= FEW_MATCHES:
        return SearchRows(_rows(conn, _statement(search, MESSAGES, full_text=True)),
                          "index")
    if search.tsquery is not None and matched < COMMON_SHARE * total:
        return _by_partition(conn, search)
    return _walk(conn, search)


def _walk(conn: sa.Connection, search: Search) -> SearchRows:
    m = MESSAGES.c
    conds = [m.namespace == search.namespace, *search.window(m), *_below(search, m)]
    window = (
        sa.select(MESSAGES)
        .where(*conds)
        .order_by(m.created_ms.desc(), m.session_id.desc(), m.seq.desc())
        .limit(SCAN_BUDGET)
        .subquery("w")
    )
    rows = _rows(conn, _statement(search, window, full_text=False))
    if len(rows) > search.limit:
        return SearchRows(rows, "walk")
    last = conn.execute(
        sa.select(m.created_ms, m.session_id, m.seq)
        .where(*conds)
        .order_by(m.created_ms.desc(), m.session_id.desc(), m.seq.desc())
        .offset(SCAN_BUDGET - 1)
        .limit(1)
    ).first()
    resume = (int(last.created_ms), str(last.session_id), int(last.seq)) if last else None
    return SearchRows(rows, "walk", resume)


def _by_partition(conn: sa.Connection, search: Search) -> SearchRows:
    """Each partition's page, the one holding the newest message first, merged."""
    m = MESSAGES.c
    found = partitions.ranges(conn)
    if not found:
        return SearchRows(_rows(conn, _statement(search, MESSAGES, full_text=True)),
                          "index")
    newest = sa.union_all(*(
        sa.select(sa.literal(i).label("i"), sa.func.max(m.created_ms).label("newest"))
        .where(m.namespace == search.namespace, m.month >= p.low, m.month < p.high)
        for i, p in enumerate(found)
    ))
    order = sorted(
        ((row.newest, found[row.i]) for row in conn.execute(newest) if row.newest is not None),
        key=lambda pair: pair[0], reverse=True,
    )
    rows: list[Any] = []
    for newest_ms, part in order:
        if len(rows) > search.limit and newest_ms < rows[search.limit].created_ms:
            break  # nothing in this partition, or any older one, can make the page
        rows.extend(conn.execute(_statement(
            search, MESSAGES, full_text=True,
            where=[m.month >= part.low, m.month < part.high])).all())
        rows.sort(key=lambda r: (r.created_ms, r.session_id, r.seq), reverse=True)
        del rows[search.limit + 1:]
    return SearchRows(rows, "partitions")
