"""How :meth:`tieredstore.query.ArchiveQuery.search` finds a page in bounded time on PostgreSQL.

Hits come newest first, by ``(created_ms, session_id, seq)`` descending. A
full-text index cannot return rows in that order, and the two ways of using
it cost in proportion to different things: reading every match from the
index and sorting them costs in proportion to the matches (fine for a rare
word, seconds for a common one), walking the time index newest first and
testing each row costs in proportion to the rows read per hit (fine for a
common word, a full scan for a rare one). So a search asks the planner how
many rows the text matches and picks the cheapest of three plans by a cost
model (:func:`choose`) in microseconds of work per row:

* ``index``: one statement, the full-text index drives, every match is
  fetched and sorted;
* ``partitions``: the same, one partition at a time, newest first, stopping
  once the page is full and no partition left can hold a newer message
  (each knows its newest message: one index probe);
* ``walk``: the time index newest first, testing each row, reading at most
  :data:`SCAN_BUDGET` rows for the page. When the budget runs out first,
  the page holds the hits found so far, possibly none, and its cursor
  resumes the walk where it stopped: a page is bounded in time, and
  following the cursors still yields every hit exactly once.

A phrase (``"a b"``) costs the index plans a text test per match (the index
knows which rows hold the words, not where), which is what a walk pays per
row read. No text, or only filters on message columns: a walk.

A filter by user or by session ids scopes the search to those sessions.
When they hold few messages (:data:`SCOPE_ROWS`), a ``scoped`` walk over
them alone competes with the index: the sessions' messages are sorted
newest first and at most :data:`SCAN_BUDGET` of them tested.
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

__all__ = ["SCAN_BUDGET", "Search", "SearchRows", "choose", "run_pg"]

#: Rows a page's time walk reads at most.
SCAN_BUDGET = 1_000
#: Microseconds, roughly, to test one row's text (parse its payload, build its tsvector).
TEXT_TEST_US = 50.0
#: Microseconds, roughly, to fetch, join and sort one match the index found.
FETCH_US = 10.0
#: Microseconds, roughly, to probe one partition (its newest message, its index).
PROBE_US = 1_000.0
#: Messages a user's (or the given sessions') scope may hold to be sorted whole.
SCOPE_ROWS = 10_000

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
    scope: Filters
    session_ids: list[str] | None
    cursor: Key | None
    headline: str
    #: When a list: each statement's ``EXPLAIN (ANALYZE, BUFFERS)`` is added to it.
    explained: list[str] | None = None


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
    # without text the caller cuts the snippet from the whole text (make_snippet)
    snippet = (
        sa.func.ts_headline(config, sa.func.coalesce(text, ""), search.tsquery, search.headline)
        if search.tsquery is not None
        else sa.func.coalesce(text, "")
    )
    return sa.select(
        inner.c.session_id, inner.c.seq, inner.c.created_ms, inner.c.role, inner.c.user_id,
        snippet.label("snippet"),
    ).order_by(inner.c.created_ms.desc(), inner.c.session_id.desc(), inner.c.seq.desc())


def _rows(conn: sa.Connection, stmt: Any, search: Search) -> list[Any]:
    if search.explained is not None:
        compiled = stmt.compile(conn)
        plan = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS) {compiled.string}", compiled.params
        ).scalars()
        search.explained.append("\n".join(plan))
    return list(conn.execute(stmt).all())


def choose(
    matched: float,
    total: float,
    partitions: int,
    *,
    phrase: bool,
    limit: int,
    scope_rows: int | None = None,
    largest_share: float | None = None,
) -> str:
    """The plan of least estimated cost for text matching ``matched`` of ``total`` rows.

    ``scope_rows``: the messages of the sessions a user or session-id filter
    selects; when few enough, a walk over them alone (``scoped``) competes.
    ``largest_share``: the share of the rows in the largest partition (the
    partition plan's worst case for one partition; default: an equal share).
    """
    per_match = FETCH_US + (TEXT_TEST_US if phrase else 0.0)
    share = matched / total if total > 0 else 1.0
    walk = min(SCAN_BUDGET, (limit + 1) / share if share > 0 else SCAN_BUDGET) * TEXT_TEST_US
    costs = {"index": matched * per_match}
    if scope_rows is not None and scope_rows <= SCOPE_ROWS:
        costs["scoped"] = scope_rows * FETCH_US + min(scope_rows, SCAN_BUDGET) * TEXT_TEST_US
    elif scope_rows is None:
        costs["walk"] = walk
        if partitions > 1:
            share_one = largest_share if largest_share is not None else 1 / partitions
            costs["partitions"] = matched * share_one * per_match + partitions * PROBE_US
    else:  # a scope too large to sort: the time walk filters by it
        costs["walk"] = walk
    return min(costs, key=lambda plan: costs[plan])


def estimate(conn: sa.Connection, search: Search) -> tuple[float, float]:
    """The planner's estimate of the rows the text matches, and of the namespace's rows."""
    m = MESSAGES.c
    base = sa.select(sa.literal(1)).where(m.namespace == search.namespace)

    def rows(stmt: Any) -> float:
        compiled = stmt.compile(conn)
        plan = conn.exec_driver_sql(
            f"EXPLAIN (FORMAT JSON) {compiled.string}", compiled.params
        ).scalar_one()
        parsed = plan if isinstance(plan, list) else json.loads(plan)
        return float(parsed[0]["Plan"]["Plan Rows"])

    total = rows(base)
    if search.tsquery is None:
        return total, total
    matched = rows(base.where(pg_tsvector_of(search.language, m).op("@@")(search.tsquery)))
    return matched, total


def _scope_rows(conn: sa.Connection, search: Search) -> int:
    """How many messages the sessions of the search's scope hold."""
    conds = [_S.namespace == search.namespace, *search.scope(_S)]
    if search.session_ids is not None:
        conds.append(_S.session_id.in_(search.session_ids))
    found = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(_S.message_count), 0))
                         .where(*conds)).scalar_one()
    return int(found)


def run_pg(conn: sa.Connection, search: Search) -> SearchRows:
    """The page's rows by the plan that bounds its cost (see the module docs).

    Parallel workers, JIT compilation, hash and merge joins are off for the
    page's statements: they pay off for long scans, and every plan here is
    built not to scan long (a parallel plan also hides the per-user index
    from the planner, which costs it as if each loop probed every
    partition).
    """
    conn.execute(sa.text("SET LOCAL max_parallel_workers_per_gather = 0"))
    conn.execute(sa.text("SET LOCAL jit = off"))
    # Every plan joins a bounded set of message rows to their sessions by primary
    # key: a hash join would read the whole sessions table to build its table.
    conn.execute(sa.text("SET LOCAL enable_hashjoin = off"))
    conn.execute(sa.text("SET LOCAL enable_mergejoin = off"))
    scoped = search.session_ids is not None or bool(search.scope(_S))
    scope_rows = _scope_rows(conn, search) if scoped else None
    if search.tsquery is None:
        plan = "scoped" if scope_rows is not None and scope_rows <= SCOPE_ROWS else "walk"
        return _walk(conn, search, scoped=plan == "scoped")
    matched, total = estimate(conn, search)
    known = partitions.ranges(conn)
    phrase = bool(conn.execute(
        sa.select(sa.func.strpos(sa.cast(search.tsquery, sa.Text()), "<"))).scalar())
    sized = [p.rows for p in known if p.rows > 0]
    largest = max(sized) / sum(sized) if sized else None
    plan = choose(matched, total, len(known), phrase=phrase, limit=search.limit,
                  scope_rows=scope_rows, largest_share=largest)
    if plan in ("walk", "scoped"):
        return _walk(conn, search, scoped=plan == "scoped")
    if plan == "partitions":
        return _by_partition(conn, search, known)
    return SearchRows(_rows(conn, _statement(search, MESSAGES, full_text=True), search), "index")


def _walk(conn: sa.Connection, search: Search, *, scoped: bool) -> SearchRows:
    """At most :data:`SCAN_BUDGET` messages newest first (of the scope's sessions), tested."""
    m = MESSAGES.c
    conds = [m.namespace == search.namespace, *search.window(m), *_below(search, m)]
    source: Any = MESSAGES
    if scoped:
        source = MESSAGES.join(SESSIONS, sa.and_(
            _S.namespace == m.namespace, _S.session_id == m.session_id, _S.month == m.month))
        conds += search.scope(_S)
    order = (m.created_ms.desc(), m.session_id.desc(), m.seq.desc())
    window = (
        sa.select(*MESSAGES.c).select_from(source).where(*conds).order_by(*order)
        .limit(SCAN_BUDGET).subquery("w")
    )
    plan = "scoped" if scoped else "walk"
    rows = _rows(conn, _statement(search, window, full_text=False), search)
    if len(rows) > search.limit:
        return SearchRows(rows, plan)
    last = conn.execute(
        sa.select(m.created_ms, m.session_id, m.seq).select_from(source).where(*conds)
        .order_by(*order).offset(SCAN_BUDGET - 1).limit(1)
    ).first()
    resume = (int(last.created_ms), str(last.session_id), int(last.seq)) if last else None
    return SearchRows(rows, plan, resume)


def _by_partition(
    conn: sa.Connection, search: Search, found: Sequence[partitions.PartitionRange]
) -> SearchRows:
    """Each partition's page, the one holding the newest message first, merged."""
    m = MESSAGES.c
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
        rows.extend(_rows(conn, _statement(
            search, MESSAGES, full_text=True,
            where=[m.month >= part.low, m.month < part.high]), search))
        rows.sort(key=lambda r: (r.created_ms, r.session_id, r.seq), reverse=True)
        del rows[search.limit + 1:]
    return SearchRows(rows, "partitions")
