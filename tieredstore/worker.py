"""The maintenance worker as ``tieredstore.worker`` in a source checkout.

An installed wheel carries the worker inside the package
(``tieredstore/worker/``, which Python finds before this file, and this
file is not in the wheel); a source checkout keeps it at the repository's
top level (``worker/``), and this module loads that folder under its own
name, so ``celery -A tieredstore.worker`` works in both.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent.parent / "worker"


def _load() -> None:
    spec = importlib.util.spec_from_file_location(
        __name__, _SOURCE / "__init__.py", submodule_search_locations=[str(_SOURCE)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - a broken checkout
        raise ImportError(f"tieredstore's worker is missing from {_SOURCE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = module
    spec.loader.exec_module(module)


_load()
