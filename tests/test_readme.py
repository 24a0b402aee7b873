"""The README's Python examples run as written against real servers.

Every ```python block runs in order (see ``tests/readme_blocks.py``) in a
subprocess whose working directory and data directory are temporary, with a
private redis-server and a fresh PostgreSQL database: only the URLs differ
from what a reader pastes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.readme_blocks import CLUSTER, blocks
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_has_python_blocks() -> None:
    assert len(blocks(README.read_text(encoding="utf-8"))) >= 10


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(
    pg_database: Callable[[], str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    readme = README.read_text(encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "TIEREDSTORE_DATA_DIR": str(tmp_path / "data"),
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
        "OPENAI_API_KEY": "sk-no-network",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # a closed loopback port, never the network
        "README_DATABASE_URL": pg_database(),
    }
    if CLUSTER.search(readme):
        url = request.getfixturevalue("cluster_url")
        env["README_CLUSTER_URL"] = url.replace("redis://", "redis+cluster://", 1)
    for name in list(env):
        if name.startswith("TIEREDSTORE_") and name != "TIEREDSTORE_DATA_DIR":
            del env[name]
    redis = RedisServer().start()
    try:
        env["README_REDIS_URL"] = redis.url
        result = subprocess.run(
            [sys.executable, "-m", "tests.readme_blocks", str(README)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        redis.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(blocks(readme))} blocks ran" in result.stdout
