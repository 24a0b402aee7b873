"""Commands that move whole sessions: ``export``, ``import`` and ``erase``.

Export streams JSON lines; import loads them in one transaction (all or
nothing) and, with ``--skip-existing``, leaves out the sessions the target
namespace already holds; erase says how many sessions it will remove before
it starts and shows its progress (on a terminal).
"""

from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING

import click

from tieredstore.cli_common import (
    NotFound,
    archive_query,
    emit_json,
    open_store,
    progress,
    server_options,
)
from tieredstore.errors import SessionExists, TieredStoreError

if TYPE_CHECKING:
    from tieredstore.query import ArchiveQuery

__all__ = ["erase_command", "export_command", "import_command"]

_NAMED = 5  # ids quoted in a message before "…"


@click.command("export")
@click.option("--user", "user_id", default=None, help="Every session of this user.")
@click.option("--session", "session_ids", multiple=True, help="A session id (repeatable).")
@click.option("--output", "-o", type=click.File("wb"), default="-", show_default=True,
              help="File to write (default: stdout).")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl",
              show_default=True)
@server_options()
def export_command(user_id: str | None, session_ids: tuple[str, ...], output: IO[bytes],
                   fmt: str) -> None:
    """Stream archived conversations as JSON lines (a session line, then its messages)."""
    if (user_id is None) == (not session_ids):
        raise click.UsageError("give --user or --session (not both)")
    counts = {"sessions": 0, "messages": 0}
    exported: set[str] = set()
    with open_store() as store, progress("exporting", "messages",
                                         output is not sys.stdout.buffer) as update:
        query = archive_query(store)
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
@click.option("--skip-existing", is_flag=True,
              help="Leave out the sessions the namespace already holds; import the rest.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@server_options()
def import_command(source: IO[bytes], skip_existing: bool, as_json: bool) -> None:
    """Load an export (JSON lines) into the archive: all of it or, on any error, nothing.

    A bad line, or a session that already exists, stops the import with one
    error line naming the line number (exit code 1); --skip-existing imports
    the file's other sessions instead of refusing the whole file.
    """
    from tieredstore.jsonl import ImportSource, default_max_line_bytes, without_sessions

    skipped: list[str] = []
    with open_store() as store, progress("importing", "messages") as update:
        query = archive_query(store)
        lines: ImportSource = source
        if skip_existing:
            lines = without_sessions(
                source, lambda ids: _taken(query, ids), skipped=skipped,
                max_line_bytes=default_max_line_bytes(query.limits))
        try:
            report = query.import_jsonl(lines, progress=update)
        except SessionExists as exc:
            raise click.ClickException(_exists_message(exc, query, source)) from exc
    counts = {**report.as_dict(), **({"skipped": skipped} if skip_existing else {})}
    if as_json:
        emit_json(counts)
        return
    click.echo(f"imported {report.sessions} session(s), {report.messages} message(s)"
               + (f"; skipped {len(skipped)} already in namespace {query.namespace!r}"
                  if skip_existing else ""))


def _taken(query: ArchiveQuery, ids: list[str]) -> set[str]:
    """Which of ``ids`` have a row in the archive's namespace (live, expired or deleted)."""
    import sqlalchemy as sa

    from tieredstore.query import translate_error
    from tieredstore.schema import sessions

    try:
        with query.engine.connect() as conn:
            return set(conn.execute(sa.select(sessions.c.session_id).where(
                sessions.c.namespace == query.namespace,
                sessions.c.session_id.in_(ids))).scalars())
    except sa.exc.SQLAlchemyError as exc:
        raise translate_error(query.engine, exc) from exc


def _exists_message(exc: SessionExists, query: ArchiveQuery, source: IO[bytes]) -> str:
    """The error for an import that met an existing session: which of the file's
    sessions the namespace holds (when the file can be read again), and what to do."""
    from tieredstore.jsonl import default_max_line_bytes, numbered_lines, session_id_of

    where = f"line {exc.line}: " if exc.line is not None else ""
    head = f"{where}session already exists: {exc.session_id!r}"
    advice = ("nothing was imported: rerun with --skip-existing to import the other "
              "sessions, or import into another --namespace")
    try:
        if not source.seekable():
            return f"{head}; {advice}"
        source.seek(0)
        ids = [sid for _, line in numbered_lines(source, default_max_line_bytes(query.limits))
               if (sid := session_id_of(line)) is not None]
        present: set[str] = set()
        for start in range(0, len(ids), 500):
            present |= _taken(query, ids[start:start + 500])
    except (OSError, TieredStoreError):  # the file or the server failed now: name the first
        return f"{head}; {advice}"
    taken = [sid for sid in ids if sid in present]
    if not taken:
        return f"{head}; {advice}"
    named = ", ".join(repr(sid) for sid in taken[:_NAMED]) + (", …" if len(taken) > _NAMED
                                                               else "")
    return (f"{head} ({len(taken)} of the file's {len(ids)} sessions are in namespace "
            f"{query.namespace!r}: {named}); {advice}")


@click.command("erase")
@click.option("--user", "user_id", required=True, help="The user whose sessions go.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@server_options()
def erase_command(user_id: str, yes: bool, as_json: bool) -> None:
    """Remove every session of a user from memory, Redis and the archive.

    Says how many sessions it will remove (and asks, unless --yes) before it
    starts; on a terminal, shows its progress on stderr.
    """
    from tieredstore.query import erase
    from tieredstore.query_erase import user_session_ids

    with open_store(memory=True) as store:
        count = len(user_session_ids(store, user_id))
        what = f"{count} session(s) of user {user_id!r}"
        if count == 0:
            click.echo(f"user {user_id!r} has no sessions in any tier", err=True)
        elif not yes:
            if not click.confirm(f"Erase {what} from every tier? This cannot be undone",
                                 err=True):
                raise click.ClickException("aborted; nothing was erased")
        else:
            click.echo(f"erasing {what} from every tier", err=True)
        with progress("erasing", "sessions", count > 0, total=count) as update:
            report = erase(store, user_id, progress=lambda done, total: update(done))
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(f"erased user {user_id!r}: {len(report.session_ids)} session(s); "
               f"redis {report.redis_sessions}, archive {report.archive_sessions} "
               f"({report.archive_messages} messages), memory {report.memory_sessions}")
