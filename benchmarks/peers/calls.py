"""What a Redis store sends for one operation, for raw redis-py to send the same.

The store's plans are generators that yield their I/O (see
:mod:`tieredstore.tiers.redis.plans`); as :func:`benchmarks.common.save_call`
does for ``save``, the first step an operation's plan yields is taken as
what the store sends: a script :class:`Call` (``EVALSHA``), :class:`Calls`
(scripts pipelined) or :class:`Commands` (commands pipelined, or one
``MULTI``/``EXEC`` when atomic). :class:`RawStep` sends the same commands
with the same keys and arguments through redis-py. An append names itself
with a random call id (so a client's retry does not append twice); the
argument that differs between two captures of the same append is that id,
and a raw replay draws a fresh one each time, as the store does.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tieredstore.codec import decode_message, entry_payload
from tieredstore.core import prepare_batch
from tieredstore.model import Message
from tieredstore.tiers.redis import SCRIPTS, Call, Calls, Commands

Command = tuple[Any, ...]


@dataclass(frozen=True)
class RawStep:
    """Commands as the store sends them: alone (``transaction`` is ``None``),
    pipelined, or in one ``MULTI``/``EXEC`` (``transaction`` true)."""

    commands: list[Command]
    transaction: bool | None
    fresh: list[tuple[int, int]]
    """``(command, argument)`` positions of call ids, drawn anew per send."""

    def _commands(self) -> list[Command]:
        if not self.fresh:
            return self.commands
        commands = [list(command) for command in self.commands]
        for at, position in self.fresh:
            commands[at][position] = secrets.token_hex(8)
        return [tuple(command) for command in commands]

    def send(self, client: Any) -> Any:
        commands = self._commands()
        if self.transaction is None:
            return client.execute_command(*commands[0])
        pipe = client.pipeline(transaction=self.transaction)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()

    async def asend(self, client: Any) -> Any:
        commands = self._commands()
        if self.transaction is None:
            return await client.execute_command(*commands[0])
        pipe = client.pipeline(transaction=self.transaction)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    def entries(self, reply: Any) -> Sequence[bytes]:
        """The message entries in a read's reply: the read script's second
        element, or the reply to the ``LRANGE`` of a pipeline."""
        if self.transaction is None:
            return reply[1]  # type: ignore[no-any-return]
        names = [str(command[0]).upper() for command in self.commands]
        return reply[names.index("LRANGE")]  # type: ignore[no-any-return]


def _first_step(plan: Any) -> Call | Calls | Commands:
    step = next(plan)
    plan.close()
    assert isinstance(step, Call | Calls | Commands), step
    return step


def _commands_of(client: Any, step: Call | Calls | Commands) -> tuple[list[Command], bool | None]:
    def evalsha(call: Call) -> Command:
        sha = client.script_load(SCRIPTS[call.script])
        return ("EVALSHA", sha, len(call.keys), *call.keys, *call.args)

    if isinstance(step, Call):
        return [evalsha(step)], None
    if isinstance(step, Calls):
        return [evalsha(call) for call in step.calls], False
    return [tuple(command) for command in step.commands], bool(getattr(step, "atomic", False))


def _raw_step(client: Any, make_plan: Callable[[], Any]) -> RawStep:
    first, transaction = _commands_of(client, _first_step(make_plan()))
    second, _ = _commands_of(client, _first_step(make_plan()))
    fresh = [
        (at, position)
        for at, (one, other) in enumerate(zip(first, second, strict=True))
        for position, (a, b) in enumerate(zip(one, other, strict=True))
        if a != b
    ]
    return RawStep(first, transaction, fresh)


def raw_append(
    client: Any, redis_tier: Any, sid: str, message: dict[str, Any], **flags: Any
) -> RawStep:
    """What ``append(sid, message)`` sends first on this Redis tier (``flags``:
    the tiered store's ``create``/``outbox``)."""
    batch = prepare_batch([message], redis_tier.limits)
    return _raw_step(
        client,
        lambda: redis_tier._ops.append(sid, batch, ttl_ms=None, expected_version=None, **flags),
    )


def raw_read(client: Any, redis_tier: Any, sid: str, last: int | None) -> RawStep:
    """What the Redis tier's snapshot read (what ``TieredStore`` reads) sends first."""
    return _raw_step(client, lambda: redis_tier._ops.snapshot(sid, last, False))


def decoded(entries: Sequence[Any]) -> list[Message]:
    """Hot-tier entries decoded as the store decodes them."""
    return [decode_message(entry_payload(entry)) for entry in entries]


def json_loaded(entries: Sequence[Any]) -> list[Any]:
    """Hot-tier entries' messages as plain ``orjson.loads`` gives them."""
    return [orjson.loads(entry_payload(entry)) for entry in entries]


def cycling(items: Sequence[Any]) -> Callable[[], Any]:
    """A function returning ``items`` one after the other, forever."""
    position = [0]

    def next_item() -> Any:
        item = items[position[0] % len(items)]
        position[0] += 1
        return item

    return next_item
