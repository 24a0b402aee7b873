"""docker-compose.yml and the Dockerfile name services, modules and settings that exist.

There is no Docker engine in CI, so this checks the file against the package:
the services and their health checks are there, every command names an
importable module or a console script with that sub-command, and every
``TIEREDSTORE_*`` variable it sets is one the code reads.
"""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"redis", "postgres", "migrate", "worker", "beat"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _argv(command: Any) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    # ${VAR:-default} interpolation as compose does it with VAR unset
    return [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", a) for a in argv]


def _console_scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["scripts"])


def test_services_exist_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= SERVICES
    for name in ("redis", "postgres", "worker", "beat"):
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
    assert services["migrate"]["restart"] == "no", "migrate is a one-shot service"
    for name in ("worker", "beat"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully"
        assert needs["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    volumes = set(compose["volumes"])
    for name in ("redis", "postgres", "beat"):
        mounts = compose["services"][name]["volumes"]
        assert any(str(m).split(":")[0] in volumes for m in mounts), name


def test_celery_commands_name_the_worker_app(compose: dict[str, Any]) -> None:
    from celery import Celery

    for name, subcommand in (("worker", "worker"), ("beat", "beat")):
        argv = _argv(compose["services"][name]["command"])
        assert argv[:2] == ["celery", "-A"], argv
        module = importlib.import_module(argv[2])
        assert isinstance(module.app, Celery), f"{argv[2]}.app is not a Celery app"
        assert argv[3] == subcommand
        app = module.app
        schedule = app.conf.beat_schedule
        assert schedule, "the app has no beat schedule"
        app.loader.import_default_modules()
        for entry in schedule.values():
            assert entry["task"] in app.tasks, f"beat names unknown task {entry['task']}"
    worker_argv = _argv(compose["services"]["worker"]["command"])
    queue = next(a.split("=", 1)[1] for a in worker_argv if a.startswith("--queues="))
    env = compose["services"]["worker"]["environment"]
    assert _argv([env["TIEREDSTORE_QUEUE"]]) == [queue], "the worker must consume the task queue"


def test_console_script_commands_exist(compose: dict[str, Any]) -> None:
    import click

    scripts = _console_scripts()
    argv = _argv(compose["services"]["migrate"]["command"])
    assert argv[0] in scripts, f"{argv[0]} is not a console script in pyproject.toml"
    module_name, function = scripts[argv[0]].split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function))
    group = module.cli
    assert isinstance(group, click.Group)
    assert argv[1] in group.commands, f"`{argv[0]} {argv[1]}` is not a command"


def test_health_checks_import_what_exists(compose: dict[str, Any]) -> None:
    for name in ("worker", "beat"):
        text = " ".join(_argv(compose["services"][name]["healthcheck"]["test"]))
        for module in re.findall(r"(?:-A|import)\s+([a-z_][a-z0-9_.]*)", text):
            importlib.import_module(module)


def test_environment_names_settings_the_code_reads(compose: dict[str, Any]) -> None:
    sources = [*(ROOT / "tieredstore").rglob("*.py"), *(ROOT / "worker").rglob("*.py")]
    read = {name for path in sources
            for name in re.findall(r"TIEREDSTORE_[A-Z_]+", path.read_text())}
    env = compose["x-tieredstore"]["environment"]
    unknown = {name for name in env if name not in read}
    assert not unknown, f"compose sets variables nothing reads: {sorted(unknown)}"
    for name in ("migrate", "worker", "beat"):
        assert compose["services"][name]["environment"] == env


def test_image_build_ships_the_packages() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("tieredstore", "worker", "migrations"):
        assert f"COPY {package} ./{package}" in dockerfile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["tieredstore"]  # nothing else at the top level
    assert wheel["force-include"] == {"worker": "tieredstore/worker",
                                      "migrations": "tieredstore/migrations"}


def _default(value: str) -> str:
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_documented_test_url_matches_the_compose_postgres(compose: dict[str, Any]) -> None:
    """The README's "tests against compose" instructions can work as written: the
    servers it starts exist, and its admin URL uses the compose PostgreSQL's
    default user, password and published port, and a database the image creates."""
    readme = (ROOT / "README.md").read_text()
    up = re.search(r"docker compose up -d (?:--wait )?([a-z ]+)\n", readme)
    assert up is not None
    assert set(up.group(1).split()) <= set(compose["services"])
    match = re.search(r"TIEREDSTORE_TEST_PG_URL=(\S+)", readme)
    assert match is not None
    import sqlalchemy as sa

    url = sa.make_url(match.group(1))
    postgres = compose["services"]["postgres"]
    env = {key: _default(str(value)) for key, value in postgres["environment"].items()}
    assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert url.database in {"postgres", env["POSTGRES_DB"]}
    published = [str(port).rsplit(":", 2) for port in postgres["ports"]]
    assert [url.host, str(url.port or 5432)] in [p[:2] for p in published]
    assert "redis" in up.group(1).split() and "postgres" in up.group(1).split()


def test_compose_v2_is_stated() -> None:
    assert "Compose v2" in (ROOT / "README.md").read_text()
    assert "Compose v2" in (ROOT / "docker-compose.yml").read_text()
