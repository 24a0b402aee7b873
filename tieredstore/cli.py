"""The ``tieredstore`` command line: demo, migrate, and operator commands."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import click

from tieredstore.errors import TieredStoreError

__all__ = ["main"]


@click.group()
@click.version_option(package_name="tieredstore")
def cli() -> None:
    """Conversation state for LLM apps: memory, Redis and an archive behind one API."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the final statistics as JSON.")
def demo(as_json: bool) -> None:
    """Save, append and load a conversation, showing which tier served each read.

    With no TIEREDSTORE_REDIS_URL / TIEREDSTORE_DATABASE_URL set it runs on the
    embedded default (memory + SQLite in the data directory): no server needed.
    """
    from tieredstore import Message
    from tieredstore.store import TieredStore

    store = TieredStore.from_env()
    sid = f"demo-{uuid.uuid4().hex[:8]}"
    try:
        click.echo(f"tiers: {' -> '.join(store.stats()['tiers'])} (durability={store.durability})")
        store.save(sid, [Message("system", "You are a helpful assistant."),
                         Message("user", "What is the capital of France?")],
                   metadata={"title": "Geography"}, user_id="demo-user")
        store.append(sid, Message("assistant", "Paris."))
        for attempt in (1, 2):
            started = time.perf_counter()
            session = store.get(sid)
            micros = (time.perf_counter() - started) * 1e6
            click.echo(f"read {attempt}: {session.message_count} messages, "
                       f"version {session.version}, served by {session.tier} in {micros:.0f} µs")
        for message in store.load(sid):
            click.echo(f"  {message.role:>9}: {message.content}")
        stats = store.stats()
        if as_json:
            click.echo(json.dumps(stats, default=str))
        else:
            for tier in ("memory", "redis", "archive"):
                if tier in stats["tiers"]:
                    click.echo(f"{tier:>8}: {_fmt(stats[tier])}")
        store.delete(sid)
    except TieredStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


@cli.command()
@click.option("--database-url", envvar="TIEREDSTORE_DATABASE_URL", required=True,
              help="Archive database URL (or TIEREDSTORE_DATABASE_URL).")
@click.option("--revision", default="head", show_default=True)
def migrate(database_url: str, revision: str) -> None:
    """Upgrade the archive schema (Alembic) to REVISION."""
    from tieredstore.migration import migrate as run

    try:
        run(database_url, revision=revision)
    except TieredStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"archive at {revision}")


def main() -> None:
    """Console-script entry point."""
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
