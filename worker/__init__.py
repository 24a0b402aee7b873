"""tieredstore's maintenance worker: ``celery -A tieredstore.worker worker`` (and ``beat``).

Configured entirely by ``TIEREDSTORE_*`` environment variables (see the
README's operations section); ``tasks`` holds the tasks and ``schedule``
the beat schedule. The wheel installs this folder as ``tieredstore.worker``
(never as a top-level ``worker``, which an application may have), so its
modules import each other relatively.
"""

from .app import app, create_app

__all__ = ["app", "create_app"]
