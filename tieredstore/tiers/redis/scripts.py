"""The Lua scripts, loaded from ``scripts/*.lua`` (package data).

Each file is one script; its header documents KEYS and ARGV. A line
``-- @include NAME`` is replaced by ``scripts/includes/NAME.lua`` (each
include at most once per script, includes may include others), so shared
helpers are written once. Scripts are run by SHA (``EVALSHA``) and loaded
on a ``NOSCRIPT`` reply (see the shells).
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources

__all__ = ["SCRIPTS", "script_sha"]

_INCLUDE = re.compile(r"^-- @include (\w+)\s*$", re.M)


def _read(path: str) -> str:
    return resources.files(__package__).joinpath("scripts", path).read_text(encoding="utf-8")


def _expand(source: str, seen: set[str]) -> str:
    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _expand(_read(f"includes/{name}.lua"), seen).rstrip("\n")

    return _INCLUDE.sub(include, source)


def _load() -> dict[str, str]:
    folder = resources.files(__package__).joinpath("scripts")
    names = sorted(
        entry.name.removesuffix(".lua")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    )
    return {name: _expand(_read(f"{name}.lua"), set()) for name in names}


SCRIPTS: dict[str, str] = _load()
"""Lua source of every script, by name, includes expanded."""


@cache
def script_sha(name: str) -> str:
    """The SHA1 Redis knows the script ``name`` by."""
    return hashlib.sha1(SCRIPTS[name].encode()).hexdigest()
