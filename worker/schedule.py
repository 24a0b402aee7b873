"""The beat schedule: one named entry per maintenance task, intervals from settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tieredstore.integrations.langgraph.maintenance import CheckpointSettings
from tieredstore.maintenance import MaintenanceSettings

__all__ = ["TASKS", "beat_schedule"]

TASKS: dict[str, str] = {
    "tieredstore-expire": "tieredstore.expire",
    "tieredstore-archive-idle": "tieredstore.archive_idle",
    "tieredstore-trim": "tieredstore.trim",
    "tieredstore-reconcile": "tieredstore.reconcile",
    "tieredstore-retain": "tieredstore.retain",
    "tieredstore-partitions": "tieredstore.partitions",
    "tieredstore-checkpoints": "tieredstore.checkpoints",
}
"""Beat entry name -> Celery task name."""


def beat_schedule(settings: MaintenanceSettings, queue: str,
                  checkpoints: CheckpointSettings | None = None) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule``: each task every its interval, on ``queue``.

    A message not started within one interval expires unrun (the next tick
    sends another), so a stalled worker never comes back to a backlog.
    ``retain`` is scheduled only when a retention period is set; the
    LangGraph ``checkpoints`` task when its settings are given.
    """
    intervals = {
        "tieredstore-expire": settings.expire_interval,
        "tieredstore-archive-idle": settings.archive_interval,
        "tieredstore-trim": settings.trim_interval,
        "tieredstore-reconcile": settings.reconcile_interval,
        "tieredstore-partitions": settings.partitions_interval,
    }
    if settings.retention_days is not None:
        intervals["tieredstore-retain"] = settings.retain_interval
    if checkpoints is not None:
        intervals["tieredstore-checkpoints"] = checkpoints.interval
    return {
        entry: {
            "task": TASKS[entry],
            "schedule": timedelta(seconds=seconds),
            "options": {"queue": queue, "expires": seconds},
        }
        for entry, seconds in intervals.items()
    }
