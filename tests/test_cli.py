"""The operator commands, each run as a subprocess against the real servers.

Every test uses its own namespace (Redis prefix of the run, archive on the
run's PostgreSQL database); exit codes and output are checked, errors
included.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.cli_harness import Cli, cli_namespace
from tests.cli_harness import one_line_error as _one_line_error
from tieredstore import Message


@pytest.fixture
def cli(pg_url: str, pg_engine: sa.Engine, redis_client: Any, redis_prefix: str) -> Iterator[Cli]:
    with cli_namespace(pg_url, pg_engine, redis_client, redis_prefix) as harness:
        yield harness


def test_list_and_show(cli: Cli) -> None:
    listed = cli.json("list")
    assert sorted(listed["ids"]) == ["c-1", "c-2", "c-3"]
    assert sorted(cli.json("list", "--user", "alice")["ids"]) == ["c-1", "c-2"]
    page = cli.json("list", "--limit", "2")
    assert len(page["ids"]) == 2 and page["next_cursor"]
    rest = cli.json("list", "--limit", "2", "--cursor", page["next_cursor"])
    assert sorted(page["ids"] + rest["ids"]) == ["c-1", "c-2", "c-3"]
    summaries = cli.json("list", "--archive", "--metadata", "plan=pro")["sessions"]
    assert sorted(s["session_id"] for s in summaries) == ["c-1", "c-2"]
    assert {s["message_count"] for s in summaries} == {5, 1}

    shown = cli.json("show", "c-1")
    assert shown["tier"] in ("redis", "archive") and shown["user_id"] == "alice"
    assert [m["role"] for m in shown["messages"]] == [
        "system", "user", "assistant", "tool", "assistant"]
    done = cli.run("show", "c-1")
    assert done.returncode == 0
    assert "lookup_invoice" in done.stdout and "tier=redis" in done.stdout
    assert "Your invoice shows 99 EUR." in done.stdout
    table = cli.run("list", "--archive")
    assert table.returncode == 0 and "c-3" in table.stdout
    long_id = "c-" + "x" * 150  # piped tables keep ids whole, however wide
    cli.store.save(long_id, [Message("user", "a long id")], metadata={"plan": "pro"})
    try:
        wide = cli.run("list", "--archive", "--metadata", "plan=pro")
        assert wide.returncode == 0 and long_id in wide.stdout and "…" not in wide.stdout
    finally:
        cli.store.delete(long_id)


def test_search(cli: Cli) -> None:
    hits = cli.json("search", "invoice")["hits"]
    assert {(h["session_id"], h["seq"]) for h in hits} == {
        ("c-1", 1), ("c-1", 3), ("c-1", 4), ("c-3", 0)}
    assert all("<mark>" in h["snippet"] for h in hits)
    assert [h["session_id"] for h in cli.json("search", "refund*", "--user", "bob")["hits"]] == [
        "c-3"]
    assert cli.json("search", "invoice", "--metadata", "plan=free")["hits"][0]["session_id"] == (
        "c-3")
    assert cli.json("search", '"invoice for march"')["hits"][0]["seq"] == 1
    tool = cli.json("search", "--role", "tool")["hits"]
    assert [(h["session_id"], h["seq"], h["role"]) for h in tool] == [("c-1", 3, "tool")]
    first = cli.json("search", "invoice", "--limit", "1")
    assert first["next_cursor"]
    done = cli.run("search", "invoice")
    assert done.returncode == 0 and "c-3" in done.stdout and "4 hit(s)" in done.stderr


def test_export_import(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "alice.jsonl"
    done = cli.run("export", "--user", "alice", "-o", str(path))
    assert done.returncode == 0, done.stderr
    assert "exported 2 session(s), 6 message(s)" in done.stderr
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["type"] for line in lines].count("session") == 2
    stdout = cli.run("export", "--session", "c-2")
    assert stdout.returncode == 0 and stdout.stdout.count('"type":"message"') == 1
    other = {"TIEREDSTORE_NAMESPACE": f"cli-import-{uuid.uuid4().hex[:8]}"}
    imported = cli.run("import", str(path), "--json", env=other)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"sessions": 2, "messages": 6}
    again = tmp_path / "again.jsonl"
    assert cli.run("export", "--user", "alice", "-o", str(again), env=other).returncode == 0
    assert again.read_bytes() == path.read_bytes()
    twice = cli.run("import", str(path), env=other)
    assert twice.returncode == 1 and "already exists" in twice.stderr
    erased = cli.run("erase", "--user", "alice", "--yes", env=other)
    assert erased.returncode == 0, erased.stderr
    assert cli.run("export", "--user", "alice").returncode == 0
    assert cli.run("export").returncode == 2  # usage error


def test_import_error_names_the_line(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "alice.jsonl"
    assert cli.run("export", "--user", "alice", "-o", str(path)).returncode == 0
    lines = path.read_bytes().splitlines(keepends=True)
    bad = json.loads(lines[2])
    bad["session_id"] = "c 1"
    spoiled = tmp_path / "spoiled.jsonl"
    spoiled.write_bytes(b"".join([*lines[:2], json.dumps(bad).encode() + b"\n", *lines[3:]]))
    other = {"TIEREDSTORE_NAMESPACE": f"cli-bad-{uuid.uuid4().hex[:8]}"}
    done = cli.run("import", str(spoiled), env=other)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: line 3: ") and done.stderr.count("\n") == 1, done.stderr
    assert cli.json("list", "--archive", env=other)["sessions"] == []  # nothing imported
    huge = tmp_path / "huge.jsonl"
    huge.write_bytes(lines[0] + b'{"type":"message","x":"' + b"x" * (9 * 2**20) + b'"}\n')
    done = cli.run("import", str(huge), env=other)
    assert done.returncode == 1 and done.stderr.startswith("Error: line 2: "), done.stderr


def test_erase_confirmation_and_report(cli: Cli) -> None:
    refused = cli.run("erase", "--user", "alice", input="n\n")
    assert refused.returncode == 1 and "aborted" in refused.stderr
    assert cli.store.exists("c-1")
    report = cli.json("erase", "--user", "alice", "--yes")
    assert report["session_ids"] == ["c-1", "c-2"]
    assert report["redis_sessions"] == 2 and report["archive_sessions"] == 2
    assert not cli.store.exists("c-1") and not cli.store.exists("c-2")
    assert cli.store.exists("c-3")
    assert cli.json("search", "invoice")["hits"][0]["session_id"] == "c-3"


def test_stats(cli: Cli) -> None:
    stats = cli.json("stats")
    assert stats["tiers"] == ["memory", "redis", "archive"]
    assert stats["redis"]["sessions"] == 3
    assert stats["archive"]["sessions"] == 3 and stats["archive"]["messages"] == 7
    assert stats["archive"]["payload_bytes"] > 0
    assert "hit_ratio" in stats["memory"]
    table = cli.run("stats")
    assert table.returncode == 0 and "archive" in table.stdout


def test_errors_are_one_line_with_nonzero_exit(cli: Cli) -> None:
    missing = cli.run("show", "no-such-session")
    assert missing.returncode == 3
    assert missing.stderr.strip() == "Error: session not found: 'no-such-session'"
    # (in write_through mode `list` would fall back to the archive; archive mode cannot)
    dead_redis = cli.run("list", env={"TIEREDSTORE_REDIS_URL": "redis://127.0.0.1:1/0",
                                      "TIEREDSTORE_DURABILITY": "archive"})
    assert dead_redis.returncode == 1
    assert len(dead_redis.stderr.strip().splitlines()) == 1, dead_redis.stderr
    assert "unavailable" in dead_redis.stderr
    dead_db = cli.run("search", "x", env={
        "TIEREDSTORE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"})
    assert dead_db.returncode == 1
    assert len(dead_db.stderr.strip().splitlines()) == 1, dead_db.stderr
    bad_cursor = cli.run("search", "x", "--cursor", "garbage")
    assert bad_cursor.returncode == 1 and "invalid cursor" in bad_cursor.stderr
    bad_time = cli.run("search", "x", "--since", "yesterday-ish")
    assert bad_time.returncode == 2
    no_archive = cli.run("search", "x", env={"TIEREDSTORE_DATABASE_URL": ""})
    assert no_archive.returncode == 1 and "no archive configured" in no_archive.stderr


def test_maintain_retain_and_partitions(cli: Cli, pg_engine: sa.Engine) -> None:
    from tests.conftest import FakeClock
    from tieredstore.tiers.archive import ArchiveStore

    namespace = cli.env["TIEREDSTORE_NAMESPACE"]
    old = ArchiveStore(pg_engine, namespace=namespace, clock=FakeClock(1_740_000_000.0))
    old.save("ancient", [Message("user", "from long ago")])
    old.save("ancient-held", [Message("user", "kept")], metadata={"legal_hold": True})
    old.close()
    dry = cli.json("maintain", "retain", "--retention-days", "30", "--dry-run")
    assert (dry["task"], dry["changed"], dry["messages"], dry["skipped"]) == ("retain", 1, 1, 1)
    assert cli.store.archive is not None and cli.store.archive.exists("ancient")
    done = cli.json("maintain", "retain", env={"TIEREDSTORE_RETENTION_DAYS": "30"})
    assert (done["changed"], done["messages"], done["skipped"]) == (1, 1, 1)
    assert not cli.store.archive.exists("ancient")
    assert cli.store.archive.exists("ancient-held")
    assert len(cli.store.load("c-1")) == 5  # active sessions stay
    ahead = cli.json("maintain", "partitions", "--ahead", "5")
    assert ahead["task"] == "partitions" and ahead["partitions"] >= 0
    again = cli.json("maintain", "partitions", "--ahead", "5")
    assert again["partitions"] == 0  # made once
    missing = cli.run("maintain", "retain")
    assert missing.returncode != 0 and "retention-days" in missing.stderr
    cli.store.delete("ancient-held")


def test_settings_and_urls_at_fault_are_named_in_one_line(cli: Cli) -> None:
    _one_line_error(cli.run("list", env={"TIEREDSTORE_MAX_MESSAGES": "abc"}), 1,
                    "TIEREDSTORE_MAX_MESSAGES", "'abc'")
    _one_line_error(cli.run("list", env={"TIEREDSTORE_BUCKETS": "1.5"}), 1,
                    "TIEREDSTORE_BUCKETS")
    _one_line_error(cli.run("maintain", "expire", env={"TIEREDSTORE_DEFAULT_TTL": "soon"}), 1,
                    "TIEREDSTORE_DEFAULT_TTL", "a number")
    _one_line_error(cli.run("list", env={"TIEREDSTORE_DATABASE_URL": "nope://"}), 1,
                    "no database driver", "nope://")
    _one_line_error(cli.run("migrate", "--database-url", "::::"), 1, "not a database URL")
    _one_line_error(cli.run("migrate", "--database-url", "bogus://x"), 1, "bogus")
    _one_line_error(cli.run("migrate", "--revision", "bogus"), 2, "--revision", "bogus")
    older = cli.run("migrate", "--revision", "0001")  # the archive is at head: refused
    _one_line_error(older, 1, "only upgrades")
    reached = cli.run("migrate")
    assert reached.returncode == 0 and reached.stdout.strip() == "archive at 0005"
    _one_line_error(cli.run("export", "--session", "c-1", "--session", "nope"), 3, "'nope'")


def test_bad_directories_drivers_and_settings_are_named_in_one_line(
    cli: Cli, tmp_path: Path
) -> None:
    nowhere = f"sqlite:///{tmp_path / 'no' / 'such'}/archive.db"
    _one_line_error(cli.run("migrate", "--database-url", nowhere), 1, "--database-url",
                    "does not exist")
    _one_line_error(cli.run("migrate", env={"TIEREDSTORE_DATABASE_URL": nowhere}), 1,
                    "TIEREDSTORE_DATABASE_URL", "does not exist")
    _one_line_error(cli.run("migrate", env={"TIEREDSTORE_DATABASE_URL": ""}), 2,
                    "--database-url", "TIEREDSTORE_DATABASE_URL")
    _one_line_error(cli.run("list", env={"TIEREDSTORE_DATABASE_URL": "mysql://h/db"}), 1,
                    "TIEREDSTORE_DATABASE_URL", "no database driver")
    _one_line_error(cli.run("migrate", "--database-url", "mysql://h/db"), 1, "--database-url",
                    "no database driver")
    _one_line_error(cli.run("list", env={"TIEREDSTORE_REDIS_URL": "http://h"}), 1,
                    "TIEREDSTORE_REDIS_URL", "'http://'")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    embedded = {"TIEREDSTORE_REDIS_URL": "", "TIEREDSTORE_DATABASE_URL": "",
                "TIEREDSTORE_DATA_DIR": str(a_file)}
    _one_line_error(cli.run("list", env=embedded), 1, "TIEREDSTORE_DATA_DIR", str(a_file))
    _one_line_error(cli.run("demo", env={**embedded, "TIEREDSTORE_DATA_DIR": str(a_file / "d")}),
                    1, "TIEREDSTORE_DATA_DIR")
    for name, value, words in (
        ("TIEREDSTORE_DURABILITY", "always", ("write_through",)),
        ("TIEREDSTORE_DEFAULT_TTL", "-1", ("at least",)),
        ("TIEREDSTORE_BUCKETS", "2000", ("at most 1024",)),
        ("TIEREDSTORE_MEMORY_MAX_BYTES", "-5", ("at least 0",)),
        ("TIEREDSTORE_MIGRATE", "maybe", ("yes",)),
    ):
        _one_line_error(cli.run("stats", env={name: value}), 1, name, *words)
    # Tasks that work on the archive refuse a store without one instead of doing nothing.
    _one_line_error(cli.run("maintain", "retain", "--retention-days", "3", "--database-url", ""),
                    1, "needs an archive", "--database-url")
    _one_line_error(cli.run("maintain", "partitions", "--database-url", ""), 1,
                    "needs an archive")
    _one_line_error(cli.run("maintain", "archive", "--database-url", ""), 1, "archive")
