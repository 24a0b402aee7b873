"""Operator commands of the ``tieredstore`` CLI: list, show, search, export, import, erase, stats.

:func:`register` adds them to the ``cli`` group of :mod:`tieredstore.cli`. The
store comes from the same ``TIEREDSTORE_*`` variables as
:meth:`TieredStore.from_env`. Read commands take ``--json`` (one JSON document
on stdout); tables and progress bars use rich (progress on stderr, only on a
terminal). Errors are one line on stderr; exit codes: 0 ok, 1 error (server
unreachable, bad input, aborted), 2 usage, 3 session not found.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import click

from tieredstore.errors import SessionNotFound, TieredStoreError

if TYPE_CHECKING:
    from tieredstore.query import ArchiveQuery
    from tieredstore.store import TieredStore

__all__ = ["register"]

EXIT_NOT_FOUND = 3


class NotFound(click.ClickException):
    exit_code = EXIT_NOT_FOUND


@contextmanager
def _store(*, memory: bool = False) -> Iterator[TieredStore]:
    """The store from the environment; tieredstore errors become one-line CLI errors."""
    from tieredstore.store import TieredStore

    store: TieredStore | None = None
    try:
        overrides: dict[str, Any] = {"listen": False}
        if not memory:
            overrides["memory_max_bytes"] = None
        store = TieredStore.from_env(**overrides)
        yield store
    except SessionNotFound as exc:
        raise NotFound(f"session not found: {exc.session_id!r}") from exc
    except TieredStoreError as exc:
        raise click.ClickException(_one_line(exc)) from exc
    except (OSError, ValueError) as exc:  # driver errors that escaped translation, bad URLs
        raise click.ClickException(_one_line(exc)) from exc
    finally:
        if store is not None:
            with suppress(Exception):  # closing must not hide the real error
                store.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _archive(store: TieredStore) -> ArchiveQuery:
    from tieredstore.query import ArchiveQuery

    if store.archive is None:
        raise click.ClickException("no archive configured (set TIEREDSTORE_DATABASE_URL)")
    return ArchiveQuery(store.archive)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str, ensure_ascii=False))


def _console(stderr: bool = False) -> Any:
    """A rich console; piped output is not cut to a terminal's width (ids stay whole)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 100_000
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def _time(value: str | None) -> datetime | float | None:
    """ISO 8601 (naive = UTC) or unix seconds."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"not a time (ISO 8601 or unix seconds): {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _metadata(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (VALUE parsed as JSON when it parses, else a string)."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--metadata")
        try:
            found[key] = json.loads(raw)
        except ValueError:
            found[key] = raw
    return found


def _ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _content(message: Any) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'part')}]")
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False)


def _tool_calls(message: Any) -> str:
    calls = message.get("tool_calls") or []
    shown = []
    for call in calls:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        args = str(function.get("arguments", ""))
        shown.append(f"{function.get('name', '?')}({args[:60]})")
    if message.get("tool_call_id"):
        shown.append(f"→ {message['tool_call_id']}")
    return ", ".join(shown)


def _mark(snippet: str) -> Any:
    from rich.markup import escape
    from rich.text import Text

    markup = escape(snippet).replace("&lt;mark&gt;", "<mark>")
    markup = markup.replace("<mark>", "[bold yellow]").replace("</mark>", "[/bold yellow]")
    return Text.from_markup(markup)


# -- commands ----------------------------------------------------------------------


@click.command("list")
@click.option("--user", "user_id", default=None, help="Only this user's sessions.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
@click.option("--archive", "from_archive", is_flag=True,
              help="Summaries of archived sessions (count, activity, metadata).")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="With --archive: metadata contains KEY=VALUE (repeatable).")
@click.option("--active-since", default=None, help="With --archive: active at/after (ISO/unix).")
@click.option("--active-until", default=None, help="With --archive: active before (ISO/unix).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(user_id: str | None, limit: int, cursor: str | None, from_archive: bool,
                 metadata: tuple[str, ...], active_since: str | None,
                 active_until: str | None, as_json: bool) -> None:
    """List live sessions, most recently active first."""
    with _store() as store:
        if not from_archive:
            if metadata or active_since or active_until:
                raise click.UsageError("--metadata/--active-* need --archive")
            page = store.list(user_id=user_id, limit=limit, cursor=cursor)
            if as_json:
                _emit_json({"ids": page.ids, "next_cursor": page.next_cursor})
                return
            for sid in page.ids:
                click.echo(sid)
            if page.next_cursor:
                click.echo(f"next cursor: {page.next_cursor}", err=True)
            return
        summaries = _archive(store).sessions(
            user_id=user_id, metadata=_metadata(metadata), active_since=_time(active_since),
            active_until=_time(active_until), limit=limit, cursor=cursor)
    if as_json:
        _emit_json({"sessions": [s.as_dict() for s in summaries.sessions],
                    "next_cursor": summaries.next_cursor})
        return
    from rich.table import Table

    table = Table("session", "user", "messages", "first activity", "last activity", "metadata")
    for s in summaries.sessions:
        table.add_row(s.session_id, s.user_id or "-", str(s.message_count),
                      _ms(s.first_activity_ms), _ms(s.last_activity_ms),
                      json.dumps(s.metadata, ensure_ascii=False))
    _console().print(table)
    if summaries.next_cursor:
        click.echo(f"next cursor: {summaries.next_cursor}", err=True)


@click.command("show")
@click.argument("session_id")
@click.option("--last", type=click.IntRange(1), default=None, help="Only the newest N messages.")
@click.option("--full", is_flag=True, help="The whole history, archive included.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(session_id: str, last: int | None, full: bool, as_json: bool) -> None:
    """Show a session's history with roles, tool calls and the tier that served it."""
    with _store() as store:
        session = store.get(session_id, last=last) if last else store.get(session_id)
        messages = list(session.messages)
        if full:
            messages = list(store.history_all(session_id))
    info = {
        "id": session.id, "user_id": session.user_id, "tier": session.tier,
        "version": session.version, "message_count": session.message_count,
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
        "expires_at": session.expires_at.isoformat() if session.expires_at else None,
        "metadata": dict(session.metadata),
    }
    if as_json:
        _emit_json({**info, "messages": [dict(m) for m in messages]})
        return
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{session.id}[/bold]  user={session.user_id or '-'}  "
                  f"tier={session.tier}  version={session.version}  "
                  f"messages={session.message_count}  updated={info['updated_at']}",
                  markup=True)
    if session.metadata:
        console.print(f"metadata: {json.dumps(dict(session.metadata), ensure_ascii=False)}",
                      markup=False)
    table = Table("#", "role", "content", "tool calls")
    for i, message in enumerate(messages):
        table.add_row(str(i), str(message.get("role")), _content(message), _tool_calls(message))
    console.print(table)


@click.command("search")
@click.argument("text", required=False)
@click.option("--user", "user_id", default=None)
@click.option("--role", default=None)
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="Session metadata contains KEY=VALUE (repeatable; VALUE as JSON if it parses).")
@click.option("--since", default=None, help="Messages at/after (ISO 8601 or unix seconds).")
@click.option("--until", default=None, help="Messages before (ISO 8601 or unix seconds).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def search_command(text: str | None, user_id: str | None, role: str | None,
                   metadata: tuple[str, ...], since: str | None, until: str | None,
                   limit: int, cursor: str | None, as_json: bool) -> None:
    """Search archived messages, newest first.

    TEXT: words (all must match), "a phrase", a OR b, -excluded, prefix*.
    """
    with _store() as store:
        page = _archive(store).search(
            text, user_id=user_id, role=role, metadata=_metadata(metadata),
            since=_time(since), until=_time(until), limit=limit, cursor=cursor)
    if as_json:
        _emit_json({"hits": [hit.as_dict() for hit in page.hits],
                    "next_cursor": page.next_cursor})
        return
    from rich.table import Table

    table = Table("session", "seq", "time", "role", "user", "snippet")
    for hit in page.hits:
        table.add_row(hit.session_id, str(hit.seq), _ms(hit.created_ms), hit.role,
                      hit.user_id or "-", _mark(hit.snippet))
    _console().print(table)
    click.echo(f"{len(page.hits)} hit(s)", err=True)
    if page.next_cursor:
        click.echo(f"next cursor: {page.next_cursor}", err=True)


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress display on stderr (only on a terminal); yields ``update(count)``."""
    if not enabled or not sys.stderr.isatty():
        yield lambda count: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                  TextColumn("{task.completed:,} messages"), TimeElapsedColumn(),
                  console=_console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=None)
        yield lambda count: progress.update(task, completed=count)


@click.command("export")
@click.option("--user", "user_id", default=None, help="Every session of this user.")
@click.option("--session", "session_ids", multiple=True, help="A session id (repeatable).")
@click.option("--output", "-o", type=click.File("wb"), default="-", show_default=True,
              help="File to write (default: stdout).")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl",
              show_default=True)
def export_command(user_id: str | None, session_ids: tuple[str, ...], output: IO[bytes],
                   fmt: str) -> None:
    """Stream archived conversations as JSON lines (a session line, then its messages)."""
    if (user_id is None) == (not session_ids):
        raise click.UsageError("give --user or --session (not both)")
    counts = {"sessions": 0, "messages": 0}
    exported: set[str] = set()
    with _store() as store, _progress("exporting", output is not sys.stdout.buffer) as update:
        query = _archive(store)
        for line in query.export(user_id=user_id, session_ids=list(session_ids) or None,
                                 format=fmt):
            output.write(line)
            if line.startswith(b'{"type":"session"'):
                counts["sessions"] += 1
                if session_ids:
                    exported.add(json.loads(line)["session_id"])
            else:
                counts["messages"] += 1
                if counts["messages"] % 1000 == 0:
                    update(counts["messages"])
    output.flush()
    click.echo(f"exported {counts['sessions']} session(s), {counts['messages']} message(s)",
               err=True)
    missing = [sid for sid in dict.fromkeys(session_ids) if sid not in exported]
    if missing:
        raise NotFound(f"not in the archive: {', '.join(repr(sid) for sid in missing)}")


@click.command("import")
@click.argument("source", type=click.File("rb"))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def import_command(source: IO[bytes], as_json: bool) -> None:
    """Load an export (JSON lines) into the archive: all of it or, on any error, nothing.

    A bad line, or a session that already exists, stops the import with one
    error line naming the line number (exit code 1).
    """
    with _store() as store, _progress("importing", True) as update:
        report = _archive(store).import_jsonl(source, progress=update)
    if as_json:
        _emit_json(report.as_dict())
    else:
        click.echo(f"imported {report.sessions} session(s), {report.messages} message(s)")


@click.command("erase")
@click.option("--user", "user_id", required=True, help="The user whose sessions go.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def erase_command(user_id: str, yes: bool, as_json: bool) -> None:
    """Remove every session of a user from memory, Redis and the archive."""
    from tieredstore.query import erase

    if not yes and not click.confirm(
        f"Erase every session of user {user_id!r} from every tier? This cannot be undone",
        err=True,
    ):
        raise click.ClickException("aborted; nothing was erased")
    with _store(memory=True) as store:
        report = erase(store, user_id)
    if as_json:
        _emit_json(report.as_dict())
        return
    click.echo(f"erased user {user_id!r}: {len(report.session_ids)} session(s); "
               f"redis {report.redis_sessions}, archive {report.archive_sessions} "
               f"({report.archive_messages} messages), memory {report.memory_sessions}")


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_command(as_json: bool) -> None:
    """Sessions and bytes per tier, and the memory tier's hit ratio (this process)."""
    result: dict[str, Any] = {}
    with _store(memory=True) as store:
        core = store.stats()
        result["tiers"] = core["tiers"]
        result["durability"] = core["durability"]
        if store.memory is not None:
            memory = core.get("memory", {})
            reads = memory.get("hits", 0) + memory.get("misses", 0)
            result["memory"] = {
                "sessions": memory.get("entries", 0), "bytes": memory.get("bytes", 0),
                "max_bytes": memory.get("max_bytes"),
                "hit_ratio": round(memory["hits"] / reads, 4) if reads else None,
            }
        if store.redis is not None:
            redis = store.redis.stats()
            result["redis"] = {"sessions": redis["indexed_sessions"],
                               "server_used_memory_bytes": redis["used_memory"]}
        if store.archive is not None:
            archive = _archive(store).stats()
            result["archive"] = {"sessions": archive["sessions"],
                                 "messages": archive["messages"],
                                 "payload_bytes": archive["payload_bytes"],
                                 **({"table_bytes": archive["table_bytes"]}
                                    if "table_bytes" in archive else {})}
    if as_json:
        _emit_json(result)
        return
    from rich.table import Table

    table = Table("tier", "sessions", "bytes", "notes")
    if "memory" in result:
        m = result["memory"]
        ratio = "n/a" if m["hit_ratio"] is None else f"{m['hit_ratio']:.1%}"
        table.add_row("memory", str(m["sessions"]), str(m["bytes"]),
                      f"hit ratio {ratio} (this process)")
    if "redis" in result:
        r = result["redis"]
        table.add_row("redis", str(r["sessions"]), str(r["server_used_memory_bytes"]),
                      "bytes: whole server (used_memory)")
    if "archive" in result:
        a = result["archive"]
        table.add_row("archive", str(a["sessions"]), str(a["payload_bytes"]),
                      f"{a['messages']} messages"
                      + (f", tables {a['table_bytes']} bytes" if "table_bytes" in a else ""))
    _console().print(table)


_COMMANDS = (list_command, show_command, search_command, export_command, import_command,
             erase_command, stats_command)


def register(cli: click.Group) -> None:
    """Add the operator commands to ``cli`` (skipping names it already has)."""
    for command in _COMMANDS:
        assert command.name is not None
        if command.name not in cli.commands:
            cli.add_command(command)
