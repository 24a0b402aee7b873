"""The search language of :class:`tieredstore.query.ArchiveQuery` on both databases.

PostgreSQL: ``websearch_to_tsquery`` plus prefix terms (``word*``) over the
full-text index; SQLite: case-insensitive substring tests with the same
``OR`` / ``-`` / ``"phrase"`` / ``*`` meaning, and metadata equality by key.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from tieredstore.codec import encode_json
from tieredstore.errors import InvalidInput
from tieredstore.schema import DEFAULT_FTS_LANGUAGE, FTS_INDEX, MESSAGE_TEXT_FUNCTION
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import sessions as SESSIONS

__all__ = [
    "headline_word",
    "index_language",
    "make_snippet",
    "parse_terms",
    "pg_tsquery",
    "pg_tsquery_sql",
    "pg_tsvector_of",
    "sqlite_metadata_clause",
    "sqlite_text_clauses",
]

_S = SESSIONS.c
_M = MESSAGES.c
SNIPPET_CHARS = 160
_TOKEN = re.compile(r'-?"[^"]*"?|\S+')
_PREFIX = re.compile(r"(-?)(\w+)\*", re.UNICODE)


def index_language(conn: sa.Connection) -> str:
    definition = conn.execute(
        sa.text("SELECT pg_get_indexdef(to_regclass(:name))"), {"name": FTS_INDEX}
    ).scalar()
    if definition:
        found = re.search(r"to_tsvector\('([^']+)'::regconfig", definition)
        if found:
            return found.group(1)
    return DEFAULT_FTS_LANGUAGE


def pg_tsvector_of(language: str, columns: Any) -> sa.ColumnElement[Any]:
    """The indexed tsvector of the message rows ``columns`` (the table's or a subquery's)."""
    text = getattr(sa.func, MESSAGE_TEXT_FUNCTION)(
        columns.payload, columns.content_text, type_=sa.Text()
    )
    return sa.func.to_tsvector(sa.literal_column(f"'{language}'::regconfig"), text)


def split_prefix(text: str) -> tuple[str, list[str]]:
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


def pg_tsquery(language: str, text: str) -> sa.ColumnElement[Any]:
    config: sa.ColumnElement[Any] = sa.literal_column(f"'{language}'::regconfig")
    rest, prefixes = split_prefix(text)
    parts: list[sa.ColumnElement[Any]] = []
    if rest.strip():
        parts.append(sa.func.websearch_to_tsquery(config, rest))
    if prefixes:
        parts.append(sa.func.to_tsquery(config, " & ".join(prefixes)))
    query = parts[0]
    for part in parts[1:]:
        query = query.op("&&")(part)
    return query


def pg_tsquery_sql(language: str, text: str) -> tuple[str, dict[str, str]]:
    rest, prefixes = split_prefix(text)
    parts: list[str] = []
    params: dict[str, str] = {}
    if rest.strip():
        parts.append(f"websearch_to_tsquery('{language}'::regconfig, :q_rest)")
        params["q_rest"] = rest
    if prefixes:
        parts.append(f"to_tsquery('{language}'::regconfig, :q_prefix)")
        params["q_prefix"] = " & ".join(prefixes)
    return " && ".join(parts), params


def headline_word(marker: str) -> str:
    if not marker or any(c in marker for c in ',"= '):
        raise InvalidInput(f"unusable highlight marker {marker!r}")
    return marker


def parse_terms(text: str) -> list[list[tuple[bool, str]]]:
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


def sqlite_text_clauses(groups: list[list[tuple[bool, str]]]) -> list[sa.ColumnElement[bool]]:
    lowered = sa.func.lower(sa.func.coalesce(_M.content_text, ""))
    clauses: list[sa.ColumnElement[bool]] = []
    for group in groups:
        tests = []
        for negated, term in group:
            found = sa.func.instr(lowered, term) > 0
            tests.append(sa.not_(found) if negated else found)
        clauses.append(sa.or_(*tests))
    return clauses


def sqlite_metadata_clause(key: str, value: Any) -> sa.ColumnElement[bool]:
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


def make_snippet(text: str, groups: list[list[tuple[bool, str]]], marks: tuple[str, str]) -> str:
    """The first ``SNIPPET_CHARS`` around the first match, matches marked (SQLite, no text)."""
    terms = sorted({term for group in groups for negated, term in group if not negated},
                   key=len, reverse=True)
    lowered = text.lower()
    first = min((i for i in (lowered.find(t) for t in terms) if i >= 0), default=0)
    start = max(0, first - SNIPPET_CHARS // 3)
    window = text[start:start + SNIPPET_CHARS]
    if terms:
        pattern = re.compile("|".join(re.escape(t) for t in terms), re.IGNORECASE)
        window = pattern.sub(lambda m: f"{marks[0]}{m.group(0)}{marks[1]}", window)
    prefix = "…" if start else ""
    suffix = "…" if start + SNIPPET_CHARS < len(text) else ""
    return f"{prefix}{window}{suffix}"
