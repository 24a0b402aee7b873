"""The built wheel carries the Redis tier's Lua scripts and loads them from there."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tieredstore" / "tiers" / "redis" / "scripts"


@pytest.mark.slow
def test_the_wheel_ships_every_lua_script_and_they_load(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("tieredstore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    expected = {f"tieredstore/tiers/redis/scripts/{p.relative_to(SCRIPTS).as_posix()}"
                for p in SCRIPTS.rglob("*.lua")}
    assert expected and expected <= names
    # Import the copy inside the wheel, not the source tree: every script expands.
    probe = (
        "import tieredstore.tiers.redis.scripts as s, sys; "
        "assert s.__file__.startswith(sys.argv[1]), s.__file__; "
        "assert all('@include' not in src for src in s.SCRIPTS.values()); "
        "print(len(s.SCRIPTS))"
    )
    site = str(tmp_path / "site")
    out = subprocess.run(
        [sys.executable, "-c", probe, site], env={"PYTHONPATH": site}, cwd=tmp_path,
        check=True, capture_output=True, text=True, timeout=120,
    )
    assert int(out.stdout) == len(list(SCRIPTS.glob("*.lua")))
