"""The built wheel: what it installs, and that it works installed, beside an app's own modules.

The wheel is built once from the source tree. Installed tests run it from a
fresh virtual environment whose only tieredstore is the wheel's (its
dependencies come from this test run's environment through a path entry,
which does not pull in the source tree), in a directory that holds an
application's own ``worker.py`` and ``migrations/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tieredstore" / "tiers" / "redis" / "scripts"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = dist.glob("tieredstore-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; its python."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # This run's packages as a plain path entry: their .pth files (an editable
    # install of the source tree among them) are not processed from there.
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """An application's directory with a ``worker.py`` and a ``migrations/`` of its own."""
    (tmp_path / "worker.py").write_text("APP_WORKER = True\n")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "__init__.py").write_text("APP_MIGRATIONS = True\n")
    return tmp_path


def test_the_wheel_installs_tieredstore_alone(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"tieredstore", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}"
                   ".dist-info"}
    assert "tieredstore/worker/tasks.py" in names
    assert "tieredstore/migrations/env.py" in names
    assert "tieredstore/worker.py" not in names  # the source checkout's stand-in


def test_the_wheel_says_which_pythons_and_bounds_its_dependencies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(meta).decode().splitlines()
    assert "Requires-Python: >=3.11" in lines
    for version in ("3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}" in lines
    requires = [line for line in lines if line.startswith("Requires-Dist:")]
    assert requires and all("<" in line for line in requires if "extra ==" not in line)


def test_the_wheel_ships_every_lua_script_and_they_load(wheel: Path, tmp_path: Path) -> None:
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


def test_installed_modules_shadow_nothing_of_the_app(installed: Path, app_dir: Path) -> None:
    probe = (
        "import json, worker, migrations, tieredstore, tieredstore.worker as w\n"
        "from tieredstore.migration import migrations_dir\n"
        "w.app.loader.import_default_modules()\n"
        "print(json.dumps([worker.APP_WORKER, migrations.APP_MIGRATIONS, tieredstore.__file__,\n"
        "                  w.__file__, str(migrations_dir()), sorted(w.app.tasks)]))"
    )
    out = subprocess.run([str(installed), "-c", probe], cwd=app_dir, check=True,
                         capture_output=True, text=True, timeout=120,
                         env={**_clean_env(), "TIEREDSTORE_REDIS_URL": REDIS_URL})
    app_worker, app_migrations, package, worker_file, migrations, tasks = json.loads(out.stdout)
    assert app_worker is True and app_migrations is True
    site = str(installed.parent.parent)
    assert package.startswith(site) and worker_file.startswith(site)
    assert migrations.startswith(site) and migrations.endswith("tieredstore/migrations")
    assert "tieredstore.expire" in tasks


def test_the_installed_worker_and_beat_run_beside_an_app_worker(
        installed: Path, app_dir: Path, pg_database: Callable[[], str],
        redis_client: redis.Redis, redis_prefix: str) -> None:
    """``migrate``, then ``celery -A tieredstore.worker`` worker and beat, as documented."""
    url = pg_database()
    namespace = f"wheel-{uuid.uuid4().hex[:8]}"
    queue = f"tswheel-{uuid.uuid4().hex[:8]}"
    env = {**_clean_env(), "TIEREDSTORE_REDIS_URL": REDIS_URL, "TIEREDSTORE_DATABASE_URL": url,
           "TIEREDSTORE_NAMESPACE": namespace, "TIEREDSTORE_PREFIX": redis_prefix,
           "TIEREDSTORE_QUEUE": queue, "TIEREDSTORE_BROKER_URL": _broker(),
           "TIEREDSTORE_EXPIRE_INTERVAL": "1", "TIEREDSTORE_LOCK_TTL": "5",
           "TIEREDSTORE_TIME_BUDGET": "2"}
    migrated = subprocess.run([str(installed), "-m", "tieredstore", "migrate"], cwd=app_dir,
                              env=env, capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    celery = [str(installed), "-m", "celery", "-A", "tieredstore.worker"]
    procs = [
        subprocess.Popen([*celery, "worker", "-P", "solo", "-Q", queue, "--without-mingle",
                          "--without-gossip", "--without-heartbeat", "-n",
                          f"{queue}@%h"], cwd=app_dir, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([*celery, "beat", "-s", str(app_dir / "beat-schedule"), "--pidfile="],
                         cwd=app_dir, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]
    runs_key = f"{redis_prefix}:{namespace}:maint:runs"
    try:
        for _ in range(400):  # bounded wait: a run appears in the worker's run log
            if redis_client.llen(runs_key):
                break
            assert all(p.poll() is None for p in procs), "worker or beat exited"
            time.sleep(0.1)
        runs = [json.loads(r) for r in redis_client.lrange(runs_key, 0, -1)]
        assert any(run["task"] == "expire" for run in runs), runs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        redis_client.delete(runs_key)
        broker = redis.Redis.from_url(_broker())
        for key in broker.scan_iter(match=f"*{queue}*"):
            broker.delete(key)
        broker.close()


def _broker() -> str:
    return REDIS_URL.rsplit("/", 1)[0] + "/13"


def _clean_env() -> dict[str, str]:
    """This process's environment without Python path settings or tieredstore settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TIEREDSTORE_", "PYTHON", "VIRTUAL_ENV"))}
