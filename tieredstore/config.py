"""Limits and settings shared by every store, and the table of ``TIEREDSTORE_*`` settings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tieredstore.errors import InvalidInput

__all__ = [
    "REDIS_SCHEMES",
    "SETTINGS",
    "Limits",
    "Setting",
    "check_setting",
    "env_number",
    "mask_url",
]

T = TypeVar("T", int, float)
D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits enforced before anything is written.

    ``max_message_bytes`` bounds one encoded message, ``max_messages_per_call``
    the messages in one ``save``/``append``, ``max_call_bytes`` their total
    encoded size, and ``max_metadata_bytes`` a session's encoded metadata.
    """

    max_message_bytes: int = 4 * 2**20
    max_messages_per_call: int = 10_000
    max_call_bytes: int = 64 * 2**20
    max_metadata_bytes: int = 64 * 2**10
    max_session_id_length: int = 256

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"Limits.{spec.name} must be a positive integer, got {value!r}")


DEFAULT_BUCKETS = 16
"""Redis buckets per namespace unless a store is told otherwise (see
:mod:`tieredstore.tiers.redis.keys`)."""


def env_number(env: Mapping[str, str], name: str, kind: type[T], default: D) -> T | D:
    """The ``TIEREDSTORE_*`` variable ``name`` as an ``int`` or a ``float``; ``default`` unset.

    A value that does not parse raises :class:`InvalidInput` naming the
    variable, so an operator sees which setting is wrong.
    """
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise InvalidInput(f"{name} must be {noun}, got {raw!r}") from None


SettingKind = Literal[
    "redis_url", "database_url", "url", "int", "float", "flag", "choice", "text", "path"
]
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
"""The URL schemes a Redis tier accepts (``+cluster``: a Redis Cluster, any node)."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One ``TIEREDSTORE_*`` variable: its kind, its default as documented, who reads it.

    ``default`` is ``None`` when unset means "none" (no Redis tier, no TTL,
    ...); ``low`` and ``high`` bound the numbers accepted; ``choices`` are
    the words a ``flag`` or ``choice`` accepts (case-insensitive).
    """

    name: str
    kind: SettingKind
    default: str | None
    scope: Literal["store", "worker"] = "store"
    low: float | None = None
    choices: tuple[str, ...] = ()
    high: float | None = None


_FLAG = ("1", "true", "yes", "0", "false", "no")

#: Every setting the store, the CLI and the worker read (the README's tables).
SETTINGS: tuple[Setting, ...] = (
    Setting("TIEREDSTORE_REDIS_URL", "redis_url", None),
    Setting("TIEREDSTORE_DATABASE_URL", "database_url", None),
    Setting("TIEREDSTORE_NAMESPACE", "text", "default"),
    Setting("TIEREDSTORE_PREFIX", "text", "ts"),
    Setting("TIEREDSTORE_BUCKETS", "int", str(DEFAULT_BUCKETS), low=1, high=1024),
    Setting("TIEREDSTORE_MEMORY_MAX_BYTES", "int", str(64 * 2**20), low=0),
    Setting("TIEREDSTORE_DEFAULT_TTL", "float", None, low=0.001),
    Setting("TIEREDSTORE_MAX_MESSAGES", "int", None, low=1),
    Setting("TIEREDSTORE_DURABILITY", "choice", "archive",
            choices=("archive", "write_through")),
    Setting("TIEREDSTORE_STALE_AFTER", "float", "1.0", low=0),
    Setting("TIEREDSTORE_MIGRATE", "flag", "0", choices=_FLAG),
    Setting("TIEREDSTORE_DATA_DIR", "path", "$XDG_DATA_HOME/tieredstore"),
    Setting("TIEREDSTORE_FTS_LANGUAGE", "text", "english"),
    Setting("TIEREDSTORE_BROKER_URL", "url", None, "worker"),
    Setting("TIEREDSTORE_QUEUE", "text", "tieredstore", "worker"),
    Setting("TIEREDSTORE_LOCK_URL", "redis_url", None, "worker"),
    Setting("TIEREDSTORE_ARCHIVE_AFTER", "float", "3600", "worker", low=0),
    Setting("TIEREDSTORE_EXPIRE_INTERVAL", "float", "300", "worker", low=0),
    Setting("TIEREDSTORE_ARCHIVE_INTERVAL", "float", "60", "worker", low=0),
    Setting("TIEREDSTORE_TRIM_INTERVAL", "float", "3600", "worker", low=0),
    Setting("TIEREDSTORE_RECONCILE_INTERVAL", "float", "60", "worker", low=0),
    Setting("TIEREDSTORE_RETENTION_DAYS", "float", None, "worker", low=0),
    Setting("TIEREDSTORE_RETAIN_INTERVAL", "float", "3600", "worker", low=0),
    Setting("TIEREDSTORE_PARTITIONS_INTERVAL", "float", "86400", "worker", low=0),
    Setting("TIEREDSTORE_PARTITIONS_AHEAD", "int", "3", "worker", low=0),
    Setting("TIEREDSTORE_BATCH_SIZE", "int", "500", "worker", low=0),
    Setting("TIEREDSTORE_MAX_BATCHES", "int", "20", "worker", low=0),
    Setting("TIEREDSTORE_TIME_BUDGET", "float", "60", "worker", low=0),
    Setting("TIEREDSTORE_LOCK_TTL", "float", "300", "worker", low=0),
    Setting("TIEREDSTORE_PARALLEL", "int", "1", "worker", low=0),
    Setting("TIEREDSTORE_MAX_CHAIN", "int", "100", "worker", low=0),
    Setting("TIEREDSTORE_TRIM_MAX_BYTES", "int", None, "worker", low=1),
    Setting("TIEREDSTORE_TRIM_KEEP", "flag", None, "worker", choices=(*_FLAG, "on", "off")),
    Setting("TIEREDSTORE_VISIBILITY_TIMEOUT", "float", "3600", "worker", low=0),
    Setting("TIEREDSTORE_CHECKPOINT_INTERVAL", "float", "60", "worker", low=0.001),
    Setting("TIEREDSTORE_CHECKPOINT_WINDOW", "int", "10", "worker", low=1),
    Setting("TIEREDSTORE_METRICS_PORT", "int", None, "worker", low=1, high=65535),
    Setting("TIEREDSTORE_METRICS_ADDR", "text", "127.0.0.1", "worker"),
)


def check_setting(setting: Setting, raw: str, label: str | None = None) -> str | None:
    """Why ``raw`` is not a valid value of ``setting``, or ``None`` if it is.

    The checks are those of the code that reads it (numbers, words, URL
    schemes, a database driver), so a value this accepts is one the store and
    the worker accept. Messages name ``label`` (default: the variable), so a
    value given as a command-line option can be reported under its option.
    """
    name = label or setting.name
    value = raw.strip()
    if not value:
        return None  # empty means unset everywhere
    if setting.kind in ("int", "float"):
        try:
            number = env_number({name: value}, name,
                                int if setting.kind == "int" else float, None)
        except InvalidInput as exc:
            return str(exc)
        assert number is not None
        if setting.low is not None and number < setting.low:
            return f"{name} must be at least {setting.low:g}, got {raw!r}"
        if setting.high is not None and number > setting.high:
            return f"{name} must be at most {setting.high:g}, got {raw!r}"
        return None
    if setting.choices and value.lower() not in setting.choices:
        return f"{name} must be one of {', '.join(setting.choices)}, got {raw!r}"
    if setting.kind in ("url", "redis_url") and "://" not in value:
        return f"{name} is not a URL (scheme://...), got {mask_url(raw)!r}"
    if setting.kind == "redis_url":
        scheme = value.split("://", 1)[0].lower()
        if scheme not in REDIS_SCHEMES:
            return (f"{name}: {scheme + '://'!r} is not a Redis URL scheme (expected "
                    f"{', '.join(s + '://' for s in REDIS_SCHEMES)})")
    if setting.kind == "database_url":
        return _database_url_problem(name, value)
    return None


def _database_url_problem(name: str, url: str) -> str | None:
    """Why the archive cannot use ``url``: unparsable, or no dialect or driver for it."""
    from tieredstore.schema import normalize_url

    try:
        parsed = normalize_url(url)
        parsed.get_dialect().import_dbapi()
    except InvalidInput as exc:
        return f"{name}: {exc}"
    except ImportError as exc:
        return (f"{name}: no database driver for {parsed.drivername!r} ({exc}); expected "
                "postgresql://… or sqlite:///…")
    return None


_SECRET_PARAMS = re.compile(r"(?i)((?:^|&)(?:password|passwd|pass|pwd|secret)=)[^&]*")


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = _SECRET_PARAMS.sub(r"\1***", parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
