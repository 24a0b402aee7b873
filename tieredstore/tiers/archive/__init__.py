"""The archive tier: the durable store on PostgreSQL or SQLite (see :mod:`.store`)."""

from tieredstore.tiers.archive.store import (
    ArchiveCopy,
    ArchiveShared,
    ArchiveStore,
    AsyncArchiveStore,
    PreparedCopies,
    Reconciled,
    create_async_engine,
    create_engine,
)

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
