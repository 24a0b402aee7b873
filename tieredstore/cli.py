"""The ``tieredstore`` command line: demo, migrate, and operator commands."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import click

from tieredstore.errors import TieredStoreError

__all__ = ["main"]


_debug = False


@click.group()
@click.version_option(package_name="tieredstore")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def cli(debug: bool) -> None:
    """Conversation state for LLM apps: memory, Redis and an archive behind one API."""
    global _debug
    _debug = debug


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
        store.save(
            sid,
            [
                Message("system", "You are a helpful assistant."),
                Message("user", "What is the capital of France?"),
            ],
            metadata={"title": "Geography"},
            user_id="demo-user",
        )
        store.append(sid, Message("assistant", "Paris."))
        for attempt in (1, 2):
            started = time.perf_counter()
            session = store.get(sid)
            micros = (time.perf_counter() - started) * 1e6
            click.echo(
                f"read {attempt}: {session.message_count} messages, "
                f"version {session.version}, served by {session.tier} in {micros:.0f} µs"
            )
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
    # A nested group (a tier's circuit breaker) shows its state only.
    return ", ".join(
        f"{k}={v.get('state', v) if isinstance(v, dict) else v}" for k, v in values.items()
    )


@cli.command()
@click.option(
    "--database-url",
    envvar="TIEREDSTORE_DATABASE_URL",
    required=True,
    help="Archive database URL (or TIEREDSTORE_DATABASE_URL).",
)
@click.option("--revision", default="head", show_default=True)
def migrate(database_url: str, revision: str) -> None:
    """Upgrade the archive schema (Alembic) to REVISION; print the revision reached.

    Never downgrades: a REVISION older than the archive's is refused.
    """
    import sqlalchemy as sa
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from tieredstore.migration import config, current_revision
    from tieredstore.migration import migrate as run

    try:
        script = ScriptDirectory.from_config(config())
        try:
            wanted = script.get_revision(revision)
        except CommandError as exc:
            raise click.BadParameter(str(exc), param_hint="--revision") from None
        now = current_revision(database_url)
        if now is not None and wanted is not None and wanted.revision != now and any(
                r.revision == wanted.revision for r in script.iterate_revisions(now, "base")):
            raise click.ClickException(
                f"the archive is at {now}; --revision {revision} is older and migrate only "
                "upgrades (use tieredstore.migration.downgrade to go back)")
        run(database_url, revision=revision)
        reached = current_revision(database_url)
    except TieredStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except CommandError as exc:
        raise click.ClickException(f"migration failed: {exc}") from exc
    except (sa.exc.SQLAlchemyError, OSError) as exc:  # a server that refuses
        raise click.ClickException(f"--database-url: {_first_line(exc)}") from exc
    click.echo(f"archive at {reached}")


@cli.group()
def maintain() -> None:
    """Run a maintenance task once, as the worker does (see the README's operations section).

    The store comes from the TIEREDSTORE_* environment variables.
    """


def _maintenance_options(fn: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option("--dry-run", is_flag=True, help="Count what would change; change nothing."),
        click.option(
            "--batch-size",
            type=click.IntRange(1, 100_000),
            default=500,
            show_default=True,
            help="Sessions per batch (one transaction/script each).",
        ),
        click.option(
            "--max-batches",
            type=click.IntRange(1),
            default=None,
            help="Stop after this many batches (default: until done).",
        ),
        click.option(
            "--time-budget",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Stop starting batches after this many seconds.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_maintenance(task: Callable[..., Any], as_json: bool, **kwargs: Any) -> None:
    """Run ``task`` on the store from the environment with a progress bar on stderr."""
    from tieredstore.store import TieredStore

    bar: Any = None
    shown = 0

    def progress(done: int, total: int) -> None:
        nonlocal bar, shown
        if bar is None:
            if as_json or not sys.stderr.isatty() or total <= kwargs["batch_size"]:
                return
            bar = click.progressbar(length=total, label="sessions", file=sys.stderr)
            bar.__enter__()
        bar.length = max(bar.length or 0, total)
        bar.update(done - shown)
        shown = done

    store = TieredStore.from_env(memory_max_bytes=None, listen=False)
    try:
        result = task(store, progress=progress, **kwargs)
    except TieredStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
        store.close()
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(_fmt(result.as_dict()))


@maintain.command("expire")
@_maintenance_options
def maintain_expire(as_json: bool, **kwargs: Any) -> None:
    """Remove expired sessions from Redis and the archive; repair the Redis index."""
    from tieredstore.maintenance import expire

    _run_maintenance(expire, as_json, **kwargs)


@maintain.command("archive")
@click.option(
    "--archive-after",
    type=click.FloatRange(min=0),
    envvar="TIEREDSTORE_ARCHIVE_AFTER",
    default=3600.0,
    show_default=True,
    help="Archive sessions idle this many seconds (or TIEREDSTORE_ARCHIVE_AFTER).",
)
@_maintenance_options
def maintain_archive(as_json: bool, **kwargs: Any) -> None:
    """Copy idle sessions from Redis to the archive, then evict the unchanged ones."""
    from tieredstore.maintenance import archive_idle

    _run_maintenance(archive_idle, as_json, **kwargs)


@maintain.command("trim")
@click.option(
    "--max-messages",
    type=click.IntRange(1),
    default=None,
    help="Message limit (default: TIEREDSTORE_MAX_MESSAGES).",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(1),
    envvar="TIEREDSTORE_TRIM_MAX_BYTES",
    default=None,
    help="Byte limit per session (or TIEREDSTORE_TRIM_MAX_BYTES).",
)
@click.option(
    "--keep-trimmed/--drop-trimmed",
    default=None,
    help="Keep trimmed messages in the archive (default: when there is one).",
)
@_maintenance_options
def maintain_trim(as_json: bool, **kwargs: Any) -> None:
    """Enforce the message and byte limits on hot and archived sessions."""
    from tieredstore.maintenance import trim

    _run_maintenance(trim, as_json, **kwargs)


@maintain.command("reconcile")
@_maintenance_options
def maintain_reconcile(as_json: bool, **kwargs: Any) -> None:
    """After an outage (write_through): reconcile detached sessions, drain outboxes."""
    from tieredstore.maintenance import reconcile

    _run_maintenance(reconcile, as_json, **kwargs)


@maintain.command("retain")
@click.option(
    "--retention-days",
    type=click.FloatRange(min=0, min_open=True),
    envvar="TIEREDSTORE_RETENTION_DAYS",
    required=True,
    help="Keep sessions active within this many days (or TIEREDSTORE_RETENTION_DAYS).",
)
@_maintenance_options
def maintain_retain(as_json: bool, **kwargs: Any) -> None:
    """Delete archived sessions past retention: whole months first, the rest by batch.

    Sessions on legal hold (metadata "legal_hold": true) are never deleted.
    """
    from tieredstore.maintenance import retain

    _run_maintenance(retain, as_json, **kwargs)


@maintain.command("partitions")
@click.option(
    "--ahead",
    type=click.IntRange(0, 120),
    envvar="TIEREDSTORE_PARTITIONS_AHEAD",
    default=3,
    show_default=True,
    help="Months after this one to create partitions for.",
)
@click.option("--no-analyze", "analyze", flag_value=False, default=True,
              help="Do not ANALYZE the archive tables afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def maintain_partitions(as_json: bool, ahead: int, analyze: bool) -> None:
    """Create the archive's monthly partitions ahead of time and refresh its statistics."""
    from tieredstore.maintenance import partitions

    def task(store: Any, progress: Any, batch_size: int) -> Any:
        return partitions(store, ahead=ahead, analyze=analyze)

    _run_maintenance(task, as_json, batch_size=1)


def _register_archive_commands() -> None:
    from tieredstore.cli_archive import register

    register(cli)


_register_archive_commands()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main() -> None:
    """Console-script entry point: every error is one line on stderr (``--debug``: a traceback)."""
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
    except TieredStoreError as exc:
        if _debug:
            raise
        click.echo(f"Error: {_first_line(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:
        if _debug:
            raise
        click.echo(f"Error: {type(exc).__name__}: {_first_line(exc)} (--debug shows where)",
                   err=True)
        sys.exit(1)
