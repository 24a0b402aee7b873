"""Read commands of the ``tieredstore`` CLI: list, show, search, stats.

:func:`register` adds them, the transfer commands (:mod:`tieredstore.cli_transfer`)
and ``config`` (:mod:`tieredstore.cli_config`) to the ``cli`` group of
:mod:`tieredstore.cli`. The store comes from the server options and the
``TIEREDSTORE_*`` variables (:mod:`tieredstore.cli_common`). Read commands
take ``--json`` (one JSON document on stdout); tables use rich. Errors are one
line on stderr; exit codes: 0 ok, 1 error (server unreachable, bad input,
aborted), 2 usage, 3 session not found.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from tieredstore.cli_common import (
    archive_query,
    console,
    emit_json,
    open_store,
    server_options,
)

if TYPE_CHECKING:
    from tieredstore.model import Message, Session
    from tieredstore.store import TieredStore

__all__ = ["register"]


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
@server_options()
def list_command(user_id: str | None, limit: int, cursor: str | None, from_archive: bool,
                 metadata: tuple[str, ...], active_since: str | None,
                 active_until: str | None, as_json: bool) -> None:
    """List live sessions, most recently active first."""
    with open_store() as store:
        if not from_archive:
            if metadata or active_since or active_until:
                raise click.UsageError("--metadata/--active-* need --archive")
            page = store.list(user_id=user_id, limit=limit, cursor=cursor)
            if as_json:
                emit_json({"ids": page.ids, "next_cursor": page.next_cursor})
                return
            for sid in page.ids:
                click.echo(sid)
            if page.next_cursor:
                click.echo(f"next cursor: {page.next_cursor}", err=True)
            return
        summaries = archive_query(store).sessions(
            user_id=user_id, metadata=_metadata(metadata), active_since=_time(active_since),
            active_until=_time(active_until), limit=limit, cursor=cursor)
    if as_json:
        emit_json({"sessions": [s.as_dict() for s in summaries.sessions],
                    "next_cursor": summaries.next_cursor})
        return
    from rich.table import Table

    table = Table("session", "user", "messages", "first activity", "last activity", "metadata")
    for s in summaries.sessions:
        table.add_row(s.session_id, s.user_id or "-", str(s.message_count),
                      _ms(s.first_activity_ms), _ms(s.last_activity_ms),
                      json.dumps(s.metadata, ensure_ascii=False))
    console().print(table)
    if summaries.next_cursor:
        click.echo(f"next cursor: {summaries.next_cursor}", err=True)


@click.command("show")
@click.argument("session_id")
@click.option("--last", type=click.IntRange(1), default=None, help="Only the newest N messages.")
@click.option("--full", is_flag=True, help="The whole history, archive included.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_options()
def show_command(session_id: str, last: int | None, full: bool, as_json: bool) -> None:
    """Show a session's history with roles, tool calls and the tier that served it.

    Rows are numbered by seq, each message's number for life: after trimming
    (or with --last) the numbers start where the shown history starts.
    """
    with open_store() as store:
        session = store.get(session_id, last=last)
        messages, seqs = list(session.messages), list(session.seqs)
        if full:
            messages, seqs = _whole_history(store, session_id)
            if last is not None:
                messages, seqs = messages[-last:], seqs[-last:]
    if len(seqs) != len(messages):  # a store that does not number its messages
        seqs = list(range(len(messages)))
    info = _session_info(session)
    if as_json:
        emit_json({**info, "messages": [dict(m) for m in messages], "seqs": seqs})
        return
    from rich.table import Table

    out = console()
    out.print(f"[bold]{session.id}[/bold]  user={session.user_id or '-'}  "
              f"tier={session.tier}  version={session.version}  "
              f"messages={session.message_count}  updated={info['updated_at']}",
              markup=True)
    if session.metadata:
        out.print(f"metadata: {json.dumps(dict(session.metadata), ensure_ascii=False)}",
                  markup=False)
    table = Table("seq", "role", "content", "tool calls")
    for seq, message in zip(seqs, messages, strict=True):
        table.add_row(str(seq), str(message.get("role")), _content(message), _tool_calls(message))
    out.print(table)


def _session_info(session: Session) -> dict[str, Any]:
    return {
        "id": session.id, "user_id": session.user_id, "tier": session.tier,
        "version": session.version, "message_count": session.message_count,
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
        "expires_at": session.expires_at.isoformat() if session.expires_at else None,
        "metadata": dict(session.metadata),
    }


def _whole_history(store: TieredStore, session_id: str) -> tuple[list[Message], list[int]]:
    """Every message of the session (archive included) and its seq, oldest first."""
    pages = []
    before: int | None = None
    while True:
        page = store.history(session_id, before=before, limit=1000)
        pages.append(page)
        if page.next_before is None:
            break
        before = page.next_before
    pages.reverse()
    return ([m for page in pages for m in page.messages],
            [seq for page in pages for seq in page.seqs])


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
@server_options()
def search_command(text: str | None, user_id: str | None, role: str | None,
                   metadata: tuple[str, ...], since: str | None, until: str | None,
                   limit: int, cursor: str | None, as_json: bool) -> None:
    """Search archived messages, newest first.

    TEXT: words (all must match), "a phrase", a OR b, -excluded, prefix*.
    """
    with open_store() as store:
        page = archive_query(store).search(
            text, user_id=user_id, role=role, metadata=_metadata(metadata),
            since=_time(since), until=_time(until), limit=limit, cursor=cursor)
    if as_json:
        emit_json({"hits": [hit.as_dict() for hit in page.hits],
                    "next_cursor": page.next_cursor})
        return
    from rich.table import Table

    table = Table("session", "seq", "time", "role", "user", "snippet")
    for hit in page.hits:
        table.add_row(hit.session_id, str(hit.seq), _ms(hit.created_ms), hit.role,
                      hit.user_id or "-", _mark(hit.snippet))
    console().print(table)
    click.echo(f"{len(page.hits)} hit(s)", err=True)
    if page.next_cursor:
        click.echo(f"next cursor: {page.next_cursor}", err=True)


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_options()
def stats_command(as_json: bool) -> None:
    """Sessions and bytes per tier, and the memory tier's hit ratio (this process)."""
    result: dict[str, Any] = {}
    with open_store(memory=True) as store:
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
            archive = archive_query(store).stats()
            result["archive"] = {"sessions": archive["sessions"],
                                 "messages": archive["messages"],
                                 "payload_bytes": archive["payload_bytes"],
                                 **({"table_bytes": archive["table_bytes"]}
                                    if "table_bytes" in archive else {})}
    if as_json:
        emit_json(result)
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
    console().print(table)


def register(cli: click.Group) -> None:
    """Add the operator commands to ``cli`` (skipping names it already has)."""
    from tieredstore.cli_config import config_command
    from tieredstore.cli_transfer import erase_command, export_command, import_command

    for command in (list_command, show_command, search_command, export_command,
                    import_command, erase_command, stats_command, config_command):
        assert command.name is not None
        if command.name not in cli.commands:
            cli.add_command(command)
