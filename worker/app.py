"""The Celery application, configured from ``TIEREDSTORE_*`` environment variables.

The broker defaults to the store's Redis (``TIEREDSTORE_REDIS_URL``); any
Celery broker URL works (``amqp://`` for RabbitMQ). Celery's Redis transport
cannot use a Redis Cluster: with a ``redis+cluster://`` store URL, set
``TIEREDSTORE_BROKER_URL`` to another broker. Tasks acknowledge late
and are requeued when their worker dies, so a killed run is retried; they
are idempotent, so a retry is harmless. The worker warns at start about a
missing tier and serves metrics when asked (see :mod:`.monitoring`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from celery import Celery

from tieredstore.errors import ConfigurationError
from tieredstore.integrations.langgraph.maintenance import CheckpointSettings
from tieredstore.maintenance import MaintenanceSettings

from .monitoring import connect, metrics_address
from .schedule import beat_schedule

__all__ = ["app", "broker_url", "create_app", "queue_name"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def broker_url(env: Mapping[str, str]) -> str:
    """The broker: ``TIEREDSTORE_BROKER_URL``, else the store's (standalone) Redis."""
    explicit = env.get("TIEREDSTORE_BROKER_URL")
    if explicit:
        return explicit
    store = env.get("TIEREDSTORE_REDIS_URL") or DEFAULT_REDIS_URL
    if "+cluster://" in store.split("?", 1)[0]:
        raise ConfigurationError(
            "celery", "a Redis Cluster cannot be Celery's broker: set TIEREDSTORE_BROKER_URL "
            "(for example amqp://... or a standalone redis://...)")
    return store


def queue_name(env: Mapping[str, str]) -> str:
    return env.get("TIEREDSTORE_QUEUE") or "tieredstore"


def create_app(env: Mapping[str, str] | None = None) -> Celery:
    """A Celery app for the settings in ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    settings = MaintenanceSettings.from_env(env)
    checkpoints = CheckpointSettings.from_env(env)
    metrics_address(env)  # a bad TIEREDSTORE_METRICS_PORT fails the start, naming it
    queue = queue_name(env)
    app = Celery("tieredstore", broker=broker_url(env), include=[f"{__package__}.tasks"])
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Redis/SQS brokers: an unacknowledged task (its worker died) is
        # delivered again after this many seconds.
        broker_transport_options={
            "visibility_timeout": float(env.get("TIEREDSTORE_VISIBILITY_TIMEOUT") or 3600),
        },
        beat_schedule=beat_schedule(settings, queue, checkpoints),
        timezone="UTC",
        enable_utc=True,
    )
    connect()
    return app


app = create_app()
