"""The OpenAI Agents SDK's own session tests, run against ``TieredSession``.

The source distribution of the installed ``openai-agents`` is downloaded
once (``pip download --no-binary :all:``) into the user cache directory
(``$XDG_CACHE_HOME/tieredstore``, else ``~/.cache/tieredstore``; nothing of it
enters this repository). Its generic session test files and the modules of its
``tests`` package they import are copied into a temporary directory, with
``tests/sdk_sessions/shim_conftest.py`` as its root ``conftest.py``, which
makes every session those tests build a ``TieredSession`` over the real Redis
and PostgreSQL of this run (its own key prefix and a scratch database, both
removed afterwards). They run with pytest in a subprocess, bounded in time;
the test asserts no failure or error and at least :data:`EXPECTED_PASSED`
passes. Without the download it fails when ``CI=true`` and skips otherwise.

:data:`EXCLUDED` lists the SDK tests left out and why: each inspects the
internals of the backend it was written for (SQLite connections and rows,
SQLAlchemy tables and engines, Redis keys, pipelines and pools), which
``TieredSession`` does not have; tests that only instrument such internals
are left out even where they would pass vacuously.

With ``fakeredis`` installed (the test extra) the SDK's Redis tests hand
their sessions a ``FakeRedis`` client; the shim uses only its identity, to
choose the namespace, so those sessions too are ``TieredSession`` objects on
the real servers. Without it those tests skip themselves, as in the SDK (a
failure when ``CI=true``), and fewer passes are expected.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.conftest import REDIS_URL

SHIM = Path(__file__).parent / "sdk_sessions" / "shim_conftest.py"

#: The SDK test files run, relative to its ``tests/`` directory.
TEST_FILES = [
    "memory/test_session.py",
    "memory/test_session_limit.py",
    "extensions/memory/test_sqlalchemy_session.py",
    "extensions/memory/test_redis_session.py",
]

_SQLITE = "reads SQLiteSession's connections, rows or locks"
_SQLALCHEMY = "reads SQLAlchemySession's tables, engine or table-creation locks"
_REDIS_CLIENT = "patches or reads RedisSession's own client or helpers (_redis, _get_next_id, ...)"
_REDIS_OWNERSHIP = "reads or sets RedisSession's client-ownership flag by hand"
_REDIS_KEYS = "reads or writes RedisSession's keys (layout, metadata hash, counter, raw entries)"
_REDIS_CLUSTER = "drives RedisSession over a RedisCluster client with patched commands"
_REDIS_PIPELINE = "instruments RedisSession's redis-py pipelines, WATCH retries or reply callbacks"
_REDIS_POOL = "instruments the redis-py pool, connections or release events under RedisSession"

#: ``{file: {test: why it is left out}}``.
EXCLUDED: dict[str, dict[str, str]] = {
    "memory/test_session.py": dict.fromkeys(
        [
            "test_sqlite_session_close_closes_worker_thread_connections",
            "test_sqlite_session_reaps_connections_from_exited_worker_threads",
            "test_sqlite_session_closes_retired_connections_before_the_next_allocation",
            "test_sqlite_session_keeps_connections_of_live_worker_threads",
            "test_sqlite_session_pop_item_skips_corrupt_most_recent",
            "test_sqlite_session_pop_item_returns_none_after_dropping_only_corrupt_rows",
            "test_sqlite_session_get_items_limit_skips_corrupt_newest_rows",
            "test_sqlite_session_get_items_session_settings_limit_skips_corrupt_rows",
            "test_sqlite_session_file_lock_is_shared_across_instances",
            "test_sqlite_session_failed_add_items_releases_write_lock",
            "test_sqlite_session_failed_clear_session_rolls_back",
            "test_sqlite_session_failed_pop_item_releases_write_lock",
            "test_sqlite_session_rollback_failure_evicts_connection",
            "test_sqlite_session_close_retries_quarantined_connection",
            "test_sqlite_session_post_commit_cancellation_propagates_after_known_outcome",
        ],
        _SQLITE,
    ),
    "extensions/memory/test_sqlalchemy_session.py": dict.fromkeys(
        [
            "test_sqlalchemy_session_defaults_to_escaped_non_ascii_storage",
            "test_sqlalchemy_session_can_store_non_ascii_without_escaping",
            "test_sqlite_fallback_reserves_writer_before_tail_claim",
            "test_pop_item_supports_unknown_delete_rowcount",
            "test_pop_item_retries_returning_claim_lost_to_concurrent_delete",
            "test_mutation_cancellation_waits_for_transaction_exit",
            "test_pop_item_skips_corrupt_most_recent",
            "test_get_items_limit_skips_corrupt_newest_rows",
            "test_pop_item_returns_none_after_dropping_only_corrupt_rows",
            "test_add_items_waits_for_transient_sqlite_write_lock",
            "test_add_items_cancelled_waiter_does_not_strand_table_init_lock",
            "test_create_tables_false_does_not_allocate_shared_init_lock",
            "test_get_items_same_timestamp_consistent_order",
            "test_pop_item_same_timestamp_returns_latest",
            "test_get_items_orders_by_id_for_ties",
            "test_engine_property_from_url",
            "test_engine_property_from_external_engine",
            "test_engine_property_is_read_only",
            "test_sqlite_configuration_registry_releases_collected_engines",
            "test_sqlite_configuration_registry_does_not_grow_unbounded",
        ],
        _SQLALCHEMY,
    ),
    "extensions/memory/test_redis_session.py": {
        **dict.fromkeys(
            [
                "test_mutation_cancellation_waits_for_authoritative_outcome",
                "test_get_next_id_method",
                "test_ping_connection_failure",
                "test_redis_session_failed_cleanup_is_terminal_and_retried",
                "test_redis_session_cancelled_cleanup_is_terminal_and_retried",
                "test_redis_session_operation_waiting_behind_close_raises",
                "test_compaction_replaces_redis_history_atomically",
                "test_atomic_replacement_serializes_before_deleting_history",
                "test_compaction_subclass_retains_overridden_storage_methods",
                "test_compaction_cancel_after_redis_commit_invalidates_cached_history",
                "test_cancelled_redis_compaction_handoff_remains_resumable",
            ],
            _REDIS_CLIENT,
        ),
        **dict.fromkeys(
            [
                "test_internal_client_ownership",
                "test_close_method_coverage",
            ],
            _REDIS_OWNERSHIP,
        ),
        **dict.fromkeys(
            [
                "test_colliding_session_clear_preserves_existing_session",
                "test_colliding_counter_rejects_ttl_write_before_side_effects",
                "test_clear_rechecks_key_types_after_concurrent_replacement",
                "test_released_redis_layout_remains_usable",
                "test_add_items_preserves_created_at_metadata",
                "test_get_items_limit_skips_corrupt_newest_messages",
                "test_corrupted_data_handling",
                "test_add_items_rejects_wrong_metadata_key_type_before_writing",
                "test_atomic_replacement_preserves_clear_add_metadata",
                "test_atomic_replacement_rejects_colliding_counter_key",
            ],
            _REDIS_KEYS,
        ),
        **dict.fromkeys(
            [
                "test_redis_session_rejects_cluster_transactions_before_pipeline",
                "test_redis_cluster_reads_and_subclass_writes",
            ],
            _REDIS_CLUSTER,
        ),
        **dict.fromkeys(
            [
                "test_add_items_applies_ttl_in_the_write_transaction",
                "test_add_items_uses_server_absolute_expiration_after_serialization",
                "test_add_items_refreshes_server_timestamps_after_watch_retry",
                "test_ambiguous_exec_watch_error_is_not_retried",
                "test_post_commit_response_callback_failure_does_not_retry",
                "test_successful_batch_response_with_sibling_error_does_not_retry",
            ],
            _REDIS_PIPELINE,
        ),
        **dict.fromkeys(
            [
                "test_redis81_standard_pool_checkout_records_native_observability",
                "test_redis8_blocking_pool_checkout_preserves_native_timing",
                "test_cancelled_watch_releases_single_connection_pool",
                "test_cancelled_in_flight_watch_command_reconnects_before_pool_reuse",
                "test_cancelled_connection_acquisition_is_discarded_before_release",
                "test_post_commit_cancellation_propagates_after_cleanup",
                "test_post_commit_reset_self_cancellation_does_not_cancel_caller",
                "test_post_commit_reset_failure_detaches_without_release_listener",
                "test_reconnect_required_release_detaches_without_listener_reborrow",
                "test_reconnect_marked_inside_release_failure_is_detached",
                "test_post_commit_release_listener_failure_does_not_retry",
                "test_pre_exec_close_failure_is_quarantined",
                "test_pre_exec_cancellation_skips_pipeline_reset",
                "test_blocking_pool_cancellation_completion_owns_release",
                "test_ordinary_pool_cancellation_completion_owns_release",
                "test_transparent_overridden_pool_release_is_supported",
                "test_release_failure_after_reborrow_preserves_new_borrower",
                "test_post_commit_disconnect_failure_is_not_retryable",
                "test_post_commit_detached_close_failure_is_quarantined",
                "test_blocking_pool_listener_failure_notifies_waiter",
                "test_blocking_pool_detached_disconnect_notifies_waiter",
                "test_post_commit_internal_reset_failure_does_not_report_write_failure",
            ],
            _REDIS_POOL,
        ),
        "test_add_items_rejects_unrepresentable_ttl_before_writing": (
            "expects RedisSession's add-time error for a ttl past Redis's expiry range; "
            "TieredSession refuses such a ttl when it is built (InvalidInput, a ValueError)"
        ),
    },
}

#: Passes expected of the pinned SDK version, with ``fakeredis`` and without
#: (other versions: at least half).
EXPECTED_PASSED = {"0.24.0": {True: 106, False: 100}}

RUN_TIMEOUT = 900.0


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tieredstore" / "openai-agents-sdist"


def _sdist(version: str) -> Path:
    """The cached sdist of ``openai-agents==version``, downloaded if missing."""
    cache = _cache_dir()
    target = cache / f"openai_agents-{version}.tar.gz"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             "--disable-pip-version-check", "--quiet", "-d", download,
             f"openai-agents=={version}"],
            capture_output=True, text=True, timeout=300,
        )
        found = sorted(Path(download).glob("openai_agents-*.tar.gz"))
        if result.returncode != 0 or not found:
            raise RuntimeError(f"pip download failed: {result.stderr.strip()[-2000:]}")
        found[0].replace(target)  # atomic: a cached file is always whole
    return target


def _sdk_tests(sdist: Path, version: str, into: Path) -> None:
    """Copy the test files, ``tests/conftest.py`` and what they import into ``into``."""
    root = PurePosixPath(f"openai_agents-{version}")
    with tarfile.open(sdist) as archive:
        names = {PurePosixPath(name) for name in archive.getnames()}

        def read(path: PurePosixPath) -> str:
            member = archive.extractfile(str(root / path))
            assert member is not None, path
            return member.read().decode()

        pending = [PurePosixPath("tests", f) for f in TEST_FILES]
        pending.append(PurePosixPath("tests/conftest.py"))
        copied: set[PurePosixPath] = set()
        while pending:
            path = pending.pop()
            if path in copied:
                continue
            copied.add(path)
            source = read(path)
            target = into / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source)
            for parent in path.parents:
                init = parent / "__init__.py"
                if root / init in names and init not in copied:
                    pending.append(init)
            pending.extend(m for m in _local_imports(source, path) if root / m in names)


def _local_imports(source: str, path: PurePosixPath) -> list[PurePosixPath]:
    """The modules of the SDK's ``tests`` package that ``source`` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parents[node.level - 1]
                module = ".".join([*base.parts, *(node.module or "").split(".")]).strip(".")
                modules = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif node.module and node.module.startswith("tests."):
                modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names if a.name.startswith("tests.")]
        for module in modules:
            found.append(PurePosixPath(*module.split(".")).with_suffix(".py"))
    return found


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@pytest.fixture
def sdk_version() -> str:
    return importlib.metadata.version("openai-agents")


@pytest.fixture
def sdk_tests(sdk_version: str, tmp_path: Path) -> Iterator[Path]:
    """A directory holding the SDK's chosen tests and the shim; skip/fail without them."""
    try:
        sdist = _sdist(sdk_version)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot obtain the openai-agents {sdk_version} sdist: {exc}")
        pytest.skip(f"cannot obtain the openai-agents {sdk_version} sdist: {exc}")
    run_dir = tmp_path / "sdk"
    _sdk_tests(sdist, sdk_version, run_dir)
    shutil.copy(SHIM, run_dir / "conftest.py")
    (run_dir / "excluded.json").write_text(json.dumps(EXCLUDED))
    (run_dir / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    asyncio: an async test\n    serial: runs alone\n"
        "    allow_call_model_methods: may call real model methods\n"
    )
    yield run_dir


def _run(run_dir: Path, env: dict[str, str]) -> str:
    """Run the copied tests in a subprocess (its own process group), bounded in time."""
    command = [
        sys.executable, "-m", "pytest", *[f"tests/{f}" for f in TEST_FILES],
        "-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:randomly",
        "-c", str(run_dir / "pytest.ini"), "--rootdir", str(run_dir),
        "--junitxml", str(run_dir / "results.xml"), "-W", "ignore::DeprecationWarning",
    ]
    if importlib.util.find_spec("pytest_timeout") is not None:
        command += ["--timeout", "180"]
    process = subprocess.Popen(
        command, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the SDK's tests did not finish in {RUN_TIMEOUT:g} s:\n{output[-5000:]}")
    return output


def _counts(results: Path) -> dict[str, int]:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in ET.parse(results).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, "0"))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


@pytest.mark.slow
def test_the_sdk_session_tests_pass_on_tiered_sessions(
    sdk_tests: Path,
    sdk_version: str,
    pg_database: Any,
    redis_prefix: str,
    request: pytest.FixtureRequest,
) -> None:
    from tieredstore import migrate

    has_fakeredis = _importable("fakeredis.aioredis")  # what the SDK's Redis tests import
    if not has_fakeredis and os.environ.get("CI") == "true":
        pytest.fail("fakeredis (in the test extra) is needed: without it the SDK's "
                    "Redis session tests skip themselves")
    database_url = pg_database()
    migrate(database_url)
    repo = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        # The SDK's ``tests`` package first: this repository has one too.
        "PYTHONPATH": os.pathsep.join(
            [str(sdk_tests), str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "TS_SDK_REDIS_URL": REDIS_URL,
        "TS_SDK_DATABASE_URL": database_url,
        "TS_SDK_PREFIX": redis_prefix,
        "OPENAI_API_KEY": "test-key-not-used",
    }
    started = time.monotonic()
    output = _run(sdk_tests, env)
    seconds = time.monotonic() - started
    assert (sdk_tests / "results.xml").exists(), output[-5000:]
    counts = _counts(sdk_tests / "results.xml")
    summary = f"openai-agents {sdk_version} session tests on TieredSession: {counts}"
    summary += f", {seconds:.0f} s"
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:  # shown even when output is captured
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{summary}")
    else:
        print(summary)
    assert counts["failures"] == 0 and counts["errors"] == 0, output[-20000:]
    by_fakeredis = EXPECTED_PASSED.get(sdk_version)
    if by_fakeredis is None:
        expected = max(n for known in EXPECTED_PASSED.values() for n in known.values()) // 2
    else:
        expected = by_fakeredis[has_fakeredis]
    assert counts["passed"] >= expected, (counts, output[-5000:])
