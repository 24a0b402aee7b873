"""The archive tier: the durable store, on PostgreSQL (psycopg 3) or SQLite via SQLAlchemy 2.

* :mod:`.statements` — the SQL statements, built once; :mod:`.engines` —
  engines for the tier and the SQLite ``begin`` hook.
* :mod:`.rows` — messages into rows and back (search text, column arrays,
  trims, metadata); :mod:`.records` — what other tiers hand over and get
  back (:class:`ArchiveCopy`, :class:`PreparedCopies`, :class:`Reconciled`).
* :mod:`.base` — what every plan builds on: setup, the transaction loop
  with its retries, the row primitives.
* :mod:`.reads`, :mod:`.writes`, :mod:`.copies`, :mod:`.upkeep`,
  :mod:`.retention` — the I/O-free plans (reads; writes; other tiers'
  copies applied by seq; reconciliation and maintenance; retention and
  partition upkeep); :mod:`.shared` joins them into :class:`ArchiveShared`.
* :mod:`.partitions` — the monthly partitions of the messages table on
  PostgreSQL: months, bounds, creation on demand and ahead.
* :mod:`.store`, :mod:`.aio_store` — the sync and asyncio shells that drive
  the plans (:class:`ArchiveStore`, :class:`AsyncArchiveStore`).

One row per session in ``tieredstore_sessions`` and one row per message in
``tieredstore_messages`` (see :mod:`tieredstore.schema`), partitioned by
month on PostgreSQL; a message row holds the message's exact encoded bytes,
so it loads back unchanged. The tables come
only from the Alembic migrations: run :func:`tieredstore.migrate` first.

Every write locks the session row before it touches messages, so concurrent
appends to one session serialise and never lose or reorder messages. On
PostgreSQL an append to a live session is a single statement (``UPDATE ...
RETURNING`` feeding an ``INSERT`` in one CTE, outside any transaction), so the
row lock is held only while the server runs it; everything else is one
transaction starting with ``SELECT ... FOR UPDATE``. Reads of several
statements run in a ``REPEATABLE READ`` snapshot. On SQLite writes run in
``BEGIN IMMEDIATE`` transactions and reads in one deferred transaction (a
snapshot in WAL mode).

On SQLite the store adds a ``begin`` hook to the engine: each connection gets
WAL, ``busy_timeout``, ``synchronous=NORMAL`` and enforced foreign keys, and
SQLAlchemy (not the ``sqlite3`` module) emits ``BEGIN``.

Seqs number a session's messages for life (see :mod:`tieredstore.tiers.transfer`);
besides the store contract, the methods under "the tiered layer" return write
receipts and snapshots, and apply writes made in another tier by seq.
"""

from tieredstore.tiers.archive.aio_store import AsyncArchiveStore
from tieredstore.tiers.archive.engines import create_async_engine, create_engine
from tieredstore.tiers.archive.records import ArchiveCopy, PreparedCopies, Reconciled
from tieredstore.tiers.archive.shared import ArchiveShared
from tieredstore.tiers.archive.store import ArchiveStore

__all__ = [
    "ArchiveCopy",
    "ArchiveShared",
    "ArchiveStore",
    "AsyncArchiveStore",
    "PreparedCopies",
    "Reconciled",
    "create_async_engine",
    "create_engine",
]
