"""What the ``tieredstore`` commands share: server options, the store, output.

``--redis-url``, ``--database-url`` and ``--namespace`` are accepted by the
``tieredstore`` group and by every command that talks to a server, so both
``tieredstore --redis-url URL show ID`` and ``tieredstore show --redis-url URL
ID`` work; an option overrides its ``TIEREDSTORE_*`` variable, and a
command's option overrides the group's. The values are kept in the root
click context, so nothing global changes between invocations.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tieredstore.errors import SessionNotFound, TieredStoreError

if TYPE_CHECKING:
    from tieredstore.query import ArchiveQuery
    from tieredstore.store import TieredStore

__all__ = [
    "EXIT_NOT_FOUND",
    "SERVER_OPTIONS",
    "NotFound",
    "archive_query",
    "build_store",
    "check_settings",
    "console",
    "emit_json",
    "given_servers",
    "one_line",
    "open_store",
    "option_label",
    "progress",
    "server_env",
    "server_options",
    "store_overrides",
]

EXIT_NOT_FOUND = 3

F = TypeVar("F", bound=Callable[..., Any])

#: The server options: keyword of ``TieredStore.from_url`` -> (option, variable, help).
SERVER_OPTIONS: dict[str, tuple[str, str, str]] = {
    "redis_url": ("--redis-url", "TIEREDSTORE_REDIS_URL",
                  "Redis URL of the hot tier ('' for none)."),
    "database_url": ("--database-url", "TIEREDSTORE_DATABASE_URL",
                     "Archive database URL ('' for none)."),
    "namespace": ("--namespace", "TIEREDSTORE_NAMESPACE",
                  "Namespace (tenant) of the sessions."),
}
_META_KEY = "tieredstore.servers"


class NotFound(click.ClickException):
    """A session that is not there: exit code 3."""

    exit_code = EXIT_NOT_FOUND


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None and param.name is not None:
        ctx.find_root().meta.setdefault(_META_KEY, {})[param.name] = value


def server_options(*names: str) -> Callable[[F], F]:
    """Add the server options ``names`` (default: all three) to a command or group."""

    def decorate(fn: F) -> F:
        for name in reversed(names or tuple(SERVER_OPTIONS)):
            flag, variable, text = SERVER_OPTIONS[name]
            fn = click.option(
                flag, name, default=None, expose_value=False, callback=_remember,
                metavar="URL" if name.endswith("_url") else "NAME",
                help=f"{text} Overrides {variable}.",
            )(fn)
        return fn

    return decorate


def given_servers() -> dict[str, str]:
    """The server options given on the command line (keyword -> value)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    return dict(ctx.find_root().meta.get(_META_KEY, {}))


def server_env() -> dict[str, str]:
    """The process environment with the given server options applied to their variables."""
    env = dict(os.environ)
    for name, value in given_servers().items():
        env[SERVER_OPTIONS[name][1]] = value
    return env


def store_overrides() -> dict[str, Any]:
    """``TieredStore.from_env`` keywords for the given server options (``''``: no tier)."""
    return {name: (value or None) if name.endswith("_url") else value
            for name, value in given_servers().items()}


def option_label(name: str) -> str:
    """How to name server setting ``name`` in an error: its option if given, else its variable."""
    flag, variable, _ = SERVER_OPTIONS[name]
    return flag if name in given_servers() else variable


def check_settings(*variables: str) -> None:
    """Refuse a store setting (default: every one) the store could not use, naming the
    option or variable at fault, before anything is built."""
    from tieredstore.config import SETTINGS, check_setting

    env = server_env()
    labels = {variable: option_label(name) for name, (_, variable, _) in SERVER_OPTIONS.items()}
    for setting in SETTINGS:
        if (setting.name in variables if variables else setting.scope == "store"):
            raw = env.get(setting.name)
            problem = check_setting(setting, raw, labels.get(setting.name)) if raw else None
            if problem:
                raise click.ClickException(problem)


def build_store(**options: Any) -> TieredStore:
    """``TieredStore.from_env`` with the server options applied; errors become one line.

    A failure to make the embedded archive (neither URL set) names
    ``TIEREDSTORE_DATA_DIR``, the setting an operator has to fix.
    """
    import sqlalchemy as sa

    from tieredstore.store import TieredStore
    from tieredstore.tiered_shell import default_data_dir

    check_settings()
    env = server_env()
    embedded = not env.get("TIEREDSTORE_REDIS_URL") and not env.get("TIEREDSTORE_DATABASE_URL")
    try:
        return TieredStore.from_env(**{**options, **store_overrides()})
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        if embedded:
            raise click.ClickException(
                f"TIEREDSTORE_DATA_DIR: cannot keep the embedded archive in "
                f"{str(default_data_dir())!r}: {one_line(exc)}") from exc
        raise click.ClickException(f"{option_label('database_url')}: {one_line(exc)}") from exc
    except (TieredStoreError, ValueError) as exc:
        raise click.ClickException(one_line(exc)) from exc


@contextmanager
def open_store(*, memory: bool = False, **options: Any) -> Iterator[TieredStore]:
    """The store from the options and the environment; its errors become one-line CLI errors.

    No invalidation listener (a command's store lives for one command) and,
    unless ``memory``, no memory tier: every read goes to the servers.
    """
    store: TieredStore | None = None
    try:
        overrides: dict[str, Any] = {"listen": False, **options}
        if not memory:
            overrides["memory_max_bytes"] = None
        store = build_store(**overrides)
        yield store
    except SessionNotFound as exc:
        raise NotFound(f"session not found: {exc.session_id!r}") from exc
    except TieredStoreError as exc:
        raise click.ClickException(one_line(exc)) from exc
    except (OSError, ValueError) as exc:  # driver errors that escaped translation, bad URLs
        raise click.ClickException(one_line(exc)) from exc
    finally:
        if store is not None:
            with suppress(Exception):  # closing must not hide the real error
                store.close()


def one_line(exc: BaseException) -> str:
    """The first line of an error's text (its type's name if it has none)."""
    text = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def archive_query(store: TieredStore) -> ArchiveQuery:
    """An :class:`ArchiveQuery` on the store's archive, or a CLI error without one."""
    from tieredstore.query import ArchiveQuery

    if store.archive is None:
        raise click.ClickException(
            "no archive configured (give --database-url or set TIEREDSTORE_DATABASE_URL)")
    return ArchiveQuery(store.archive)


def emit_json(value: Any) -> None:
    """Print ``value`` as one JSON document on stdout."""
    click.echo(json.dumps(value, default=str, ensure_ascii=False))


def console(stderr: bool = False) -> Any:
    """A rich console; piped output is not cut to a terminal's width (ids stay whole)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 100_000
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


@contextmanager
def progress(label: str, unit: str, enabled: bool = True, total: int | None = None,
             ) -> Iterator[Callable[[int], None]]:
    """A rich progress display on stderr (only on a terminal); yields ``update(count)``.

    With a ``total`` it is a bar; without, a running count of ``unit``.
    """
    if not enabled or not sys.stderr.isatty():
        yield lambda count: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is None:
        columns.append(TextColumn("{task.completed:,} " + unit))
    else:
        columns += [BarColumn(), MofNCompleteColumn(), TextColumn(unit)]
    with Progress(*columns, TimeElapsedColumn(), console=console(stderr=True),
                  transient=True) as display:
        task = display.add_task(label, total=total)
        yield lambda count: display.update(task, completed=count)
