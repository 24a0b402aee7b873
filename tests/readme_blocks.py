"""Run every ```python block of README.md, top to bottom, in one namespace.

Used by ``tests/test_readme.py`` as ``python -m tests.readme_blocks README.md``
with ``README_REDIS_URL``, ``README_DATABASE_URL`` and (when a block needs a
cluster) ``README_CLUSTER_URL`` set. Only server URLs are substituted; the
names the README says stand for your own code (``llm``, ``chat_model``,
``agent_model``, ``get_weather``, ``question``) are provided by
:mod:`tests.readme_standins`. Blocks run in order in a shared namespace, as a
reader would paste them; a block with top-level ``await`` runs on its own
event loop. Exits non-zero naming the first block that fails.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import sys
import traceback
from pathlib import Path

FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
CLUSTER = re.compile(r"""(?<=["'])rediss?\+cluster://[^"']*(?=["'])""")
REDIS = re.compile(r"""(?<=["'])rediss?://[^"']*(?=["'])""")
POSTGRES = re.compile(r"""(?<=["'])postgresql(\+\w+)?://[^"']*(?=["'])""")


def blocks(readme: str) -> list[tuple[int, str]]:
    """Each Python block with the README line its code starts on."""
    return [
        (readme.count("\n", 0, match.start(1)) + 1, match.group(1))
        for match in FENCE.finditer(readme)
    ]


def substitute(code: str, redis_url: str, database_url: str, cluster_url: str | None) -> str:
    """The block with every Redis and PostgreSQL URL pointing at the test servers."""
    if CLUSTER.search(code):
        if cluster_url is None:
            raise SystemExit("a README block needs a Redis Cluster: set README_CLUSTER_URL")
        code = CLUSTER.sub(cluster_url, code)
    code = REDIS.sub(redis_url, code)
    return POSTGRES.sub(
        lambda match: database_url.replace("postgresql://", f"postgresql{match.group(1) or ''}://"),
        code,
    )


def run_block(code: str, filename: str, namespace: dict[str, object]) -> None:
    compiled = compile(code, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if compiled.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(compiled, namespace))
    else:
        exec(compiled, namespace)


def main(path: str) -> int:
    from tests import readme_standins

    readme = Path(path).read_text(encoding="utf-8")
    redis_url = os.environ["README_REDIS_URL"]
    database_url = os.environ["README_DATABASE_URL"]
    cluster_url = os.environ.get("README_CLUSTER_URL")
    namespace: dict[str, object] = {"__name__": "__readme__"}
    namespace.update(readme_standins.names())
    found = blocks(readme)
    for line, code in found:
        code = substitute(code, redis_url, database_url, cluster_url)
        try:
            run_block(code, f"README.md:{line}", namespace)
        except BaseException:
            print(f"README block at line {line} failed:", file=sys.stderr)
            traceback.print_exc()
            return 1
        print(f"ok README.md:{line}")
    print(f"{len(found)} blocks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
