"""Importing hostile JSON lines: typed errors with line numbers, nothing half-stored.

Each case takes a valid export of bob's two sessions, spoils one line, and
imports it into a namespace that already holds alice's sessions, with
``batch_size=1`` so rows were already written before the bad line is read.
The import must raise :class:`InvalidRecord` (or :class:`SessionExists`)
naming that line, store nothing of bob -- not even the session before the bad
one (an import is one transaction) -- and leave alice's sessions readable,
listable, exportable and erasable. Runs on PostgreSQL and SQLite; erasure of
sessions whose stored ids fail today's validation is checked too.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from tieredstore import Message
from tieredstore.errors import (
    InvalidMessage,
    InvalidRecord,
    InvalidSessionId,
    PayloadTooLarge,
    RecordTooLarge,
    SessionExists,
)
from tieredstore.jsonl import default_max_line_bytes
from tieredstore.query import ArchiveQuery, erase
from tieredstore.schema import messages as MESSAGES
from tieredstore.schema import sessions as SESSIONS
from tieredstore.store import TieredStore
from tieredstore.tiers.archive import ArchiveStore
from tieredstore.tiers.archive.partitions import month_of

MiB = 2**20


@dataclass
class Env:
    engine: sa.Engine
    namespace: str
    alice: list[bytes]  # alice's export, already imported into ``namespace``
    bob: list[bytes]  # bob's export (b-1 with two messages, then b-2 with one)
    query: ArchiveQuery
    baseline: dict[str, int]

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.bob]


def _export(store: ArchiveStore, user: str) -> list[bytes]:
    return list(ArchiveQuery(store).export(user_id=user))


@pytest.fixture(scope="module", params=["pg", "sqlite"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    url = request.getfixturevalue("pg_url" if request.param == "pg" else "sqlite_url")
    engine = sa.create_engine(url)
    source = ArchiveStore(engine, namespace=f"src-{uuid.uuid4().hex[:8]}")
    source.save("a-1", [
        Message("system", "You are terse."),
        Message("user", "Find invoice 42"),
        Message("assistant", None, tool_calls=[{"id": "t1", "type": "function", "function": {
            "name": "find", "arguments": "{\"n\": 42}"}}]),
        {"role": "tool", "tool_call_id": "t1", "content": "99 EUR"},
        Message("assistant", "It is 99 EUR."),
    ], user_id="alice", metadata={"plan": "pro", "tags": ["a", "b"]})
    source.save("a-2", [
        Message("user", [{"type": "text", "text": "héllo ☃ \x00 end"},
                         {"type": "image_url", "image_url": {"url": "data:,"}}]),
        {"role": "assistant", "content": "ok", "future_field": {"n": 1.5}},
    ], user_id="alice")
    source.save("b-1", [Message("user", "bob one"), Message("assistant", "reply")],
                user_id="bob", metadata={"plan": "free"})
    source.save("b-2", [Message("user", "bob two")], user_id="bob")
    alice, bob = _export(source, "alice"), _export(source, "bob")
    assert [orjson.loads(line)["type"] for line in bob] == [
        "session", "message", "message", "session", "message"]
    query = ArchiveQuery(engine, namespace=f"imp-{uuid.uuid4().hex[:8]}")
    query.import_jsonl(alice)
    yield Env(engine, query.namespace, alice, bob, query, _counts(query))
    erase_all = TieredStore.from_clients(engine=engine, namespace=query.namespace)
    erase(erase_all, "alice")
    erase(erase_all, "bob")
    erase_all.close()
    for user in ("alice", "bob"):
        ArchiveQuery(source).delete_user(user)
    source.close()
    engine.dispose()


def _counts(query: ArchiveQuery) -> dict[str, int]:
    stats = query.stats()  # not table_bytes: rolled-back rows leave dead tuples behind
    return {key: stats[key] for key in ("sessions", "messages", "payload_bytes")}


def _assert_intact(env: Env) -> None:
    """Nothing of bob's file was stored; alice's sessions are exactly as imported."""
    assert _counts(env.query) == env.baseline
    assert env.query.session_ids("bob") == []
    assert list(env.query.export(user_id="alice")) == env.alice
    summaries = env.query.sessions(include_expired=True).sessions
    assert sorted(s.session_id for s in summaries) == ["a-1", "a-2"]


# -- the cases: (name, build the lines, expected error, expected line) ------------------

Build = Callable[[Env], list[bytes]]


def _edit(index: int, change: Callable[[dict[str, Any]], None]) -> Build:
    def build(env: Env) -> list[bytes]:
        records = env.records()
        change(records[index])
        lines = list(env.bob)
        lines[index] = orjson.dumps(records[index])
        return lines
    return build


def _set(index: int, **fields: Any) -> Build:
    return _edit(index, lambda record: record.update(fields))


def _drop(index: int, name: str) -> Build:
    return _edit(index, lambda record: record.pop(name))


def _raw(index: int, line: bytes | Callable[[bytes], bytes]) -> Build:
    def build(env: Env) -> list[bytes]:
        lines = list(env.bob)
        lines[index] = line(lines[index]) if callable(line) else line
        return lines
    return build


def _rename_b2(sid: Any) -> Build:
    def build(env: Env) -> list[bytes]:
        records = env.records()
        records[3]["session_id"] = records[4]["session_id"] = sid
        return [*env.bob[:3], orjson.dumps(records[3]), orjson.dumps(records[4])]
    return build


def _message_line(sid: str, seq: int, message_json: bytes) -> bytes:
    return (b'{"type":"message","session_id":"%s","seq":%d,"created_ms":1,"message":%s}'
            % (sid.encode(), seq, message_json))


def _with_blank_lines(env: Env) -> list[bytes]:
    records = env.records()
    records[4]["seq"] = "0"
    return [env.bob[0], b"", b"   \r\n", *env.bob[1:4], b"\n", orjson.dumps(records[4])]


def _truncated_file(env: Env) -> list[bytes]:
    return env.bob[:4]  # b-2 declares one message; the file ends first


def _session_twice(env: Env) -> list[bytes]:
    return [*env.bob[:3], *env.bob[:3]]


def _message_first(env: Env) -> list[bytes]:
    return [env.bob[1], *env.bob]


def _swap_messages(env: Env) -> list[bytes]:
    return [env.bob[0], env.bob[2], env.bob[1], *env.bob[3:]]


DEEP = b"[" * 600 + b"]" * 600
CASES: list[tuple[str, Build, type[Exception], int]] = [
    # wrong types
    ("seq-string", _set(4, seq="0"), InvalidRecord, 5),
    ("seq-float", _set(4, seq=0.0), InvalidRecord, 5),
    ("created-ms-float", _set(4, created_ms=1.5), InvalidRecord, 5),
    ("created-ms-negative", _set(1, created_ms=-1), InvalidRecord, 2),
    ("version-bool", _set(3, version=True), InvalidRecord, 4),
    ("version-zero", _set(3, version=0), InvalidRecord, 4),
    ("message-count-negative", _set(3, message_count=-1), InvalidRecord, 4),
    ("message-count-huge", _set(3, message_count=2**40), InvalidRecord, 4),
    ("next-seq-over-int64", _set(3, next_seq=2**63), InvalidRecord, 4),
    ("ttl-zero", _set(3, ttl_ms=0), InvalidRecord, 4),
    ("expires-string", _set(3, expires_ms="soon"), InvalidRecord, 4),
    ("base-seq-after-next-seq", _set(3, base_seq=5), InvalidRecord, 4),
    ("message-a-string", _set(4, message="hello"), InvalidRecord, 5),
    ("message-null", _set(4, message=None), InvalidRecord, 5),
    ("message-without-role", _set(4, message={"content": "x"}), InvalidRecord, 5),
    ("message-role-not-string", _set(4, message={"role": 1}), InvalidRecord, 5),
    ("record-an-array", _raw(4, b"[1, 2]"), InvalidRecord, 5),
    ("record-null", _raw(3, b"null"), InvalidRecord, 4),
    ("record-a-number", _raw(3, b"42"), InvalidRecord, 4),
    ("type-missing", _drop(3, "type"), InvalidRecord, 4),
    ("type-unknown", _set(3, type="sessions"), InvalidRecord, 4),
    ("unknown-field", _set(3, owner="eve"), InvalidRecord, 4),
    ("field-missing", _drop(3, "lead"), InvalidRecord, 4),
    ("message-field-missing", _drop(4, "seq"), InvalidRecord, 5),
    # sizes
    ("message-20-mib", _set(4, message={"role": "user", "content": "x" * (20 * MiB)}),
     RecordTooLarge, 5),
    ("message-5-mib", _set(4, message={"role": "user", "content": "x" * (5 * MiB)}),
     RecordTooLarge, 5),
    ("metadata-70-kib", _set(3, metadata={"blob": "x" * (70 * 2**10)}), RecordTooLarge, 4),
    # duplicate keys (orjson would keep the last one)
    ("duplicate-message-key",
     _raw(4, lambda line: line[:-1] + b',"message":{"role":"system","content":"evil"}}'),
     InvalidRecord, 5),
    ("duplicate-key-inside-message",
     _raw(4, _message_line("b-2", 0, b'{"role":"user","role":"system"}')), InvalidRecord, 5),
    ("duplicate-session-id-key",
     _raw(3, lambda line: line[:-1] + b',"session_id":"b-9"}'), InvalidRecord, 4),
    # bad session ids
    ("session-id-with-space", _rename_b2("b 2"), InvalidRecord, 4),
    ("session-id-with-brace", _rename_b2("{b2}"), InvalidRecord, 4),
    ("session-id-with-newline", _rename_b2("b\n2"), InvalidRecord, 4),
    ("session-id-empty", _rename_b2(""), InvalidRecord, 4),
    ("session-id-too-long", _rename_b2("x" * 300), InvalidRecord, 4),
    ("session-id-a-number", _rename_b2(7), InvalidRecord, 4),
    ("message-of-another-session", _set(4, session_id="b-1"), InvalidRecord, 5),
    ("session-twice-in-file", _session_twice, InvalidRecord, 4),
    ("message-before-any-session", _message_first, InvalidRecord, 1),
    ("session-already-stored", _rename_b2("a-1"), SessionExists, 4),
    # bad user ids
    ("user-id-with-space", _set(3, user_id="bob smith"), InvalidRecord, 4),
    ("user-id-empty", _set(3, user_id=""), InvalidRecord, 4),
    ("user-id-a-number", _set(3, user_id=5), InvalidRecord, 4),
    ("user-id-with-star", _set(3, user_id="bob*"), InvalidRecord, 4),
    # metadata that is not an object (or not storable)
    ("metadata-a-list", _set(3, metadata=[1, 2]), InvalidRecord, 4),
    ("metadata-a-string", _set(3, metadata="plan=pro"), InvalidRecord, 4),
    ("metadata-null", _set(3, metadata=None), InvalidRecord, 4),
    ("metadata-with-nul", _set(3, metadata={"k": "a\x00b"}), InvalidRecord, 4),
    # another namespace
    ("other-namespace-session", _set(3, namespace="other-tenant"), InvalidRecord, 4),
    ("other-namespace-message", _set(4, namespace="other-tenant"), InvalidRecord, 5),
    # broken JSON
    ("truncated-line", _raw(4, lambda line: line[: len(line) // 2]), InvalidRecord, 5),
    ("truncated-file", _truncated_file, InvalidRecord, 4),
    ("non-utf8-byte", _raw(4, lambda line: line.replace(b"bob two", b"bob \xff two")),
     InvalidRecord, 5),
    ("invalid-utf8-sequence", _raw(4, lambda line: line.replace(b"two", b"\xc3\x28")),
     InvalidRecord, 5),
    ("lone-surrogate-escape", _raw(4, lambda line: line.replace(b"two", b"\\ud800")),
     InvalidRecord, 5),
    ("nan", _raw(4, lambda line: line.replace(b'"created_ms":', b'"created_ms":NaN,"x":')),
     InvalidRecord, 5),
    ("integer-over-64-bits",
     _raw(4, _message_line("b-2", 0, b'{"role":"user","n":18446744073709551616}')),
     InvalidRecord, 5),
    ("nested-too-deeply",
     _raw(4, _message_line("b-2", 0, b'{"role":"user","content":' + DEEP + b"}")),
     InvalidRecord, 5),
    ("two-records-on-one-line", _raw(3, lambda line: line + line), InvalidRecord, 4),
    # bookkeeping that does not match the messages
    ("seqs-not-growing", _swap_messages, InvalidRecord, 3),
    ("seq-past-next-seq", _set(4, seq=99), InvalidRecord, 5),
    ("too-few-messages", _set(3, message_count=2, next_seq=5), InvalidRecord, 4),
    ("too-many-messages", _set(0, message_count=1), InvalidRecord, 3),
    ("lead-wrong", _set(3, lead=1), InvalidRecord, 4),
    # blank lines are skipped but counted
    ("bad-line-after-blank-lines", _with_blank_lines, InvalidRecord, 8),
]


@pytest.mark.parametrize(("name", "build", "error", "line"), CASES, ids=[c[0] for c in CASES])
def test_hostile_line_is_refused_with_its_number(env: Env, name: str, build: Build,
                                                 error: type[Exception], line: int) -> None:
    lines = build(env)
    with pytest.raises(error) as info:
        env.query.import_jsonl(lines, batch_size=1)
    assert getattr(info.value, "line", None) == line, str(info.value)
    assert str(info.value).startswith(f"line {line}: "), str(info.value)
    if error is RecordTooLarge:
        assert isinstance(info.value, PayloadTooLarge)
    if name.startswith(("session-id", "user-id")):
        assert isinstance(info.value.__cause__, InvalidSessionId)
    if name.startswith("message-without-role"):
        assert isinstance(info.value.__cause__, InvalidMessage)
    _assert_intact(env)


def test_oversized_line_is_refused_before_it_is_read_whole(env: Env) -> None:
    """From a file, a 20 MiB line costs at most the line limit in memory."""
    huge = orjson.dumps({**env.records()[4], "message": {
        "role": "user", "content": "x" * (20 * MiB)}})
    chunks: list[int] = []

    class Recording(io.BytesIO):
        def readline(self, size: int | None = -1, /) -> bytes:
            chunk = super().readline(size)
            chunks.append(len(chunk))
            return chunk

    source = Recording(b"".join([*env.bob[:4], huge, b"\n"]))
    with pytest.raises(RecordTooLarge) as info:
        env.query.import_jsonl(source)
    assert info.value.line == 5
    limit = default_max_line_bytes(env.query.limits)
    assert max(chunks) <= limit + 2 < len(huge)
    with pytest.raises(RecordTooLarge) as small:
        env.query.import_jsonl(io.BytesIO(b"".join(env.bob)), max_line_bytes=100)
    assert small.value.line == 1
    _assert_intact(env)


def test_every_form_of_a_valid_file_imports(env: Env) -> None:
    """Blank lines, CRLF, spaced or escaped JSON, the target's own namespace, text files."""
    records = env.records()
    records[3]["namespace"] = env.namespace
    records[2]["message"] = {**records[2]["message"], "content": "r\u00e9ply ☃"}
    canonical = b"".join([*env.bob[:2], orjson.dumps(records[2]) + b"\n", *env.bob[3:]])
    loose = [json.dumps(records[0]).encode() + b"\r\n", b"\n", json.dumps(records[1]).encode(),
             b"  \n", json.dumps(records[2], ensure_ascii=True).encode(),
             orjson.dumps(records[3]), env.bob[4]]
    sources: list[Any] = [
        loose,
        io.BytesIO(canonical.replace(b"\n", b"\r\n") + b"\r\n"),
        io.StringIO(canonical.decode()),
        canonical,
        [line.decode() for line in canonical.splitlines()],
    ]
    for source in sources:
        report = env.query.import_jsonl(source)
        assert (report.sessions, report.messages) == (2, 3)
        assert b"".join(env.query.export(user_id="bob")) == canonical
        assert env.query.delete_user("bob")[1] == 3
    _assert_intact(env)


def test_every_tier_works_after_failed_imports(env: Env, redis_client: Any,
                                               redis_prefix: str) -> None:
    """After refused imports, reads promote, lists, exports and erase all work."""
    for _, build, error, _line in CASES[:5]:
        with pytest.raises(error):
            env.query.import_jsonl(build(env), batch_size=1)
    archive_view = ArchiveStore(env.engine, namespace=env.namespace)
    expected = {sid: archive_view.get(sid) for sid in ("a-1", "a-2")}
    store = TieredStore.from_clients(redis=redis_client, engine=env.engine,
                                     namespace=env.namespace, prefix=redis_prefix)
    try:
        for sid, session in expected.items():
            assert store.load(sid) == session.messages  # archive hit, promoted
            assert store.load(sid) == session.messages  # now from Redis / memory
            assert store.get(sid).metadata == session.metadata
        assert sorted(store.list(user_id="alice").ids) == ["a-1", "a-2"]
        assert {h.session_id for h in env.query.search("invoice").hits} == {"a-1"}
        assert env.query.import_jsonl(env.bob).sessions == 2  # the valid file still goes in
        report = erase(store, "bob")
        assert (report.archive_sessions, report.redis_skipped) == (2, [])
        assert env.query.session_ids("bob") == []
        _assert_intact(env)
    finally:
        for sid in expected:
            if store.redis is not None:
                store.redis.drop(sid)
        store.close()
        archive_view.close()


def test_erase_removes_sessions_whose_stored_ids_are_odd(env: Env, redis_client: Any,
                                                         redis_prefix: str) -> None:
    """Ids today's validation refuses (an older archive's) are erased from the archive.

    Redis cannot hold them, so they are skipped there (and reported), while the
    user's ordinary sessions go from every tier; a user id Redis cannot index
    is erased from the archive alone.
    """
    namespace = f"odd-{uuid.uuid4().hex[:8]}"
    store = TieredStore.from_clients(redis=redis_client, engine=env.engine, namespace=namespace,
                                     prefix=redis_prefix, durability="write_through")
    odd = ["odd id", "{tagged}", "x" * 300]
    rows = [(sid, "legacy") for sid in odd] + [("s-1", "legacy user")]
    payload = orjson.dumps({"role": "user", "content": "old"})
    born = int(time.time() * 1000)  # this month: its partition exists (PostgreSQL)
    with env.engine.begin() as conn:
        for sid, user in rows:
            conn.execute(SESSIONS.insert(), {
                "namespace": namespace, "session_id": sid, "user_id": user, "metadata": {},
                "created_ms": born, "updated_ms": born + 1, "expires_ms": None, "ttl_ms": None,
                "version": 1, "message_count": 1, "next_seq": 1, "base_seq": 0, "lead": 0,
                "month": month_of(born)})
            conn.execute(MESSAGES.insert(), {
                "namespace": namespace, "session_id": sid, "seq": 0, "created_ms": born,
                "month": month_of(born), "role": "user", "kind": "m", "payload": payload,
                "content_text": "old"})
    try:
        store.save("fine-1", [Message("user", "new")], user_id="legacy")
        store.save("keep", [Message("user", "not legacy")], user_id="other")
        store.load("fine-1")  # into memory too

        report = erase(store, "legacy")

        assert report.session_ids == sorted([*odd, "fine-1"])
        assert report.redis_skipped == sorted(odd)
        assert (report.redis_sessions, report.memory_sessions) == (1, 1)
        assert (report.archive_sessions, report.archive_messages) == (4, 4)
        query = ArchiveQuery(env.engine, namespace=namespace)
        assert query.session_ids("legacy") == []
        assert not store.exists("fine-1")
        assert store.load("keep") == [Message("user", "not legacy")]

        odd_user = erase(store, "legacy user")  # not a valid user id: archive only
        assert (odd_user.session_ids, odd_user.archive_sessions) == (["s-1"], 1)
        assert query.stats()["sessions"] == 1  # "keep"
        assert erase(store, "legacy").session_ids == []  # idempotent
    finally:
        store.delete("keep")
        store.close()
