"""``tieredstore config``: the effective settings, where each came from, and server checks.

Every ``TIEREDSTORE_*`` setting (:data:`tieredstore.config.SETTINGS`) is shown
with its value (passwords in URLs masked) and its source: a command-line
option, the environment, or the default. Each configured server is then
checked, one line each: Redis answers a ping (and the namespace's recorded
bucket count matches), the archive accepts a connection and its schema is at
the revision this version needs. A bad value or a failed check makes the exit
code 1, with one ``Error:`` line on stderr naming what is at fault.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import click

from tieredstore.cli_common import (
    SERVER_OPTIONS,
    console,
    emit_json,
    given_servers,
    one_line,
    server_options,
)
from tieredstore.config import SETTINGS, check_setting, mask_url
from tieredstore.errors import TieredStoreError

__all__ = ["config_command"]

_OPTION_OF = {variable: (name, flag) for name, (flag, variable, _) in SERVER_OPTIONS.items()}
_IGNORED_PREFIX = "TIEREDSTORE_TEST_"  # the test suite's own variables


@dataclass
class _Value:
    name: str
    value: str | None
    source: str
    scope: str
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        shown = mask_url(self.value) if self.value else self.value
        return {"name": self.name, "value": shown, "source": self.source,
                "scope": self.scope, "problem": self.problem}


@dataclass
class _Check:
    server: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "ok": self.ok, "detail": self.detail}


@click.command("config")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Check each configured server (--no-check: contact none).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_options()
def config_command(check: bool, as_json: bool) -> None:
    """Print the effective settings and where each came from; check each server.

    Exit code 1 if a setting is invalid or a configured server fails its check.
    """
    values = _effective(dict(os.environ), given_servers())
    by_name = {v.name: v for v in values}
    unknown = sorted(name for name in os.environ if name.startswith("TIEREDSTORE_")
                     and name not in by_name and not name.startswith(_IGNORED_PREFIX))
    problems = [v.problem for v in values if v.problem]
    problems += _cross_checks(by_name)
    checks = _checks(by_name) if check else []
    problems += [f"{c.server}: {c.detail}" for c in checks if not c.ok]
    if as_json:
        emit_json({"settings": [v.as_dict() for v in values], "unknown": unknown,
                   "checks": [c.as_dict() for c in checks], "ok": not problems})
    else:
        _print(values, unknown, checks)
    if problems:
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise click.ClickException(count + "; ".join(problems))


def _effective(env: dict[str, str], given: dict[str, str]) -> list[_Value]:
    """Each setting's value and source: an option, else the environment, else the default."""
    out: list[_Value] = []
    for setting in SETTINGS:
        option = _OPTION_OF.get(setting.name)
        raw: str | None
        if option is not None and option[0] in given:
            raw, source = given[option[0]], "option"
        elif setting.name in env:
            raw, source = env[setting.name], "environment"
        else:
            raw, source = None, "default"
        label = option[1] if source == "option" and option is not None else None
        problem = check_setting(setting, raw, label) if raw is not None else None
        value = raw if raw else None
        out.append(_Value(setting.name, value if source != "default" else setting.default,
                          source, setting.scope, problem))
    values = {v.name: v for v in out}
    _fill_defaults(values)
    return out


def _fill_defaults(values: dict[str, _Value]) -> None:
    """Defaults that depend on other settings, as the code that reads them works them out."""
    from tieredstore.tiered_shell import default_data_dir

    redis, database = values["TIEREDSTORE_REDIS_URL"], values["TIEREDSTORE_DATABASE_URL"]
    data_dir = values["TIEREDSTORE_DATA_DIR"]
    if data_dir.source == "default" or not data_dir.value:
        data_dir.value = str(default_data_dir())
    if not redis.value and not database.value:
        database.value = f"sqlite:///{data_dir.value.rstrip('/')}/archive.db"
        database.source = "default"
    broker = values["TIEREDSTORE_BROKER_URL"]
    if not broker.value:
        cluster = (redis.value or "").split("://", 1)[0].endswith("+cluster")
        broker.value = (redis.value if redis.value and not cluster
                        else "redis://localhost:6379/0")
        broker.source = "default"
    keep = values["TIEREDSTORE_TRIM_KEEP"]
    if not keep.value:
        keep.value = "true" if database.value else "false"
        keep.source = "default"


def _cross_checks(values: dict[str, _Value]) -> list[str]:
    """Problems no single value shows: the worker's bounds on one another."""
    if any(v.problem for v in values.values() if v.scope == "worker"):
        return []
    from tieredstore.maintenance import MaintenanceSettings

    env = {v.name: v.value for v in values.values()
           if v.source != "default" and v.value is not None}
    try:
        MaintenanceSettings.from_env(env)
    except TieredStoreError as exc:
        return [one_line(exc)]
    return []


def _checks(values: dict[str, _Value]) -> list[_Check]:
    """One check per configured server whose settings are valid."""
    checks: list[_Check] = []
    redis, database = values["TIEREDSTORE_REDIS_URL"], values["TIEREDSTORE_DATABASE_URL"]
    if redis.value and not redis.problem:
        checks.append(_check_redis(redis.value, values))
    if database.value and not database.problem:
        embedded = not redis.value and database.source == "default"
        migrating = (values["TIEREDSTORE_MIGRATE"].value or "0").lower() in ("1", "true", "yes")
        checks.append(_check_archive(database.value, migrating or embedded, embedded))
    return checks


def _check_redis(url: str, values: dict[str, _Value]) -> _Check:
    """Ping Redis and compare the namespace's recorded bucket count with ours."""
    from redis.exceptions import RedisClusterException, RedisError

    from tieredstore.tiers.redis import RedisStore

    shown = mask_url(url)
    try:
        buckets = int(values["TIEREDSTORE_BUCKETS"].value or 16)
        store = RedisStore.from_url(
            url, namespace=values["TIEREDSTORE_NAMESPACE"].value or "default",
            prefix=values["TIEREDSTORE_PREFIX"].value or "ts", buckets=buckets, breaker=False)
    except (TieredStoreError, ValueError) as exc:
        return _Check("redis", False, f"{shown}: {one_line(exc)}")
    try:
        store.client.ping()
        info = store.client.info("server")
        version = info.get("redis_version") if isinstance(info, dict) else None
        recorded = store.client.get(store.keys.layout)
    except (RedisError, RedisClusterException, OSError) as exc:
        return _Check("redis", False, f"{shown}: {one_line(exc)}")
    finally:
        store.close()
    detail = f"{shown}: Redis {version or '?'} answers"
    if recorded is not None and int(recorded) != buckets:
        return _Check("redis", False, f"{detail}, but namespace "
                      f"{store.keys.namespace!r} has {int(recorded)} buckets there and "
                      f"TIEREDSTORE_BUCKETS is {buckets}")
    return _Check("redis", True, detail)


def _check_archive(url: str, migrates: bool, embedded: bool) -> _Check:
    """Connect to the archive and compare its schema revision with this version's head."""
    from pathlib import Path

    import sqlalchemy as sa

    from tieredstore.migration import current_revision, head_revision
    from tieredstore.schema import normalize_url
    from tieredstore.tiers.archive.engines import create_engine

    parsed = normalize_url(url)
    shown = parsed.render_as_string(hide_password=True)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and not Path(parsed.database).exists():
        if migrates:  # connecting would create an empty file; the store makes it itself
            return _Check("archive", True, f"{shown}: not created yet (made and migrated "
                                           "on first use)")
        return _Check("archive", False, f"{shown}: no such file (run tieredstore migrate)")
    engine = create_engine(parsed, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = "select sqlite_version()" if sqlite else "show server_version"
            version = conn.exec_driver_sql(query).scalar()
            revision = current_revision(conn)
    except sa.exc.SQLAlchemyError as exc:
        return _Check("archive", False, f"{shown}: {one_line(exc)}")
    finally:
        engine.dispose()
    server = f"{'SQLite' if sqlite else 'PostgreSQL'} {version}"
    head = head_revision()
    if revision is not None and not _known(revision):
        return _Check("archive", False, f"{shown}: {server}, schema at {revision}, which "
                                        "this version does not know (a newer one migrated it?)")
    if revision == head:
        return _Check("archive", True, f"{shown}: {server}, schema at {revision} (head)")
    if migrates:
        return _Check("archive", True, f"{shown}: {server}, schema at {revision or 'none'}; "
                                       f"upgraded to {head} on first use")
    if revision is None:
        return _Check("archive", False, f"{shown}: {server}, no tieredstore tables "
                                        "(run tieredstore migrate)")
    return _Check("archive", False, f"{shown}: {server}, schema at {revision}, this "
                                    f"version needs {head} (run tieredstore migrate)")


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from tieredstore.migration import config

    try:
        return ScriptDirectory.from_config(config()).get_revision(revision) is not None
    except CommandError:
        return False


def _print(values: list[_Value], unknown: list[str], checks: list[_Check]) -> None:
    from rich.table import Table

    table = Table("setting", "value", "source", "problem")
    for v in values:
        shown = v.as_dict()
        table.add_row(v.name, shown["value"] or "-", v.source, v.problem or "")
    for name in unknown:
        table.add_row(name, mask_url(os.environ[name]), "environment",
                      "unknown setting (a typo?)")
    console().print(table, markup=False)
    for c in checks:
        click.echo(f"{c.server:<8} {'ok' if c.ok else 'FAILED':<7} {c.detail}")

