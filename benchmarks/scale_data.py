"""Synthetic archive data for :mod:`benchmarks.bench_scale`: sessions and messages by ``COPY``.

Conversations in a support domain: ``PER_SESSION`` messages on average,
sessions created over the last ``MONTHS`` months (so spread over that many
partitions), ``SESSIONS_PER_USER`` sessions a user. Message text draws words
from a Zipf distribution over a vocabulary whose top ranks are English
stop words (about half the tokens, as in English) with a few real words of
the domain among them (``please`` is in most messages), then more real
words (``warranty`` is in a few percent), and a synthetic tail; a few
planted words are rare (about ten per million messages), and the phrase
"refund policy" is planted in 0.5 % of messages. Payloads average about
330 bytes.

Rows go in with ``COPY`` into the project's own tables, partitions and
all; the indexes (every one the migrations define, the primary key too)
are dropped first and rebuilt from their own definitions afterwards, which
is how a bulk load is done, then the tables are analysed.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from tieredstore.policy import message_kind
from tieredstore.schema import MESSAGES, SESSIONS
from tieredstore.tiers.archive.partitions import ensure, month_of

NAMESPACE = "bench"
PER_SESSION = 15
SESSIONS_PER_USER = 25
MONTHS = 12
DAY_MS = 86_400_000
#: PostgreSQL's English stop words, most frequent first: the commonest tokens of real
#: text (about half of all tokens), which full-text search does not index.
STOPWORDS = (  # noqa: SIM905
    "the to and i a you of is it for my that in this on your me with can be have we not was "
    "do are if at so but will just what all there they about as from or how an up out no "
    "when which some our been has had more he she his her them their then than very "
    "were any here why who its into over only also other these those each both few most own "
    "same such too s t don should now did does doing being am him himself herself hers "
    "myself ourselves ours yours yourself yourselves itself themselves theirs whom what by "
    "with against between through during before after above below down off under again "
    "further once where nor while until because"
).split()
#: Real words of the domain: the first ten are spread among the stop words (one
#: rank in eight), the rest follow them, in rank order.
COMMON = [
    "please", "order", "account", "help", "thanks", "issue", "payment", "refund", "customer",
    "email", "support", "delivery", "charge", "update", "product", "invoice", "address",
    "ticket", "return", "service", "password", "login", "shipping", "package", "tracking",
    "balance", "discount", "subscription", "cancel", "policy", "receipt", "warranty",
    "exchange", "manager", "upgrade", "credit", "statement", "billing", "device", "voucher",
]
#: Words planted in about one message in ``RARE_EVERY``.
RARE = ["zyqhelium", "quorvantix", "plimbertok", "vextrolune", "drazmifol"]
RARE_EVERY = 100_000
PHRASE = "refund policy"
PHRASE_EVERY = 200
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


@dataclass
class Filled:
    """What the queries need to know about the data."""

    sessions: int = 0
    messages: int = 0
    users: list[str] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)
    oldest_month: int = 0
    words: list[str] = field(default_factory=list)
    seconds: float = 0.0


def vocabulary(rng: random.Random, size: int = 30_000) -> list[str]:
    stop = list(dict.fromkeys(STOPWORDS))
    words: list[str] = []
    for i, word in enumerate(stop):
        if i % 7 == 6 and i // 7 < 10:
            words.append(COMMON[i // 7])
        words.append(word)
    words += [w for w in COMMON if w not in words]
    seen = set(words) | set(RARE)
    while len(words) < size:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _indexes(conn: sa.Connection) -> list[tuple[str, str, str | None]]:
    """The messages table's indexes (name, definition, constraint) on the partitioned parent."""
    rows = conn.execute(
        sa.text(
            "SELECT i.relname, pg_get_indexdef(i.oid), c.conname FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "LEFT JOIN pg_constraint c ON c.conindid = i.oid AND c.conrelid = x.indrelid "
            "WHERE x.indrelid = to_regclass(:table)"
        ),
        {"table": MESSAGES},
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def fill(engine: sa.Engine, total: int, *, seed: int = 7, now_ms: int | None = None) -> Filled:
    """``COPY`` about ``total`` messages (and their sessions) into ``engine``'s archive."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    cum = list(itertools.accumulate(1.0 / rank for rank in range(1, len(words) + 1)))
    now_ms = now_ms or int(time.time() * 1000)
    span = MONTHS * 30 * DAY_MS
    started = time.perf_counter()
    out = Filled(words=words)
    sessions: list[tuple[str, str, int, int]] = []
    count = 0
    while count < total:
        n = min(rng.randint(PER_SESSION - 10, PER_SESSION + 10), total - count)
        i = len(sessions)
        created = now_ms - span + rng.randrange(span - DAY_MS)
        sessions.append((f"s-{i:09d}-{rng.getrandbits(24):06x}",
                         f"user-{i // SESSIONS_PER_USER:07d}", created, n))
        count += n
    out.sessions, out.messages = len(sessions), count
    out.users = sorted({s[1] for s in sessions})
    out.session_ids = [s[0] for s in sessions]
    months = {month_of(s[2]) for s in sessions}
    out.oldest_month = min(months)
    raw = engine.raw_connection()
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            ensure(conn, months)
            indexes = _indexes(conn)
            for name, _definition, constraint in indexes:
                if constraint:
                    conn.execute(sa.text(f'ALTER TABLE {MESSAGES} DROP CONSTRAINT "{constraint}"'))
                else:
                    conn.execute(sa.text(f'DROP INDEX "{name}"'))
        cursor: Any = raw.cursor()  # type: ignore[attr-defined]
        with cursor.copy(
            f"COPY {SESSIONS} (namespace, session_id, user_id, metadata, created_ms, updated_ms, "
            "version, message_count, next_seq, base_seq, lead, month) FROM STDIN"
        ) as copy:
            for j, (sid, user, created, n) in enumerate(sessions):
                meta = orjson.dumps({"plan": ("pro", "free")[j % 2], "channel": "web"}).decode()
                copy.write_row((NAMESPACE, sid, user, meta, created, created + n * 90_000, n,
                                n, n, 0, 0, month_of(created)))
        choices, randint, random_ = rng.choices, rng.randint, rng.random
        with cursor.copy(
            f"COPY {MESSAGES} (namespace, session_id, seq, month, created_ms, role, kind, "
            "payload, content_text) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(("text", "text", "int8", "int4", "int8", "text", "text", "bytea",
                            "text"))
            for sid, _user, created, n in sessions:
                month = month_of(created)
                for seq in range(n):
                    role = "user" if seq % 2 == 0 else "assistant"
                    drawn = choices(words, cum_weights=cum, k=randint(44, 64))
                    if random_() < 1 / PHRASE_EVERY:
                        drawn.insert(randint(0, len(drawn)), PHRASE)
                    if random_() < len(RARE) / RARE_EVERY:
                        drawn.insert(randint(0, len(drawn)), rng.choice(RARE))
                    message = {"role": role, "content": " ".join(drawn)}
                    copy.write_row((NAMESPACE, sid, seq, month, created + seq * 90_000, role,
                                    message_kind(message), orjson.dumps(message), ""))
        raw.commit()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("SET maintenance_work_mem = '1GB'"))
            for _name, definition, constraint in indexes:
                if constraint:
                    columns = definition[definition.index("(") :]
                    conn.execute(sa.text(
                        f'ALTER TABLE {MESSAGES} ADD CONSTRAINT "{constraint}" PRIMARY KEY '
                        f"{columns}"))
                else:
                    conn.execute(sa.text(definition.replace(" ON ONLY ", " ON ")))
            conn.execute(sa.text(f"VACUUM ANALYZE {SESSIONS}"))
            conn.execute(sa.text(f"VACUUM ANALYZE {MESSAGES}"))
    finally:
        raw.close()
    out.seconds = round(time.perf_counter() - started, 1)
    return out
