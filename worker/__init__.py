"""tieredstore's maintenance worker: ``celery -A worker worker`` and ``celery -A worker beat``.

Configured entirely by ``TIEREDSTORE_*`` environment variables (see the
README's operations section); :mod:`worker.tasks` holds the tasks and
:mod:`worker.schedule` the beat schedule.
"""

from worker.app import app, create_app

__all__ = ["app", "create_app"]
