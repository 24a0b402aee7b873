"""The ``tieredstore`` command line: demo, migrate, and operator commands."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import click

from tieredstore.cli_common import (
    build_store,
    check_settings,
    emit_json,
    one_line,
    option_label,
    server_env,
    server_options,
)
from tieredstore.errors import TieredStoreError

__all__ = ["main"]


_debug = False


@click.group()
@click.version_option(package_name="tieredstore")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
@server_options()
def cli(debug: bool) -> None:
    """Conversation state for LLM apps: memory, Redis and an archive behind one API.

    The servers come from --redis-url, --database-url and --namespace (here or
    after the command) or else the TIEREDSTORE_* variables; with no URL at all,
    the embedded default (memory + SQLite in the data directory).
    """
    global _debug
    _debug = debug


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document: the reads, the messages and the statistics.")
@server_options()
def demo(as_json: bool) -> None:
    """Save, append and load a conversation, showing which tier served each read.

    With no Redis or database URL given it runs on the embedded default
    (memory + SQLite in the data directory): no server needed.
    """
    from tieredstore import Message

    say: Callable[[str], None] = (lambda line: None) if as_json else click.echo
    store = build_store()
    sid = f"demo-{uuid.uuid4().hex[:8]}"
    reads: list[dict[str, Any]] = []
    try:
        say(f"tiers: {' -> '.join(store.stats()['tiers'])} (durability={store.durability})")
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
            reads.append({"read": attempt, "messages": session.message_count,
                          "version": session.version, "tier": session.tier,
                          "micros": round(micros, 1)})
            say(f"read {attempt}: {session.message_count} messages, "
                f"version {session.version}, served by {session.tier} in {micros:.0f} µs")
        messages = store.load(sid)
        for message in messages:
            say(f"  {message.role:>9}: {message.content}")
        stats = store.stats()
        if as_json:
            emit_json({"session_id": sid, "tiers": stats["tiers"],
                       "durability": store.durability, "reads": reads,
                       "messages": [dict(m) for m in messages], "stats": stats})
        else:
            for tier in ("memory", "redis", "archive"):
                if tier in stats["tiers"]:
                    click.echo(f"{tier:>8}: {_fmt(stats[tier])}")
        store.delete(sid)
    except TieredStoreError as exc:
        raise click.ClickException(one_line(exc)) from exc
    finally:
        store.close()


def _fmt(values: dict[str, Any]) -> str:
    # A nested group (a tier's circuit breaker) shows its state only.
    return ", ".join(
        f"{k}={v.get('state', v) if isinstance(v, dict) else v}" for k, v in values.items()
    )


@cli.command()
@click.option("--revision", default="head", show_default=True)
@server_options("database_url")
def migrate(revision: str) -> None:
    """Upgrade the archive schema (Alembic) to REVISION; print the revision reached.

    Never downgrades: a REVISION older than the archive's is refused.
    """
    import sqlalchemy as sa
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from tieredstore.migration import config, current_revision
    from tieredstore.migration import migrate as run

    database_url = server_env().get("TIEREDSTORE_DATABASE_URL")
    if not database_url:
        raise click.UsageError(
            "no archive to migrate: give --database-url or set TIEREDSTORE_DATABASE_URL")
    check_settings("TIEREDSTORE_DATABASE_URL")
    where = option_label("database_url")
    _sqlite_directory(database_url, where)
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
        raise click.ClickException(f"{where}: {one_line(exc)}") from exc
    click.echo(f"archive at {reached}")


def _sqlite_directory(url: str, where: str) -> None:
    """Refuse a SQLite file whose directory is missing (SQLite makes the file, not the folder)."""
    from pathlib import Path

    from tieredstore.schema import normalize_url

    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(str(parsed.database)).expanduser().parent
        if not folder.is_dir():
            raise click.ClickException(f"{where}: directory {str(folder)!r} does not exist "
                                       "(SQLite creates the file, not its directory)")


@cli.group()
@server_options()
def maintain() -> None:
    """Run a maintenance task once, as the worker does (see the README's operations section).

    The store comes from the server options and the TIEREDSTORE_* variables.
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
    return server_options()(fn)


def _run_maintenance(task: Callable[..., Any], as_json: bool, archive_for: str | None = None,
                     **kwargs: Any) -> None:
    """Run ``task`` on the store from the options and the environment, with a progress
    bar on stderr. ``archive_for`` names a task that works on the archive only: a store
    without one is refused rather than left to do nothing."""
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

    store = build_store(memory_max_bytes=None, listen=False)
    if archive_for is not None and store.archive is None:
        store.close()
        raise click.ClickException(f"maintain {archive_for} needs an archive: give "
                                   "--database-url or set TIEREDSTORE_DATABASE_URL")
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

    _run_maintenance(retain, as_json, archive_for="retain", **kwargs)


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
@server_options()
def maintain_partitions(as_json: bool, ahead: int, analyze: bool) -> None:
    """Create the archive's monthly partitions ahead of time and refresh its statistics."""
    from tieredstore.maintenance import partitions

    def task(store: Any, progress: Any, batch_size: int) -> Any:
        return partitions(store, ahead=ahead, analyze=analyze)

    _run_maintenance(task, as_json, archive_for="partitions", batch_size=1)


def _register_archive_commands() -> None:
    from tieredstore.cli_archive import register

    register(cli)


_register_archive_commands()


def main() -> None:
    """Console-script entry point: every error is one line on stderr (``--debug``: a traceback)."""
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
    except TieredStoreError as exc:
        if _debug:
            raise
        click.echo(f"Error: {one_line(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:
        if _debug:
            raise
        click.echo(f"Error: {type(exc).__name__}: {one_line(exc)} (--debug shows where)",
                   err=True)
        sys.exit(1)
