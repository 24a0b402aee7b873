"""redis-py's exceptions translated into ours: transient failures vs misconfiguration.

:class:`~tieredstore.errors.BackendUnavailable` means "transient, retry"
(connection lost, timeout, a server loading, failing over or out of memory);
:class:`~tieredstore.errors.ConfigurationError` means the server refuses what
the store asks and will keep refusing (ACL permissions, authentication, a
disabled or renamed command, keys in different cluster slots, a key of this
store's prefix holding another type, scripting unavailable). redis-py's
cluster client raises ``RedisClusterException``, which is not a
``RedisError``: :data:`REDIS_ERRORS` catches both.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from redis import exceptions as rx

from tieredstore.errors import BackendUnavailable, ConfigurationError

__all__ = ["DRIVER_FAULTS", "REDIS_ERRORS", "driver_fault", "raise_first", "translate",
           "used_memory"]

#: What a Redis shell catches around each call.
REDIS_ERRORS = (rx.RedisError, rx.RedisClusterException)

#: Python errors redis-py itself raises when a connection is torn down under a
#: call in flight (see :func:`driver_fault`); a shell catches them too.
DRIVER_FAULTS = (AttributeError, TypeError)

_DRIVER_DIR = os.path.dirname(os.path.abspath(redis.__file__)) + os.sep


def driver_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is one of :data:`DRIVER_FAULTS` raised inside redis-py.

    During a cluster failover redis-py's asyncio client may disconnect a
    node's connection (to refresh the topology) while another task is writing
    on it, which then fails with ``AttributeError: 'NoneType' object has no
    attribute 'writelines'``. That is a lost connection, so it is transient;
    the same error raised by our own code is a bug and is not caught.
    """
    if not isinstance(exc, DRIVER_FAULTS):
        return False
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    return os.path.abspath(last.tb_frame.f_code.co_filename).startswith(_DRIVER_DIR)

# Error codes (the reply's first word) that no retry will change.
_MISCONFIGURED_CODES = frozenset(
    {"NOPERM", "NOAUTH", "WRONGPASS", "WRONGTYPE", "CROSSSLOT", "NOSCRIPT"}
)
# ``ERR`` replies that mean the same (lower-cased fragments).
_MISCONFIGURED_ERR = (
    "unknown command",
    "unknown subcommand",
    "unknown redis command",  # a disabled command called from a script
    "non local key",  # a script touched a key of another cluster slot
    "hash to the same slot",
    "cluster support disabled",
    "invalid password",
    "no permissions",
)
_MISCONFIGURED_CLASSES: tuple[type[BaseException], ...] = (
    rx.AuthenticationError,
    rx.AuthorizationError,
    rx.NoPermissionError,
    rx.ClusterCrossSlotError,
    rx.NoScriptError,
    rx.ModuleError,
    rx.CrossSlotTransactionError,
)
# Cluster-client errors that do pass: no node reachable, slots moving.
_TRANSIENT_CLUSTER = ("cannot be connected", "not covered", "could not agree")


def translate(exc: BaseException) -> BackendUnavailable | ConfigurationError:
    """Our error for a redis-py exception (raise it ``from`` ``exc``)."""
    detail = str(exc) or type(exc).__name__
    if driver_fault(exc):
        return BackendUnavailable("redis", f"connection lost under the call: {detail}")
    if _misconfigured(exc, detail):
        return ConfigurationError("redis", detail)
    return BackendUnavailable("redis", detail)


def _misconfigured(exc: BaseException, detail: str) -> bool:
    if isinstance(exc, _MISCONFIGURED_CLASSES):
        return True
    if isinstance(exc, rx.RedisClusterException):
        if isinstance(exc, rx.SlotNotCoveredError):
            return False
        return not any(marker in detail for marker in _TRANSIENT_CLUSTER)
    if not isinstance(exc, rx.ResponseError):
        return False
    code = getattr(exc, "status_code", None) or detail.split(" ", 1)[0]
    if code in _MISCONFIGURED_CODES or detail.split(" ", 1)[0] in _MISCONFIGURED_CODES:
        return True
    lowered = detail.lower()
    return any(fragment in lowered for fragment in _MISCONFIGURED_ERR)


def raise_first(replies: list[Any]) -> list[Any]:
    """A pipeline's replies, raising the first error among them."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies


def used_memory(info: Any) -> int:
    """``used_memory`` from ``INFO memory``: one server's, or summed over a
    cluster's primaries (redis-py answers those per node)."""
    if "used_memory" in info:
        return int(info["used_memory"])
    return sum(int(node.get("used_memory", 0)) for node in info.values())
