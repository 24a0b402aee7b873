""":class:`ArchiveShared`: the archive tier's I/O-free plans, joined for both shells."""

from __future__ import annotations

from tieredstore.tiers.archive.copies import ArchiveCopies
from tieredstore.tiers.archive.reads import ArchiveReads
from tieredstore.tiers.archive.retention import ArchiveRetention
from tieredstore.tiers.archive.upkeep import ArchiveUpkeep
from tieredstore.tiers.archive.writes import ArchiveWrites


class ArchiveShared(ArchiveReads, ArchiveWrites, ArchiveCopies, ArchiveUpkeep, ArchiveRetention):
    """Everything of the archive tier but its I/O, shared by the sync and async stores.

    The per-operation database work (``work(conn)`` functions on a
    synchronous :class:`sqlalchemy.Connection`) is written once, as plans
    (see :mod:`tieredstore.plans`) that yield ``Op("db", "_in_transaction",
    (work, role))``. The mixins hold them by concept (:mod:`.reads`,
    :mod:`.writes`, :mod:`.copies`, :mod:`.upkeep`, :mod:`.retention`), on
    :class:`~.base.ArchiveBase`, which holds the retry policy; the statements
    are in :mod:`.statements`. :class:`ArchiveStore` runs each ``work`` in
    ``engine.begin()``; :class:`AsyncArchiveStore` runs the very same
    function through ``AsyncConnection.run_sync``. ``role`` picks the engine
    variant: ``single`` (one statement), ``reader`` (one snapshot),
    ``writer`` (a locking transaction).
    """
