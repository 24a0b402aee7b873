"""The server options, ``config``, ``demo --json``, ``import --skip-existing`` and
``erase``'s count and progress, each run as a subprocess against the real servers."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.cli_harness import COMMAND, ROOT, Cli, cli_namespace, one_line_error
from tests.conftest import REDIS_URL
from tieredstore.migration import head_revision

DEAD_REDIS = "redis://127.0.0.1:1/0"
DEAD_PG = "postgresql://postgres@127.0.0.1:1/nothing"


@pytest.fixture
def cli(pg_url: str, pg_engine: sa.Engine, redis_client: Any, redis_prefix: str) -> Iterator[Cli]:
    with cli_namespace(pg_url, pg_engine, redis_client, redis_prefix) as harness:
        yield harness


def test_server_options_override_the_environment(cli: Cli, pg_url: str) -> None:
    wrong = {"TIEREDSTORE_REDIS_URL": DEAD_REDIS, "TIEREDSTORE_DATABASE_URL": DEAD_PG,
             "TIEREDSTORE_NAMESPACE": "elsewhere", "TIEREDSTORE_DURABILITY": "archive"}
    servers = ["--redis-url", REDIS_URL, "--database-url", pg_url, "--namespace", cli.namespace]
    after = cli.json("list", *servers, env=wrong)  # options after the command
    assert sorted(after["ids"]) == ["c-1", "c-2", "c-3"]
    before = cli.run(*servers, "list", "--json", env=wrong)  # on the group
    assert before.returncode == 0, before.stderr
    assert sorted(json.loads(before.stdout)["ids"]) == ["c-1", "c-2", "c-3"]
    # The command's option wins over the group's.
    mixed = cli.run("--namespace", "elsewhere", "show", "c-2", "--namespace", cli.namespace,
                    "--json")
    assert mixed.returncode == 0 and json.loads(mixed.stdout)["id"] == "c-2", mixed.stderr
    assert cli.json("search", "invoice", "--database-url", pg_url,
                    env={"TIEREDSTORE_DATABASE_URL": DEAD_PG})["hits"]
    # An empty URL leaves the tier out.
    assert cli.json("stats", "--redis-url", "")["tiers"] == ["memory", "archive"]
    expired = cli.run("maintain", "--namespace", cli.namespace, "--database-url", pg_url,
                      "expire", "--redis-url", REDIS_URL, "--json", env=wrong)
    assert expired.returncode == 0 and json.loads(expired.stdout)["task"] == "expire", (
        expired.stderr)
    migrated = cli.run("--database-url", pg_url, "migrate",
                       env={"TIEREDSTORE_DATABASE_URL": ""})
    assert migrated.stdout.strip() == f"archive at {head_revision()}", migrated.stderr
    # An option's bad value is reported under the option's name.
    one_line_error(cli.run("list", "--redis-url", "http://x"), 1, "--redis-url", "http://")
    one_line_error(cli.run("--database-url", "nope://", "list"), 1, "--database-url")
    one_line_error(cli.run("show", "c-1", "--namespace", "a:b"), 1, "namespace", "'a:b'")


def _settings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in report["settings"]}


def test_config_prints_the_settings_and_their_sources(cli: Cli, pg_url: str) -> None:
    report = cli.json("config", "--no-check", "--redis-url", "redis://:s3cret@127.0.0.1:6379/0",
                      env={"TIEREDSTORE_BATCH_SIZE": "250", "TIEREDSTORE_REDIS_UR": "typo"})
    settings = _settings(report)
    assert settings["TIEREDSTORE_REDIS_URL"]["source"] == "option"
    assert settings["TIEREDSTORE_REDIS_URL"]["value"] == "redis://:***@127.0.0.1:6379/0"
    assert settings["TIEREDSTORE_DATABASE_URL"] == {
        "name": "TIEREDSTORE_DATABASE_URL", "value": pg_url, "source": "environment",
        "scope": "store", "problem": None}
    assert settings["TIEREDSTORE_BATCH_SIZE"]["value"] == "250"
    assert (settings["TIEREDSTORE_QUEUE"]["value"], settings["TIEREDSTORE_QUEUE"]["source"]) == (
        "tieredstore", "default")
    assert settings["TIEREDSTORE_BROKER_URL"]["value"] == "redis://:***@127.0.0.1:6379/0"
    assert report["unknown"] == ["TIEREDSTORE_REDIS_UR"] and report["checks"] == []
    assert report["ok"] is True

    checked = cli.json("config")
    assert [(c["server"], c["ok"]) for c in checked["checks"]] == [
        ("redis", True), ("archive", True)]
    assert f"schema at {head_revision()} (head)" in checked["checks"][1]["detail"]
    table = cli.run("config")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.startswith("redis    ok") for line in lines), table.stdout
    assert any(line.startswith("archive  ok") for line in lines), table.stdout
    assert "TIEREDSTORE_NAMESPACE" in table.stdout and cli.namespace in table.stdout

    embedded = cli.json("config", "--no-check", env={
        "TIEREDSTORE_REDIS_URL": "", "TIEREDSTORE_DATABASE_URL": "",
        "TIEREDSTORE_DATA_DIR": "/srv/ts"})
    assert _settings(embedded)["TIEREDSTORE_DATABASE_URL"]["value"] == (
        "sqlite:////srv/ts/archive.db")


def test_config_fails_on_a_bad_setting_or_server(
    cli: Cli, pg_database: Callable[[], str], tmp_path: Path
) -> None:
    dead = cli.run("config", "--redis-url", DEAD_REDIS)
    one_line_error(dead, 1, "redis", "127.0.0.1:1")
    assert any(line.startswith("redis    FAILED") for line in dead.stdout.splitlines())
    assert any(line.startswith("archive  ok") for line in dead.stdout.splitlines())
    one_line_error(cli.run("config", "--database-url", DEAD_PG), 1, "archive", "127.0.0.1")
    bare = pg_database()  # a database without the tieredstore tables
    one_line_error(cli.run("config", "--database-url", bare), 1, "run tieredstore migrate")
    one_line_error(cli.run("config", env={"TIEREDSTORE_MAX_MESSAGES": "abc"}), 1,
                   "TIEREDSTORE_MAX_MESSAGES", "'abc'")
    one_line_error(cli.run("config", "--no-check", env={"TIEREDSTORE_DURABILITY": "always"}), 1,
                   "TIEREDSTORE_DURABILITY", "write_through")
    one_line_error(cli.run("config", "--no-check", env={"TIEREDSTORE_TIME_BUDGET": "600"}), 1,
                   "TIEREDSTORE_LOCK_TTL", "TIEREDSTORE_TIME_BUDGET")
    missing = tmp_path / "none.db"
    one_line_error(cli.run("config", "--redis-url", "", "--database-url",
                           f"sqlite:///{missing}"), 1, "no such file")
    assert not missing.exists()  # checking does not create it
    report = cli.run("config", "--json", "--redis-url", DEAD_REDIS)
    assert report.returncode == 1 and json.loads(report.stdout)["ok"] is False


def test_demo_json_is_one_document(cli: Cli, tmp_path: Path) -> None:
    served = cli.json("demo")
    assert served["tiers"] == ["memory", "redis", "archive"]
    assert [r["tier"] for r in served["reads"]] == ["redis", "memory"]
    assert [m["role"] for m in served["messages"]] == ["system", "user", "assistant"]
    assert served["stats"]["memory"]["hits"] >= 1
    embedded = cli.json("demo", env={"TIEREDSTORE_REDIS_URL": "", "TIEREDSTORE_DATABASE_URL": "",
                                     "TIEREDSTORE_DATA_DIR": str(tmp_path)})
    assert embedded["tiers"] == ["memory", "archive"]
    assert (tmp_path / "archive.db").exists()


def test_import_twice_names_the_sessions_and_skips_existing(cli: Cli, tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice.jsonl", tmp_path / "bob.jsonl"
    assert cli.run("export", "--user", "alice", "-o", str(alice)).returncode == 0
    assert cli.run("export", "--user", "bob", "-o", str(bob)).returncode == 0
    other = {"TIEREDSTORE_NAMESPACE": f"cli-skip-{uuid.uuid4().hex[:8]}"}
    assert cli.run("import", str(alice), env=other).returncode == 0
    again = one_line_error(cli.run("import", str(alice), env=other), 1, "line 1",
                           "'c-1'", "'c-2'", "2 of the file's 2", "--skip-existing")
    assert "nothing was imported" in again
    piped = cli.run("import", "-", input=alice.read_text(), env=other)  # cannot be read twice
    one_line_error(piped, 1, "line 1", "'c-1'", "--skip-existing")

    both = tmp_path / "both.jsonl"
    both.write_bytes(alice.read_bytes() + bob.read_bytes())
    counts = cli.json("import", str(both), "--skip-existing", env=other)
    assert counts == {"sessions": 1, "messages": 1, "skipped": ["c-1", "c-2"]}
    assert [s["session_id"] for s in cli.json("list", "--archive", "--user", "bob",
                                              env=other)["sessions"]] == ["c-3"]
    done = cli.run("import", str(both), "--skip-existing", env=other)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("imported 0 session(s), 0 message(s); skipped 3")

    # Skipped lines still count: an error names the file's own line number.
    lines = both.read_bytes().splitlines(keepends=True)
    spoiled = tmp_path / "spoiled.jsonl"
    spoiled.write_bytes(b"".join([*lines, b'{"type":"nonsense"}\n']))
    one_line_error(cli.run("import", str(spoiled), "--skip-existing", env=other), 1,
                   f"line {len(lines) + 1}:")
    assert cli.run("erase", "--user", "alice", "--yes", env=other).returncode == 0
    assert cli.run("erase", "--user", "bob", "--yes", env=other).returncode == 0


def _run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=follower,
                               stdin=subprocess.DEVNULL, env={**env, "TERM": "xterm"}, cwd=ROOT)
    os.close(follower)
    seen = bytearray()
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, "no output from the command for a minute"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the command closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    return process.wait(timeout=60), stdout, seen.decode(errors="replace")


def test_erase_says_how_many_and_shows_progress(cli: Cli) -> None:
    refused = cli.run("erase", "--user", "alice", input="n\n")
    assert refused.returncode == 1 and "Erase 2 session(s) of user 'alice'" in refused.stderr
    assert cli.store.exists("c-1")
    code, stdout, terminal = _run_on_a_terminal(["erase", "--user", "alice", "--yes"], cli.env)
    assert code == 0, terminal
    assert "erasing 2 session(s) of user 'alice' from every tier" in terminal
    assert "2/2" in terminal, terminal  # the progress display
    assert stdout.startswith("erased user 'alice': 2 session(s)")
    assert not cli.store.exists("c-1") and cli.store.exists("c-3")
    nothing = cli.run("erase", "--user", "alice", "--json")  # nothing left: no question asked
    assert nothing.returncode == 0 and "has no sessions" in nothing.stderr
    assert json.loads(nothing.stdout)["session_ids"] == []
    piped = cli.run("erase", "--user", "bob", "--yes", "--json")
    assert piped.returncode == 0 and "erasing 1 session(s) of user 'bob'" in piped.stderr
    assert "━" not in piped.stderr  # no progress display off a terminal
