"""Monthly partitions of ``tieredstore_messages`` on PostgreSQL (no I/O but ``conn``).

A session's ``month`` (``YYYYMM``, UTC) is fixed when its archive row is
first written, from the creation time of its generation, and every message
row of the session carries it: all of a session's messages are in one
partition, and retention can drop a month whole. Partition ``m`` is named
``tieredstore_messages_m<YYYYMM>`` and holds ``FROM (m) TO (next_month(m))``.

Partitions are created ahead by the worker (:func:`ensure`, task
``partitions``) and on demand by a write that finds none for its month.
An operator may create, attach or detach partitions by hand with other
names or wider ranges; :func:`ranges` reads the real bounds back from the
catalog, so the store only creates months no partition covers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tieredstore.schema import MESSAGES

__all__ = [
    "PartitionRange",
    "analyze",
    "covering",
    "ensure",
    "missing_partition",
    "month_of",
    "month_start_ms",
    "months_ahead",
    "next_month",
    "partition_name",
    "ranges",
]

_DAY_MS = 86_400_000
_MIN_MONTH, _MAX_MONTH = 101, 999_912
_BOUND = re.compile(r"FOR VALUES FROM \((-?\d+)\) TO \((-?\d+)\)")
_FAILING_MONTH = re.compile(r"\(month\) = \((-?\d+)\)")


@dataclass(frozen=True)
class PartitionRange:
    """One partition: its table name, the months ``[low, high)`` it holds, and its
    row count as of its last ``ANALYZE`` (``-1``: never analysed)."""

    name: str
    low: int
    high: int
    rows: float = -1.0

    def holds(self, month: int) -> bool:
        return self.low <= month < self.high


def _civil(days: int) -> tuple[int, int]:
    """``(year, month)`` of a day number since 1970-01-01 (proleptic Gregorian)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month


def month_of(ms: int) -> int:
    """The UTC month of unix milliseconds ``ms`` as ``YYYYMM`` (years clamped to 1..9999)."""
    year, month = _civil(ms // _DAY_MS)
    return min(max(year * 100 + month, _MIN_MONTH), _MAX_MONTH)


def next_month(month: int) -> int:
    year, mm = divmod(month, 100)
    return (year + 1) * 100 + 1 if mm >= 12 else month + 1


def month_start_ms(month: int) -> int:
    """Unix milliseconds of the first instant of ``month`` (UTC)."""
    year, mm = divmod(month, 100)
    y = year - (1 if mm <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    mp = mm - 3 if mm > 2 else mm + 9
    doy = (153 * mp + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146_097 + doe - 719_468) * _DAY_MS


def months_ahead(now_ms: int, ahead: int) -> list[int]:
    """This month and the ``ahead`` after it."""
    months = [month_of(now_ms)]
    for _ in range(ahead):
        months.append(next_month(months[-1]))
    return months


def partition_name(month: int) -> str:
    return f"{MESSAGES}_m{month:06d}"


def missing_partition(exc: BaseException) -> int | None:
    """The month of a row PostgreSQL found no partition for (SQLSTATE 23514), else ``None``."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) != "23514":
        return None
    diag = getattr(orig, "diag", None)
    detail = getattr(diag, "message_detail", None) or str(orig)
    if "no partition" not in str(orig):
        return None
    found = _FAILING_MONTH.search(detail)
    return int(found.group(1)) if found else None


def ranges(conn: sa.Connection) -> list[PartitionRange]:
    """Every partition of the messages table with its bounds, oldest first."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:parent)"
        ),
        {"parent": MESSAGES},
    ).all()
    found = []
    for name, bound, tuples in rows:
        match = _BOUND.search(bound or "")
        if match:
            found.append(
                PartitionRange(name, int(match.group(1)), int(match.group(2)), float(tuples))
            )
    return sorted(found, key=lambda r: r.low)


def covering(known: Iterable[PartitionRange], month: int) -> PartitionRange | None:
    return next((r for r in known if r.holds(month)), None)


def analyze(conn: sa.Connection, name: str) -> None:
    conn.execute(sa.text(f'ANALYZE "{name}"'))


def ensure(conn: sa.Connection, months: Iterable[int]) -> list[str]:
    """Create (and analyse) a partition for each of ``months`` none covers; their names.

    ``conn`` must autocommit: each ``CREATE`` is then its own short
    transaction, holding the parent's lock only while it runs, and a failed
    one leaves the connection usable. A partition a concurrent process
    created first is taken as it is and not reported: the ``CREATE`` has no
    ``IF NOT EXISTS``, which would succeed silently on the other's table.
    """
    known = ranges(conn)
    created = []
    for month in sorted(set(months)):
        if covering(known, month) is not None:
            continue
        name = partition_name(month)
        try:
            conn.execute(
                sa.text(
                    f'CREATE TABLE "{name}" PARTITION OF {MESSAGES} '
                    f"FOR VALUES FROM ({month}) TO ({next_month(month)})"
                )
            )
        except sa.exc.DBAPIError as exc:
            if not _lost_race(exc):
                raise
            known = ranges(conn)
            continue
        analyze(conn, name)
        created.append(name)
        known = [*known, PartitionRange(name, month, next_month(month))]
    return created


def _lost_race(exc: sa.exc.DBAPIError) -> bool:
    """Whether a failed ``CREATE`` lost a race to another creator (then nothing is wrong)."""
    state: Any = getattr(exc.orig, "sqlstate", None)
    # duplicate table, a duplicate catalog row (two CREATEs at once), an overlap
    return state in ("42P07", "23505", "42P17")
