"""The archive's JSON-lines format: export writes it, import reads it back safely.

Per session, ordered by id, a session line with its bookkeeping, then one line
per message by seq::

    {"type":"session","session_id":"s1","user_id":"u1","metadata":{},"created_ms":1,
     "updated_ms":2,"expires_ms":null,"ttl_ms":null,"version":3,"message_count":2,
     "next_seq":2,"base_seq":0,"lead":0}
    {"type":"message","session_id":"s1","seq":0,"created_ms":1,"message":{"role":"user"}}

(one line each). Lines carry no namespace: an import writes into the
namespace it is given, so moving data between namespaces means choosing the
target. A record that names another namespace (a ``"namespace"`` field other
than the target's) is rejected rather than silently moved.

:class:`ExportLines` writes the format. :class:`ImportReader` is the I/O-free
core of ``ArchiveQuery.import_jsonl``: it reads lines under a length bound (an
oversized line is refused before it is read whole), parses each one fully
(duplicate keys are refused), validates it with the validators every store
uses (session and user ids, metadata, messages, :class:`~tieredstore.config.Limits`),
checks each session's bookkeeping against its messages, and hands back rows
re-encoded with the store's codec. Every problem raises :class:`InvalidRecord`
with the line number (:class:`RecordTooLarge` for sizes).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import orjson

from tieredstore.codec import encode_json
from tieredstore.config import Limits
from tieredstore.core import MAX_TTL_MS, check_session_id, check_user_id, prepare_metadata
from tieredstore.errors import InvalidInput, InvalidRecord, PayloadTooLarge, RecordTooLarge
from tieredstore.model import Message
from tieredstore.policy import KIND_SYSTEM, message_kind
from tieredstore.tiers.archive.partitions import month_of
from tieredstore.tiers.archive.rows import _content_text, _no_nul

__all__ = [
    "MESSAGE_COLUMNS",
    "MESSAGE_FIELDS",
    "SESSION_FIELDS",
    "ExportLines",
    "ImportReader",
    "ImportSource",
    "MessageRow",
    "SessionRow",
    "default_max_line_bytes",
    "json_object",
    "numbered_lines",
    "session_id_of",
    "without_sessions",
]

#: The fields of a session line after ``type``, in the order export writes them.
SESSION_FIELDS = ("session_id", "user_id", "metadata", "created_ms", "updated_ms",
                  "expires_ms", "ttl_ms", "version", "message_count", "next_seq",
                  "base_seq", "lead")
#: The fields of a message line after ``type``.
MESSAGE_FIELDS = ("session_id", "seq", "created_ms", "message")
#: The ``tieredstore_messages`` columns of a :data:`MessageRow`, in order.
MESSAGE_COLUMNS = ("namespace", "session_id", "seq", "month", "created_ms", "role", "kind",
                   "payload", "content_text")

MessageRow = tuple[str, str, int, int, int, str, str, bytes, str | None]
"""One ``tieredstore_messages`` row, columns as :data:`MESSAGE_COLUMNS`."""
ImportSource = Iterable[bytes | str] | IO[bytes] | IO[str] | bytes | str
"""Lines (an iterable of ``bytes``/``str``), a file opened for reading, or a whole text."""

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_ENVELOPE_BYTES = 64 * 2**10
_SHOWN = 80  # characters of a bad value quoted in an error


def json_object(value: Any) -> dict[str, Any]:
    """A JSON column's value as a dict (drivers hand back text or decoded JSON)."""
    if isinstance(value, str | bytes):
        value = orjson.loads(value)
    return dict(value) if value else {}


def default_max_line_bytes(limits: Limits) -> int:
    """The longest line an import reads by default.

    Twice the largest message or metadata the limits allow (room for JSON
    written with spaces or ``\\u`` escapes) plus the envelope; the message
    itself is then held to ``max_message_bytes`` once re-encoded.
    """
    return 2 * max(limits.max_message_bytes, limits.max_metadata_bytes) + _ENVELOPE_BYTES


# -- export ----------------------------------------------------------------------------


class ExportLines:
    """Turns the export query's rows (session, message) into JSON lines, row by row.

    Shared by the sync and async exports so the format exists once. ``message``
    is the stored payload verbatim (it was encoded by the store's codec).
    """

    def __init__(self) -> None:
        self._current: str | None = None

    def feed(self, row: Any) -> Iterator[bytes]:
        dumps = orjson.dumps
        if row.session_id != self._current:
            self._current = row.session_id
            record: dict[str, Any] = {"type": "session"}
            for name in SESSION_FIELDS:
                record[name] = getattr(row, name)
            record["metadata"] = json_object(row.metadata)
            yield dumps(record) + b"\n"
        if row.seq is not None:
            head = dumps({"type": "message", "session_id": row.session_id,
                          "seq": row.seq, "created_ms": row.m_created_ms})
            yield b"".join((head[:-1], b',"message":', bytes(row.payload), b"}\n"))


# -- import ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A validated session line: its ``tieredstore_sessions`` row and line number."""

    line: int
    values: dict[str, Any]

    @property
    def session_id(self) -> str:
        return self.values["session_id"]  # type: ignore[no-any-return]


@dataclass(slots=True)
class _Open:
    """The session whose message lines are being read."""

    row: SessionRow
    message_count: int
    next_seq: int
    base_seq: int
    lead: int
    count: int = 0
    last_seq: int = -1
    leading: int = 0  # system messages opening the history, so far
    seen_other: bool = False


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def numbered_lines(source: ImportSource, max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """``(line number, stripped line)`` for each line of ``source``, blank ones included.

    A file is read with ``readline(limit)``, so a line longer than
    ``max_line_bytes`` raises :class:`RecordTooLarge` after at most that
    many bytes were read; lines given as values are measured before parsing.
    """
    if isinstance(source, str):
        source = source.encode()
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(source))
    readline = getattr(source, "readline", None)
    if callable(readline):
        limit = max_line_bytes + 2  # room for "\r\n"
        number = 0
        while True:
            chunk = readline(limit)
            if not chunk:
                return
            number += 1
            newline = "\n" if isinstance(chunk, str) else b"\n"
            if len(chunk) >= limit and not chunk.endswith(newline):
                raise RecordTooLarge(number, f"line is longer than {max_line_bytes} bytes")
            yield number, _checked_line(number, chunk, max_line_bytes)
    else:
        for number, item in enumerate(source, 1):
            yield number, _checked_line(number, item, max_line_bytes)


def _checked_line(number: int, raw: object, max_line_bytes: int) -> bytes:
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as exc:
            raise InvalidRecord(number, f"not UTF-8 text ({exc.reason})") from exc
    elif isinstance(raw, bytearray | memoryview):
        raw = bytes(raw)
    if not isinstance(raw, bytes):
        raise InvalidRecord(number, f"a line must be bytes or str, got {type(raw).__name__}")
    line = raw.strip()
    if len(line) > max_line_bytes:
        raise RecordTooLarge(number, f"line is {len(line)} bytes; the limit is {max_line_bytes}")
    return line


def session_id_of(line: bytes) -> str | None:
    """The session id of a session line; ``None`` for any other line (also one that
    does not parse, which the import reports in its turn)."""
    if b'"session"' not in line:  # every session line holds it; most messages do not
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("type") != "session":
        return None
    sid = record.get("session_id")
    return sid if isinstance(sid, str) else None


def _message_of(line: bytes, sid: str) -> bool:
    """Whether ``line`` is a message line of session ``sid`` (anything else is left for
    the import to judge)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(record, dict) and record.get("type") == "message"
            and record.get("session_id") == sid)


def without_sessions(
    source: ImportSource,
    taken: Callable[[list[str]], set[str]],
    *,
    max_line_bytes: int,
    skipped: list[str],
    window_sessions: int = 500,
    window_bytes: int = 16 * 2**20,
) -> Iterator[bytes]:
    """The lines of ``source`` with the lines of every session ``taken`` names blanked.

    ``taken(ids)`` says which of a window of session ids (up to
    ``window_sessions`` sessions or ``window_bytes`` of lines) the target
    already holds; their session line and the message lines of theirs that
    follow become empty lines, so the import skips them and its errors still
    name the file's line numbers. Any other line is kept for the import to
    check. The ids skipped are appended to ``skipped``.
    """
    window: list[tuple[bytes, str | None]] = []
    size = 0
    skipping: str | None = None  # the skipped session whose lines come now

    def flush() -> Iterator[bytes]:
        nonlocal skipping, size
        ids = [sid for _, sid in window if sid is not None]
        found = taken(ids) if ids else set()
        for line, sid in window:
            if sid is not None:
                skipping = sid if sid in found else None
                if skipping is not None:
                    skipped.append(sid)
                    yield b""
                    continue
            yield b"" if skipping is not None and _message_of(line, skipping) else line
        window.clear()
        size = 0

    sessions = 0
    for _, line in numbered_lines(source, max_line_bytes):
        sid = session_id_of(line)
        window.append((line, sid))
        size += len(line)
        sessions += sid is not None
        if sessions >= window_sessions or size >= window_bytes:
            yield from flush()
            sessions = 0
    yield from flush()


class ImportReader:
    """Validates export lines for ``namespace`` and yields the rows to write.

    :meth:`read` yields a :class:`SessionRow` for each session line and a
    :data:`MessageRow` for each of its messages, in file order; the session
    checks that need all its messages (``message_count``, ``lead``) run when
    the next session line or the end comes, so a caller that writes as it
    reads must do so in one transaction and roll back on error.
    """

    def __init__(self, namespace: str, limits: Limits | None = None, *,
                 max_line_bytes: int | None = None) -> None:
        self.namespace = namespace
        self.limits = limits or Limits()
        if max_line_bytes is None:
            max_line_bytes = default_max_line_bytes(self.limits)
        if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int) or (
                max_line_bytes < 1):
            raise InvalidInput(f"max_line_bytes must be a positive integer, got {max_line_bytes!r}")
        self.max_line_bytes = max_line_bytes

    def read(self, source: ImportSource) -> Iterator[SessionRow | MessageRow]:
        current: _Open | None = None
        seen: set[str] = set()
        for number, line in numbered_lines(source, self.max_line_bytes):
            if not line:
                continue
            record = _parse(number, line)
            kind = record.get("type")
            if kind == "session":
                if current is not None:
                    _close(current)
                current = self._session(number, record, seen)
                yield current.row
            elif kind == "message":
                if current is None:
                    raise InvalidRecord(number, "a message line before any session line")
                yield self._message(number, record, current)
            elif "type" not in record:
                raise InvalidRecord(number, "a record needs a 'type' ('session' or 'message')")
            else:
                raise InvalidRecord(number, f"unknown record type {_show(kind)}")
        if current is not None:
            _close(current)

    def _fields(self, number: int, record: Mapping[str, Any], names: tuple[str, ...],
                what: str) -> None:
        if "namespace" in record and record["namespace"] != self.namespace:
            raise InvalidRecord(
                number, f"record of namespace {_show(record['namespace'])}; this import writes "
                f"namespace {self.namespace!r} (exports carry no namespace: import into the "
                "namespace you want)")
        unknown = sorted(set(record) - set(names) - {"type", "namespace"})
        if unknown:
            raise InvalidRecord(number, f"unknown field(s) in a {what} line: "
                                        f"{', '.join(_show(k) for k in unknown[:5])}")
        missing = [name for name in names if name not in record]
        if missing:
            raise InvalidRecord(number, f"{what} line without {', '.join(missing)}")

    def _session(self, number: int, record: Mapping[str, Any], seen: set[str]) -> _Open:
        self._fields(number, record, SESSION_FIELDS, "session")
        limits = self.limits
        with _as_record(number):
            sid = check_session_id(record["session_id"], limits)
            user_id = check_user_id(record["user_id"], limits)
            if record["metadata"] is None:
                raise InvalidInput("metadata must be a JSON object, got null")
            metadata = prepare_metadata(record["metadata"], limits)
        if sid in seen:
            raise InvalidRecord(number, f"session {sid!r} appears twice in this file")
        seen.add(sid)
        created_ms = _int(number, record, "created_ms")
        updated_ms = _int(number, record, "updated_ms")
        expires_ms = _int(number, record, "expires_ms", nullable=True)
        ttl_ms = _int(number, record, "ttl_ms", low=1, high=MAX_TTL_MS, nullable=True)
        version = _int(number, record, "version", low=1)
        message_count = _int(number, record, "message_count", high=_INT32_MAX)
        next_seq = _int(number, record, "next_seq")
        base_seq = _int(number, record, "base_seq", high=next_seq)
        lead = _int(number, record, "lead", high=message_count)
        if message_count > next_seq - base_seq:
            raise InvalidRecord(number, f"message_count {message_count} does not fit in seqs "
                                        f"{base_seq} to {next_seq - 1}")
        values = {
            "namespace": self.namespace, "session_id": sid, "user_id": user_id,
            "metadata": metadata, "created_ms": created_ms, "updated_ms": updated_ms,
            "expires_ms": expires_ms, "ttl_ms": ttl_ms, "version": version,
            "message_count": message_count, "next_seq": next_seq, "base_seq": base_seq,
            "lead": lead, "month": month_of(created_ms),
        }
        return _Open(SessionRow(number, values), message_count, next_seq, base_seq, lead)

    def _message(self, number: int, record: Mapping[str, Any], session: _Open) -> MessageRow:
        self._fields(number, record, MESSAGE_FIELDS, "message")
        sid = session.row.session_id
        if record["session_id"] != sid:
            raise InvalidRecord(number, f"message of session {_show(record['session_id'])} "
                                        f"inside session {sid!r} (line {session.row.line})")
        if session.count >= session.message_count:
            raise InvalidRecord(number, f"more messages than the message_count "
                                        f"{session.message_count} of line {session.row.line}")
        seq = _int(number, record, "seq", low=session.base_seq, high=session.next_seq - 1)
        if seq <= session.last_seq:
            raise InvalidRecord(number, f"seq {seq} after seq {session.last_seq}: seqs must grow")
        created_ms = _int(number, record, "created_ms")
        with _as_record(number, "message: "):
            message = Message.of(record["message"])
            payload = encode_json(message)
            if len(payload) > self.limits.max_message_bytes:
                raise PayloadTooLarge(f"{len(payload)} bytes; the limit is "
                                      f"{self.limits.max_message_bytes}")
        kind = message_kind(message)
        if kind == KIND_SYSTEM and not session.seen_other:
            session.leading += 1
        else:
            session.seen_other = True
        session.count += 1
        session.last_seq = seq
        return (self.namespace, sid, seq, session.row.values["month"], created_ms,
                _no_nul(message["role"]), kind, payload, _content_text(message))


@contextmanager
def _as_record(number: int, prefix: str = "") -> Iterator[None]:
    """Re-raise the validators' errors as :class:`InvalidRecord` of line ``number``."""
    try:
        yield
    except InvalidRecord:
        raise
    except PayloadTooLarge as exc:
        raise RecordTooLarge(number, f"{prefix}{exc}") from exc
    except InvalidInput as exc:
        raise InvalidRecord(number, f"{prefix}{exc}") from exc
    except RecursionError:
        raise InvalidRecord(number, f"{prefix}nested too deeply") from None


def _parse(number: int, line: bytes) -> dict[str, Any]:
    """The record on ``line``: parsed fully, duplicate keys and non-JSON numbers refused.

    orjson parses; when re-encoding gives back exactly ``line`` (what export
    writes) nothing was lost. Otherwise the line is parsed again strictly, with
    the standard library, which sees duplicate keys and integers too big for
    64 bits (orjson would keep the last key, and turn the integer into a float).
    """
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(number, f"not valid JSON: {exc.msg} (column {exc.pos + 1})") from exc
    if not isinstance(record, dict):
        raise InvalidRecord(number, f"a line must hold a JSON object, got {type(record).__name__}")
    try:
        canonical = orjson.dumps(record) == line
    except orjson.JSONEncodeError:
        canonical = False
    if canonical:
        return record
    try:
        strict = json.loads(line.decode(), object_pairs_hook=_no_duplicates,
                            parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise InvalidRecord(number, f"duplicate key {_show(exc.key)}") from None
    except RecursionError:
        raise InvalidRecord(number, "nested too deeply") from None
    except ValueError as exc:
        raise InvalidRecord(number, f"not valid JSON: {exc}") from exc
    return strict  # type: ignore[no-any-return]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _int(number: int, record: Mapping[str, Any], name: str, *, low: int = 0,
         high: int = _INT64_MAX, nullable: bool = False) -> Any:
    value = record[name]
    if value is None and nullable:
        return None
    if type(value) is not int or not low <= value <= high:
        raise InvalidRecord(number, f"{name} must be an integer from {low} to {high}"
                                    f"{' or null' if nullable else ''}, got {_show(value)}")
    return value


def _close(session: _Open) -> None:
    """The checks that need a session's every message line."""
    row = session.row
    if session.count != session.message_count:
        raise InvalidRecord(row.line, f"session {row.session_id!r} declares message_count "
                                      f"{session.message_count} but {session.count} message "
                                      "line(s) follow")
    if session.leading != session.lead:
        raise InvalidRecord(row.line, f"lead is {session.lead} but session {row.session_id!r} "
                                      f"opens with {session.leading} system message(s)")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
