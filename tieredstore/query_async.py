"""``AsyncArchiveQuery``: the asyncio twin of :class:`tieredstore.query.ArchiveQuery`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from tieredstore.jsonl import ExportLines
from tieredstore.query import ArchiveQuery, BoundQuery, translate_error
from tieredstore.query_results import SearchPage, SessionPage
from tieredstore.schema import normalize_url

__all__ = ["AsyncArchiveQuery"]

T = TypeVar("T")


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
            return method(BoundQuery(self.sync, conn), *args, **kwargs)

        try:
            async with self.engine.connect() as conn:
                return await conn.run_sync(work)
        except sa.exc.SQLAlchemyError as exc:
            raise translate_error(self.sync.engine, exc) from exc

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

    async def explain(self, text: str | None = None, **filters: Any) -> str:
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
            raise translate_error(self.sync.engine, exc) from exc
