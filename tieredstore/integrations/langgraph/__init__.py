"""LangGraph checkpoints on the tiers (``pip install 'tieredstore[langgraph]'``).

:class:`TieredCheckpointSaver` is a LangGraph ``BaseCheckpointSaver`` (sync
and async): the newest checkpoints of each thread and their pending writes
hot in Redis (and an optional memory tier), older checkpoints and idle
threads archived into PostgreSQL or SQLite by the worker
(:func:`~tieredstore.integrations.langgraph.maintenance.maintain_checkpoints`),
read back and promoted on demand; a TTL per thread, retention by the worker,
and ``delete_thread`` from every tier.

The storage modules (:mod:`.keys`, :mod:`.records`, :mod:`.hot`,
:mod:`.cold`, :mod:`.tiers`, :mod:`.maintenance`) do not import LangGraph,
so the worker maintains checkpoints without it; only :mod:`.saver` does,
and it is imported on first use of :class:`TieredCheckpointSaver`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tieredstore.integrations.langgraph.saver import DEFAULT_WINDOW, TieredCheckpointSaver

__all__ = ["DEFAULT_WINDOW", "TieredCheckpointSaver"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tieredstore.integrations.langgraph import saver

        return getattr(saver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
