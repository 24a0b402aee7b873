"""One history size N: every contestant holding the same N-message conversation.

:class:`SizeGroup` builds, for one N, the tieredstore stores, the raw
baselines and the peers, each with its own session of the same messages,
and the three races run on them: ``load``, ``load(last=20)`` and ``append``.
Appends keep every history at N: the stores trim with ``max_messages=N``,
raw replays send what the store sends (its append script, which trims
the same way), and
each peer's history is cut back to N after each timed call, untimed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
import redis.asyncio
from agents.extensions.memory import SQLAlchemySession
from agents.extensions.memory.redis_session import RedisSession
from cachetools import LRUCache
from langchain_community.chat_message_histories import RedisChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_postgres import PostgresChatMessageHistory
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.peers.calls import RawStep, cycling, decoded, json_loaded, raw_append
from benchmarks.peers.conversations import ChatMessage, conversation
from benchmarks.peers.timing import Contestant
from tieredstore import RedisStore, TieredStore

TAIL = 20
SID = "conversation"
MEMORY_BOUND = 64 * 2**20
LANGCHAIN_TABLE = "langchain_chat_history"
AGENTS_MESSAGES = "agent_messages"
APPEND_STREAM: list[Any] = conversation(64, seed=11)
"""The messages appends add, in turn (the same for every contestant)."""

REDIS_STORE = "RedisStore"
TIERED_REDIS = "TieredStore (Redis tier)"
TIERED_MEMORY = "TieredStore (memory tier)"
RAW_DECODE = "raw LRANGE + decode"
RAW_JSON = "raw LRANGE + orjson.loads"
RAW_APPEND = "raw redis-py (RedisStore's append)"
RAW_APPEND_TIERED = "raw redis-py (TieredStore's append)"
LC_REDIS = "LangChain RedisChatMessageHistory"
LC_POSTGRES = "LangChain PostgresChatMessageHistory"
AGENTS_REDIS = "Agents RedisSession"
AGENTS_SQL = "Agents SQLAlchemySession"
MEMORY_HIT = "memory tier load (50)"
CACHETOOLS = "cachetools LRUCache.get"
TIMER_FLOOR = "timer floor (empty call)"


def to_langchain(message: ChatMessage) -> BaseMessage:
    """The LangChain message with the same role, content and tool calls."""
    role = message["role"]
    if role == "user":
        return HumanMessage(content=message["content"])
    if role == "tool":
        return ToolMessage(content=message["content"], tool_call_id=message["tool_call_id"])
    calls = [
        {
            "name": call["function"]["name"],
            "args": json.loads(call["function"]["arguments"]),
            "id": call["id"],
            "type": "tool_call",
        }
        for call in message.get("tool_calls") or ()
    ]
    return AIMessage(content=message["content"] or "", tool_calls=calls)


@dataclass
class Servers:
    """The clients every group shares (all on loopback servers of this run)."""

    redis_url: str
    prefix: str
    client: redis.Redis
    admin: redis.Redis
    loop: asyncio.AbstractEventLoop
    async_client: redis.asyncio.Redis
    peer_pg: psycopg.Connection[Any]
    admin_pg: psycopg.Connection[Any]
    agents_engine: AsyncEngine

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)


class SizeGroup:
    """Every contestant at history size ``n`` (the peers only with ``peers``, a
    store served by its memory tier only with ``memory``)."""

    def __init__(self, servers: Servers, n: int, *, peers: bool, memory: bool) -> None:
        self.servers = servers
        self.n = n
        self.peers = peers
        self.messages: list[Any] = conversation(n)
        client, prefix = servers.client, servers.prefix
        self.redis_store = RedisStore(client, prefix=prefix, namespace=f"rs{n}", max_messages=n)
        self.tiered = TieredStore.from_clients(
            redis=client, prefix=prefix, namespace=f"ts{n}", memory_max_bytes=None, max_messages=n
        )
        self.memory_store = (
            TieredStore.from_clients(
                redis=client, prefix=prefix, namespace=f"mem{n}", memory_max_bytes=MEMORY_BOUND
            )
            if memory
            else None
        )
        for store in (self.redis_store, self.tiered, self.memory_store):
            if store is not None:
                store.save(SID, self.messages)
        if self.memory_store is not None:
            self.memory_store.load(SID)
            assert self.memory_store.get(SID).tier == "memory"
        self.list_key = self.redis_store.keys_of(SID)[0]
        self.raw_calls = [raw_append(client, self.redis_store, SID, m) for m in APPEND_STREAM]
        self.raw_tiered_calls = [
            raw_append(client, self.tiered.redis, SID, m, create=True, outbox=False)
            for m in APPEND_STREAM
        ]
        if peers:
            self._fill_peers()

    # -- peers -----------------------------------------------------------------

    def _fill_peers(self) -> None:
        servers, n = self.servers, self.n
        self.lc_redis = RedisChatMessageHistory(
            f"{servers.prefix}-{n}", url=servers.redis_url, key_prefix="langchain:"
        )
        self.lc_redis.add_messages([to_langchain(m) for m in self.messages])
        self.lc_session = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{servers.prefix}-{n}"))
        self.lc_postgres = PostgresChatMessageHistory(
            LANGCHAIN_TABLE, self.lc_session, sync_connection=servers.peer_pg
        )
        self.lc_postgres.add_messages([to_langchain(m) for m in self.messages])
        self.agents_id = f"{servers.prefix}-{n}"
        self.agents_redis = RedisSession(
            self.agents_id, redis_client=servers.async_client, key_prefix="agents"
        )
        servers.run(self.agents_redis.add_items(list(self.messages)))
        self.agents_sql = SQLAlchemySession(
            self.agents_id, engine=servers.agents_engine, create_tables=True
        )
        servers.run(self.agents_sql.add_items(list(self.messages)))
        assert len(self.lc_redis.messages) == n and len(self.lc_postgres.messages) == n
        assert len(servers.run(self.agents_redis.get_items())) == n
        assert len(servers.run(self.agents_sql.get_items())) == n

    def _trim_lc_redis(self) -> None:
        self.servers.admin.ltrim(self.lc_redis.key, 0, self.n - 1)  # LPUSH: newest first

    def _trim_agents_redis(self) -> None:
        self.servers.admin.ltrim(self.agents_redis._messages_key, -self.n, -1)

    def _trim_lc_postgres(self) -> None:
        self.servers.admin_pg.execute(
            f"DELETE FROM {LANGCHAIN_TABLE} WHERE id = "
            f"(SELECT min(id) FROM {LANGCHAIN_TABLE} WHERE session_id = %s)",
            (self.lc_session,),
        )

    def _trim_agents_sql(self) -> None:
        self.servers.admin_pg.execute(
            f"DELETE FROM {AGENTS_MESSAGES} WHERE id = "
            f"(SELECT min(id) FROM {AGENTS_MESSAGES} WHERE session_id = %s)",
            (self.agents_id,),
        )

    # -- the races ---------------------------------------------------------------

    def loads(self) -> list[Contestant]:
        """Whole-history reads, every contestant's own way."""
        client, key, run = self.servers.client, self.list_key, self.servers.run
        out = [
            Contestant(REDIS_STORE, lambda: self.redis_store.load(SID), "tieredstore"),
            Contestant(TIERED_REDIS, lambda: self.tiered.load(SID), "tieredstore"),
        ]
        if self.memory_store is not None:
            memory = self.memory_store
            out.append(Contestant(TIERED_MEMORY, lambda: memory.load(SID), "tieredstore"))
        out += [
            Contestant(RAW_DECODE, lambda: decoded(client.lrange(key, 0, -1)), "raw"),
            Contestant(
                RAW_JSON,
                lambda: json_loaded(client.lrange(key, 0, -1)),
                "raw",
            ),
        ]
        if self.peers:
            out += [
                Contestant(LC_REDIS, lambda: self.lc_redis.messages, "peer"),
                Contestant(LC_POSTGRES, lambda: self.lc_postgres.messages, "peer"),
                Contestant(AGENTS_REDIS, lambda: run(self.agents_redis.get_items()), "peer"),
                Contestant(AGENTS_SQL, lambda: run(self.agents_sql.get_items()), "peer"),
            ]
        return out

    def tails(self) -> list[Contestant]:
        """The newest 20 messages (the LangChain histories cannot read part of one)."""
        client, key, run = self.servers.client, self.list_key, self.servers.run
        out = [
            Contestant(REDIS_STORE, lambda: self.redis_store.load(SID, last=TAIL), "tieredstore"),
            Contestant(TIERED_REDIS, lambda: self.tiered.load(SID, last=TAIL), "tieredstore"),
        ]
        if self.memory_store is not None:
            memory = self.memory_store
            out.append(
                Contestant(TIERED_MEMORY, lambda: memory.load(SID, last=TAIL), "tieredstore")
            )
        out.append(Contestant(RAW_DECODE, lambda: decoded(client.lrange(key, -TAIL, -1)), "raw"))
        if self.peers:
            out += [
                Contestant(AGENTS_REDIS, lambda: run(self.agents_redis.get_items(TAIL)), "peer"),
                Contestant(AGENTS_SQL, lambda: run(self.agents_sql.get_items(TAIL)), "peer"),
            ]
        return out

    def appends(self) -> list[Contestant]:
        """One message appended, every history held at N."""
        client, run = self.servers.client, self.servers.run
        store_next, tiered_next = cycling(APPEND_STREAM), cycling(APPEND_STREAM)
        raw_next, raw_tiered_next = cycling(self.raw_calls), cycling(self.raw_tiered_calls)
        out = [
            Contestant(
                REDIS_STORE, lambda: self.redis_store.append(SID, store_next()), "tieredstore"
            ),
            Contestant(TIERED_REDIS, lambda: self.tiered.append(SID, tiered_next()), "tieredstore"),
            Contestant(RAW_APPEND, lambda: raw_next().send(client), "raw"),
            Contestant(
                RAW_APPEND_TIERED, lambda: raw_tiered_next().send(client), "raw"
            ),
        ]
        if self.peers:
            langchain_stream = [to_langchain(m) for m in APPEND_STREAM]
            lc_redis_next, lc_pg_next = cycling(langchain_stream), cycling(langchain_stream)
            agents_redis_next, agents_sql_next = cycling(APPEND_STREAM), cycling(APPEND_STREAM)
            out += [
                Contestant(
                    LC_REDIS,
                    lambda: self.lc_redis.add_message(lc_redis_next()),
                    "peer",
                    self._trim_lc_redis,
                ),
                Contestant(
                    LC_POSTGRES,
                    lambda: self.lc_postgres.add_message(lc_pg_next()),
                    "peer",
                    self._trim_lc_postgres,
                ),
                Contestant(
                    AGENTS_REDIS,
                    lambda: run(self.agents_redis.add_items([agents_redis_next()])),
                    "peer",
                    self._trim_agents_redis,
                ),
                Contestant(
                    AGENTS_SQL,
                    lambda: run(self.agents_sql.add_items([agents_sql_next()])),
                    "peer",
                    self._trim_agents_sql,
                ),
            ]
        return out

    def memory_micro(self) -> list[Contestant]:
        """The memory tier's hit beside a bare cachetools hit and the timer's floor."""
        assert self.memory_store is not None
        memory = self.memory_store
        cache: LRUCache[str, tuple[Any, ...]] = LRUCache(maxsize=1024)
        cache[SID] = tuple(memory.load(SID))
        return [
            Contestant(MEMORY_HIT, lambda: memory.load(SID), "tieredstore"),
            Contestant(CACHETOOLS, lambda: cache.get(SID), "raw"),
            Contestant(TIMER_FLOOR, lambda: None, "raw"),
        ]

    # -- checks and clean-up -------------------------------------------------------

    def round_trip_ops(self) -> dict[str, Callable[[], Any]]:
        """The Redis operations whose round trips are counted (peers untrimmed)."""
        run = self.servers.run
        client = self.servers.client
        store_next, tiered_next = cycling(APPEND_STREAM), cycling(APPEND_STREAM)
        raw_next = cycling(self.raw_calls)
        ops: dict[str, Callable[[], Any]] = {
            f"{REDIS_STORE} load": lambda: self.redis_store.load(SID),
            f"{REDIS_STORE} load(last=20)": lambda: self.redis_store.load(SID, last=TAIL),
            f"{REDIS_STORE} append": lambda: self.redis_store.append(SID, store_next()),
            f"{TIERED_REDIS} load": lambda: self.tiered.load(SID),
            f"{TIERED_REDIS} load(last=20)": lambda: self.tiered.load(SID, last=TAIL),
            f"{TIERED_REDIS} append": lambda: self.tiered.append(SID, tiered_next()),
            "raw LRANGE": lambda: client.lrange(self.list_key, 0, -1),
            "raw redis-py append (the store's call)": lambda: raw_next().send(client),
        }
        if self.memory_store is not None:
            memory = self.memory_store
            ops = {f"{TIERED_MEMORY} load": lambda: memory.load(SID), **ops}
        if self.peers:
            message = to_langchain(APPEND_STREAM[0])
            ops.update(
                {
                    f"{LC_REDIS} messages": lambda: self.lc_redis.messages,
                    f"{LC_REDIS} add_message": lambda: self.lc_redis.add_message(message),
                    f"{AGENTS_REDIS} get_items": lambda: run(self.agents_redis.get_items()),
                    f"{AGENTS_REDIS} get_items(20)": lambda: run(
                        self.agents_redis.get_items(TAIL)
                    ),
                    f"{AGENTS_REDIS} add_items": lambda: run(
                        self.agents_redis.add_items([APPEND_STREAM[0]])
                    ),
                }
            )
        return ops

    def postgres_round_trip_ops(self) -> dict[str, tuple[Callable[[], Any], tuple[Any, ...]]]:
        """The peers' PostgreSQL operations, with the psycopg connections they use."""
        if not self.peers:
            return {}
        run, peer_pg = self.servers.run, self.servers.peer_pg
        message = to_langchain(APPEND_STREAM[0])
        return {
            f"{LC_POSTGRES} messages": (lambda: self.lc_postgres.messages, (peer_pg,)),
            f"{LC_POSTGRES} add_message": (
                lambda: self.lc_postgres.add_message(message),
                (peer_pg,),
            ),
            f"{AGENTS_SQL} get_items": (lambda: run(self.agents_sql.get_items()), ()),
            f"{AGENTS_SQL} add_items": (
                lambda: run(self.agents_sql.add_items([APPEND_STREAM[0]])),
                (),
            ),
        }

    def check(self) -> None:
        """Every history still holds about N messages: a trim also drops the tool
        results of a dropped call, and the store and its raw replay append to
        the same session, so a few tool results may follow each other."""
        for store in (self.redis_store, self.tiered):
            count = store.count(SID)
            assert self.n - 8 <= count <= self.n, (type(store).__name__, self.n, count)
        if self.peers:
            assert len(self.lc_redis.messages) == self.n
            assert len(self.servers.run(self.agents_redis.get_items())) == self.n

    def close(self) -> None:
        for store in (self.redis_store, self.tiered, self.memory_store):
            if store is not None:
                store.delete(SID)
                store.close()
        if self.peers:
            self.lc_redis.clear()
            self.lc_redis.redis_client.close()
            self.lc_postgres.clear()
            self.servers.run(self.agents_redis.clear_session())
            self.servers.run(self.agents_sql.clear_session())


def flat_name(store: str, n: int) -> str:
    return f"{store} append (N={n})"


class FlatnessGroup:
    """Appends at every history size in one race, so the sizes share its conditions."""

    def __init__(self, servers: Servers, sizes: tuple[int, ...]) -> None:
        client, prefix = servers.client, servers.prefix
        self.sizes = sizes
        self.stores: dict[str, dict[int, Any]] = {REDIS_STORE: {}, TIERED_REDIS: {}}
        for n in sizes:
            history = conversation(n)
            redis_store = RedisStore(client, prefix=prefix, namespace=f"flat-rs{n}",
                                     max_messages=n)
            tiered = TieredStore.from_clients(
                redis=client, prefix=prefix, namespace=f"flat-ts{n}", memory_max_bytes=None,
                max_messages=n,
            )
            for store in (redis_store, tiered):
                store.save(SID, history)
            self.stores[REDIS_STORE][n] = redis_store
            self.stores[TIERED_REDIS][n] = tiered
        self.raw = {
            n: [raw_append(client, self.stores[REDIS_STORE][n], SID, m) for m in APPEND_STREAM]
            for n in (min(sizes), max(sizes))
        }
        self.client = client

    def contestants(self) -> list[Contestant]:
        out = [
            Contestant(flat_name(store, n), _appending(instance), "tieredstore")
            for store, by_size in self.stores.items()
            for n, instance in by_size.items()
        ]
        out += [
            Contestant(f"{RAW_APPEND} (N={n})", _sending(self.client, calls), "raw")
            for n, calls in self.raw.items()
        ]
        return out

    def close(self) -> None:
        for by_size in self.stores.values():
            for store in by_size.values():
                store.delete(SID)
                store.close()


def _appending(store: Any) -> Callable[[], Any]:
    next_message = cycling(APPEND_STREAM)
    return lambda: store.append(SID, next_message())


def _sending(client: redis.Redis, steps: list[RawStep]) -> Callable[[], Any]:
    next_step = cycling(steps)
    return lambda: next_step().send(client)
