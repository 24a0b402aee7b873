"""``MULTI``/``EXEC`` on one pooled connection, without redis-py's pipeline object.

A read that needs no script (see :meth:`RedisOps._read`) is a transaction of
a few commands. redis-py's transaction pipeline costs more client CPU than the
whole round trip at small sizes, so the shells send the packed commands on a
connection of the client's pool and read the replies back raw, as a script's
would come. A failed exchange discards the connection, whatever left unread
replies on it; connection errors are retried as the client's own commands are.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

__all__ = ["transaction", "transaction_async"]

Command = tuple[str | bytes | int, ...]


_pack_command: Any
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py packs without it
    _pack_command = None

_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"


def _packed(conn: Any, commands: Sequence[Command]) -> Any:
    if _pack_command is None:
        return conn.pack_commands([("MULTI",), *commands, ("EXEC",)])
    return [b"".join([_MULTI, *map(_pack_command, commands), _EXEC])]


def _replies(replies: Any) -> list[Any]:
    if replies is None:
        raise redis.exceptions.WatchError("the transaction was discarded")
    for reply in replies:
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
    return list(replies)


def transaction(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Run ``commands`` in one ``MULTI``/``EXEC``; their raw replies."""
    pool: Any = client.connection_pool
    conn: Any = pool.get_connection()
    packed = _packed(conn, commands)

    def exchange() -> Any:
        try:
            conn.send_packed_command(packed)
            for _ in range(len(commands) + 1):  # +OK, then +QUEUED for each
                conn.read_response()
            return conn.read_response()
        except BaseException:
            conn.disconnect()
            raise

    try:
        return _replies(conn.retry.call_with_retry(exchange, lambda _error: None))
    finally:
        pool.release(conn)


async def transaction_async(
    client: redis.asyncio.Redis, commands: Sequence[Command]
) -> list[Any]:
    """:func:`transaction` on an asyncio client."""
    pool: Any = client.connection_pool
    conn: Any = await pool.get_connection()
    packed = _packed(conn, commands)

    async def exchange() -> Any:
        try:
            await conn.send_packed_command(packed)
            # One deadline for all the replies, not one timer per reply.
            async with asyncio.timeout(conn.socket_timeout):
                for _ in range(len(commands) + 1):
                    await conn.read_response(timeout=math.inf)
                return await conn.read_response(timeout=math.inf)
        except TimeoutError as exc:
            await conn.disconnect()
            raise redis.exceptions.TimeoutError(f"no reply within {conn.socket_timeout} s") from exc
        except BaseException:
            await conn.disconnect()
            raise

    async def nothing(_error: Exception) -> None:
        return None

    try:
        return _replies(await conn.retry.call_with_retry(exchange, nothing))
    finally:
        await pool.release(conn)
