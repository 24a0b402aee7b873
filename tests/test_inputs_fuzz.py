"""Bad input, fuzzed over the public API of every store configuration, sync and async.

Each example makes one call with inputs drawn from what a caller can get
wrong: ids and user ids (non-strings, empty, too long, unsafe characters,
lone surrogates), messages and metadata (non-objects, missing roles, NaN,
infinities, integers beyond 64 bits, lone surrogates, nesting past
``MAX_JSON_DEPTH``, non-JSON types), TTLs of any type, and the read
parameters ``last``/``limit``/``cursor``/``order``/``before``. Two promises are
checked: only :mod:`tieredstore.errors` exceptions escape, and a rejected
call changes nothing (a session saved first is re-read and compared after
every example). Calls aimed at that session carry at least one bad argument
and must be rejected; calls on other ids may succeed, and an accepted
``save`` must round-trip. Constructor options are fuzzed the same way.
The targeted tests at the end pin each class of bad input to its error.
"""

from __future__ import annotations

import math
import os
import string
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Harness
from tieredstore import (
    BackendUnavailable,
    ConfigurationError,
    InvalidInput,
    InvalidMessage,
    InvalidSessionId,
    Limits,
    MemoryStore,
    TieredStoreError,
)
from tieredstore.aio import AsyncMemoryStore
from tieredstore.codec import encode_cursor
from tieredstore.model import MAX_JSON_DEPTH, FrozenDict, FrozenList, Message

KNOWN = "known"
KNOWN_USER = "known-user"
KNOWN_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hi"}], "n": 2**63 - 1},
]
KNOWN_METADATA = {"title": "kept", "tags": ["a", 1.5, None]}

# Examples per store: the in-process stores are cheap, the others pay round trips.
# TIEREDSTORE_FUZZ_SCALE multiplies them for a deeper run.
FAST_KINDS = {"memory", "async-memory"}
SCALE = float(os.environ.get("TIEREDSTORE_FUZZ_SCALE", "1"))

# -- strategies -------------------------------------------------------------------

UNSAFE = ["\ud800", "\udfff", "\x00", "\u2028", "\ufeff", "{", "}", " ", "\t", "\n", "*", "?",
          "[", "]", "\\", "\x7f", "\x85"]
ODD = [*UNSAFE, ":", "é", "😀", "\u200b", "'", '"', "%", "_"]

def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``bad``."""
    return st.integers(0, 3).flatmap(lambda i: bad if i == 0 else good)


odd_text = st.lists(st.sampled_from(ODD) | st.text(max_size=3), max_size=5).map("".join)
safe_id = st.text(alphabet=string.ascii_letters + string.digits + "-_.:/@", min_size=1,
                  max_size=12)

SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]


def with_char(chars: list[str]) -> st.SearchStrategy[str]:
    """Short ids with one of ``chars`` somewhere in them."""
    return st.builds(
        lambda a, c, b: a + c + b,
        st.text(alphabet="ab-", max_size=3),
        st.sampled_from(chars),
        st.text(alphabet="ab", max_size=3),
    )


# One branch per class of bad id, so that each is drawn often.
bad_ids = st.one_of(
    st.sampled_from([None, 0, 1.5, b"id", ["id"], True]),
    st.sampled_from(["", "a" * 257]),
    with_char(SURROGATES),
    with_char([c for c in UNSAFE if c not in SURROGATES]),
)
other_ids = mostly(safe_id, bad_ids | odd_text).filter(lambda x: x != KNOWN)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | odd_text
)
json_any = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.tuples(inner)
    | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=6,
)
valid_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
valid_json = st.recursive(
    valid_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)


def nest(depth: int, shape: str) -> Any:
    """``depth`` containers around a leaf: objects, arrays or both in turn."""
    value: Any = "leaf"
    for level in range(depth):
        use_dict = shape == "dict" or (shape == "mixed" and level % 2 == 0)
        value = {"k": value} if use_dict else [value]
    return value


NON_JSON = [set(), frozenset({1}), b"bytes", bytearray(b"x"), object(), Decimal("1.5"), 1j,
            datetime(2020, 1, 1), range(2), int, Message]
bad_values = st.one_of(
    st.sampled_from(NON_JSON),
    st.sampled_from([math.nan, math.inf, -math.inf, [math.nan], FrozenDict({"f": math.inf})]),
    st.sampled_from([2**64, -(2**63) - 1, 10**40, FrozenList([2**65])]),
    st.sampled_from(["\ud800", "a\udfffb", ["\udc00"], {"\ud800": "surrogate key"}]),
    st.sampled_from([{1: "int key"}, {(1, 2): "tuple key"}, {None: "none key"}]),
    st.builds(nest, st.integers(MAX_JSON_DEPTH, 1100), st.sampled_from(["dict", "list",
                                                                         "mixed"])),
)
good_messages = st.builds(
    lambda role, content: {"role": role, "content": content}, st.text(max_size=6), valid_json
)
bad_messages = (
    st.sampled_from([None, 1, "text", ["role", "user"], b"x", {}, {"content": "no role"},
                     {"role": None}, {"role": 5}, {"role": ["user"]}, {"role": "\ud800"}])
    | st.builds(lambda v: {"role": "user", "content": v}, bad_values)
    | st.builds(lambda v: {"role": "user", "meta": {"x": [v]}}, bad_values)
)
bad_batches = st.sampled_from([None, 5, "text", b"bytes", {"role": "user"}, 1.5]) | st.builds(
    lambda good, bad, at: [*good[:at], bad, *good[at:]],
    st.lists(good_messages, max_size=2),
    bad_messages,
    st.integers(0, 2),
)
any_batches = mostly(st.lists(mostly(good_messages, bad_messages), max_size=3), bad_batches)

bad_metadata = (
    st.sampled_from([1, "text", ["a"], b"x", True, {"k": "nul\x00"}, {"nul\x00": 1},
                     {"big": "x" * (65 * 2**10)}])
    | st.builds(lambda v: {"k": v}, bad_values)
)
any_metadata = mostly(st.none() | st.dictionaries(st.text(max_size=5), valid_json, max_size=3),
                      bad_metadata)
bad_users = bad_ids.filter(lambda x: x is not None)
any_users = mostly(st.none() | safe_id, bad_users)

bad_ttls = st.sampled_from([
    "x", "10", True, False, 0, -1, -0.5, 0.0, math.nan, math.inf, -math.inf, 10**400, 10**20,
    timedelta(0), timedelta(seconds=-1), timedelta.max, timedelta.min, object(), [], [5],
    Decimal("5"), 1j, b"5", datetime(2030, 1, 1),
])
any_ttls = mostly(st.none() | st.floats(0.001, 10**6) | st.integers(1, 10**6), bad_ttls)

bad_counts = st.sampled_from([-1, -(2**70), True, False, "3", 1.5, math.nan, [], object()])
bad_limits = st.sampled_from([0, -1, 10**9, True, False, "10", 2.0, None, math.inf, []])
any_limits = mostly(st.integers(1, 50), bad_limits)
bad_lasts = bad_counts
any_lasts = mostly(st.none() | st.integers(0, 10) | st.sampled_from([2**31, 2**63, 10**30]),
                   bad_lasts)
bad_befores = bad_counts
any_befores = mostly(st.none() | st.integers(0, 10) | st.sampled_from([2**63, 10**30]),
                     bad_befores)
bad_versions = st.sampled_from([-1, True, "1", 1.5, math.nan, [], object(), 2**63, 10**30])
any_versions = mostly(st.integers(0, 3) | st.sampled_from([2**53 + 1, 2**63, 10**30]),
                      bad_versions)


def _raw_cursor(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


bad_cursors = st.sampled_from([
    5, b"x", [], 1.5, True, "!!!", "=", "\ud800", "é", _raw_cursor(b"no colon"),
    _raw_cursor(b"x:y"), _raw_cursor(b"99999999999999999999999:a"), _raw_cursor(b"1:\x00"),
    _raw_cursor(b"\xff\xfe:1"), _raw_cursor(b"-99999999999999999999:a"),
])
any_cursors = mostly(
    st.none() | st.builds(encode_cursor, st.integers(-(2**63), 2**63 - 1), st.text(max_size=6)),
    bad_cursors | odd_text,
)
bad_orders = st.sampled_from(["up", "DESC", None, 1, ["asc"]])
bad_seconds = st.sampled_from([0, -1, "5", True, math.nan, math.inf, 10**12, None, []])


def bad_kwarg(**choices: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """One keyword argument, guaranteed bad."""
    return st.one_of(*(st.builds(lambda v, k=k: {k: v}, s) for k, s in choices.items()))


def op(method: str, args: Any, kwargs: Any = None) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(st.just(method), args, kwargs if kwargs is not None else st.just({}))


def must_fail(tiered: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    """Calls carrying at least one bad argument: each must be rejected."""
    good = st.just([{"role": "user", "content": "fine"}])
    known = st.just(KNOWN)
    ops = [
        op("save", st.tuples(known, bad_batches)),
        op("save", st.tuples(known, good), bad_kwarg(
            ttl=bad_ttls, metadata=bad_metadata, user_id=bad_users,
            expected_version=bad_versions)),
        op("save", st.tuples(bad_ids, good)),
        op("append", st.tuples(known, bad_messages)),
        op("append", st.tuples(known), st.just({})),
        op("append", st.tuples(known, good_messages), bad_kwarg(
            ttl=bad_ttls, expected_version=bad_versions)),
        op("append", st.tuples(bad_ids, good_messages)),
        op("merge_metadata", st.tuples(known, bad_metadata | st.none())),
        op("merge_metadata", st.tuples(bad_ids, st.just({"a": 1}))),
        op("load", st.tuples(known), bad_kwarg(last=bad_lasts)),
        op("get", st.tuples(known), bad_kwarg(last=bad_lasts)),
        op("load", st.tuples(bad_ids)),
        op("count", st.tuples(bad_ids)),
        op("exists", st.tuples(bad_ids)),
        op("delete", st.tuples(bad_ids)),
        op("list", st.tuples(), bad_kwarg(
            limit=bad_limits, cursor=bad_cursors, order=bad_orders, user_id=bad_users)),
        op("fork", st.tuples(known, bad_ids)),
        op("fork", st.tuples(bad_ids, st.just("fork-target"))),
        op("fork", st.tuples(known, st.just("fork-target")), bad_kwarg(ttl=bad_ttls)),
        op("conversation", st.tuples(known), bad_kwarg(last=bad_lasts, ttl=bad_ttls)),
        op("lock", st.tuples(known), bad_kwarg(timeout=bad_seconds)),
    ]
    if tiered:
        ops.append(op("history", st.tuples(known), bad_kwarg(
            before=bad_befores, limit=bad_limits)))
    return st.one_of(*ops)


def may_pass(tiered: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    """Calls on other sessions (or reads of the known one) that may succeed or fail."""
    kw = st.fixed_dictionaries
    ops = [
        op("save", st.tuples(other_ids, any_batches),
           kw({}, optional={"ttl": any_ttls, "metadata": any_metadata, "user_id": any_users,
                            "expected_version": any_versions})),
        op("append", st.tuples(other_ids, mostly(good_messages, bad_messages)),
           kw({}, optional={"ttl": any_ttls, "expected_version": any_versions})),
        op("merge_metadata", st.tuples(other_ids, any_metadata)),
        op("load", st.tuples(other_ids | st.just(KNOWN)), kw({}, optional={"last": any_lasts})),
        op("get", st.tuples(other_ids | st.just(KNOWN)), kw({}, optional={"last": any_lasts})),
        op("list", st.tuples(), kw({}, optional={
            "limit": any_limits, "cursor": any_cursors, "user_id": any_users})),
        op("fork", st.tuples(st.just(KNOWN), other_ids), kw({}, optional={"ttl": any_ttls})),
        op("delete", st.tuples(other_ids)),
        op("roundtrip", st.tuples(any_batches),
           kw({}, optional={"metadata": any_metadata, "user_id": any_users})),
    ]
    if tiered:
        ops.append(op("history", st.tuples(st.just(KNOWN)),
                      kw({}, optional={"before": any_befores, "limit": any_limits})))
    return st.one_of(*ops)


# -- the checks -------------------------------------------------------------------


def _state(store: Any) -> tuple[Any, ...]:
    session = store.get(KNOWN)
    return (
        [m.to_dict() for m in session.messages],
        session.metadata.to_dict(),
        session.user_id,
        session.version,
    )


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def _numbers_as_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _call(store: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if method == "roundtrip":
        sid = f"rt-{uuid.uuid4().hex[:12]}"
        store.save(sid, *args, **kwargs)
        assert [m.to_dict() for m in store.load(sid)] == _json(list(args[0]))
        if kwargs.get("metadata") is not None:
            # PostgreSQL's JSONB keeps a number's value, not whether it was written
            # as a float: 1e16 comes back as the int 10000000000000000.
            assert _numbers_as_floats(store.get(sid).metadata) == _numbers_as_floats(
                _json(kwargs["metadata"])
            )
        return None
    if method == "conversation":
        with store.conversation(*args, **kwargs):
            return None
    if method == "lock":
        return store.lock(*args, **kwargs)
    return getattr(store, method)(*args, **kwargs)


def _examples(kind: str, fast: int, slow: int) -> int:
    return max(int((fast if kind in FAST_KINDS else slow) * SCALE), 1)


def test_bad_input_is_rejected_with_typed_errors_and_changes_nothing(harness: Harness) -> None:
    store = harness.make()
    store.save(KNOWN, KNOWN_MESSAGES, metadata=KNOWN_METADATA, user_id=KNOWN_USER)
    before = _state(store)
    tiered = harness.kind.removeprefix("async-").startswith("tiered-")
    outcomes = {"rejected": 0, "accepted": 0}

    @settings(
        max_examples=_examples(harness.kind, 300, 100),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(call=st.tuples(st.just(True), must_fail(tiered))
           | st.tuples(st.just(False), may_pass(tiered)))
    def run(call: tuple[bool, tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        rejected_required, (method, args, kwargs) = call
        try:
            _call(store, method, args, kwargs)
        except (BackendUnavailable, ConfigurationError):
            raise  # the servers are up: bad input must not have reached them
        except TieredStoreError:
            outcomes["rejected"] += 1
        else:
            outcomes["accepted"] += 1
            assert not rejected_required, f"{method}{args!r} {kwargs!r} was accepted"
        assert _state(store) == before

    run()
    print(f"{harness.kind}: {outcomes}")
    assert outcomes["rejected"] > 0
    if harness.kind.removeprefix("async-") != "memory":
        # A store of its own (fresh memory tier, if any) reads the same from the servers.
        assert _state(harness.make()) == before


def test_bad_constructor_options_are_rejected(harness: Harness) -> None:
    options = st.one_of(
        st.tuples(st.just("max_messages"), bad_counts | st.sampled_from([0, 2**40])),
        st.tuples(st.just("default_ttl"), bad_ttls),
        st.tuples(st.just("sliding_ttl"), st.sampled_from(["yes", 1, None, 0.0])),
        st.tuples(st.just("limits"), st.sampled_from([{}, "x", 5, Limits])),
    )
    if harness.kind.removeprefix("async-").startswith("tiered-"):
        options |= st.tuples(st.just("stale_after"), bad_seconds.filter(lambda v: v != 0))
        options |= st.tuples(st.just("durability"), st.sampled_from(["sync", None, 1]))

    @settings(max_examples=_examples(harness.kind, 40, 12), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(option=options)
    def run(option: tuple[str, Any]) -> None:
        name, value = option
        with pytest.raises(TieredStoreError):
            harness.make(**{name: value})

    run()


@settings(max_examples=150, deadline=None, database=None)
@given(
    name=st.sampled_from([f for f in Limits.__dataclass_fields__]),
    value=bad_counts | st.sampled_from([0, None, 2**70 * 0.5]),
)
def test_limits_reject_non_positive_or_non_integer_values(name: str, value: Any) -> None:
    with pytest.raises(InvalidInput, match=name):
        Limits(**{name: value})


@settings(max_examples=100, deadline=None, database=None)
@given(
    cls=st.sampled_from([MemoryStore, AsyncMemoryStore]),
    name=st.sampled_from(["max_entries", "max_bytes"]),
    value=bad_counts | st.sampled_from([0, None]),
)
def test_memory_store_bounds_must_be_positive_integers(cls: Any, name: str, value: Any) -> None:
    with pytest.raises(InvalidInput, match=name):
        cls(**{name: value})


# -- targeted cases ----------------------------------------------------------------


def test_lone_surrogates_in_ids_are_invalid_session_ids(store: Any) -> None:
    store.save(KNOWN, KNOWN_MESSAGES)
    before = _state(store)
    for sid in ("a\ud800", "\udfff", "x\ud83d"):
        with pytest.raises(InvalidSessionId, match="surrogate"):
            store.save(sid, KNOWN_MESSAGES)
        with pytest.raises(InvalidSessionId):
            store.load(sid)
        with pytest.raises(InvalidSessionId, match="user id"):
            store.save(KNOWN, KNOWN_MESSAGES, user_id=sid)
        with pytest.raises(InvalidSessionId):
            store.list(user_id=sid)
    assert store.save("ok-\U0001f600", KNOWN_MESSAGES) == 1  # a real astral character is fine
    assert _state(store) == before


def test_lone_surrogates_in_messages_and_metadata_are_invalid_messages(store: Any) -> None:
    store.save(KNOWN, KNOWN_MESSAGES, metadata=KNOWN_METADATA)
    before = _state(store)
    for bad in ({"role": "user", "content": "\ud800"}, {"role": "user", "\udfff": 1},
                {"role": "\ud800"}):
        with pytest.raises(InvalidMessage):
            store.save(KNOWN, [bad])
        with pytest.raises(InvalidMessage):
            store.append(KNOWN, bad)
    for meta in ({"k": "\ud800"}, {"\ud800": 1}, {"k": ["\udfff"]}):
        with pytest.raises(InvalidMessage):
            store.merge_metadata(KNOWN, meta)
        with pytest.raises(InvalidMessage):
            store.save(KNOWN, KNOWN_MESSAGES, metadata=meta)
    assert _state(store) == before


def test_deep_nesting_gets_a_clear_invalid_message(store: Any) -> None:
    store.save(KNOWN, KNOWN_MESSAGES)
    before = _state(store)
    for depth in (MAX_JSON_DEPTH, 900, 5000):
        for shape in ("dict", "list"):
            message = {"role": "user", "content": nest(depth, shape)}
            with pytest.raises(InvalidMessage, match=f"deeper than {MAX_JSON_DEPTH}"):
                store.append(KNOWN, message)
            with pytest.raises(InvalidMessage, match=f"deeper than {MAX_JSON_DEPTH}"):
                store.merge_metadata(KNOWN, {"k": nest(depth, shape)})
    assert _state(store) == before
    # The deepest allowed message (the message object is level 1) round-trips.
    deepest = {"role": "user", "content": nest(MAX_JSON_DEPTH - 1, "mixed")}
    store.save("deep", [deepest])
    assert store.load("deep") == [deepest]


def test_nan_infinity_and_huge_integers_are_invalid_messages(store: Any) -> None:
    store.save(KNOWN, KNOWN_MESSAGES)
    before = _state(store)
    for value in (math.nan, math.inf, -math.inf, 2**64, -(2**63) - 1, 10**100,
                  FrozenDict({"x": math.nan}), FrozenList([2**64])):
        with pytest.raises(InvalidMessage):
            store.append(KNOWN, {"role": "user", "content": value})
        with pytest.raises(InvalidMessage):
            store.merge_metadata(KNOWN, {"k": value})
    assert _state(store) == before
    edges = {"role": "user", "content": [2**64 - 1, -(2**63), 1e308, 5e-324, -0.0]}
    store.save("edges", [edges])
    assert store.load("edges") == [edges]


def test_merge_metadata_needs_a_mapping(store: Any) -> None:
    store.save(KNOWN, KNOWN_MESSAGES, metadata=KNOWN_METADATA)
    before = _state(store)
    for updates in (None, 5, "text", ["a", 1]):
        with pytest.raises(InvalidMessage, match="JSON object"):
            store.merge_metadata(KNOWN, updates)
    assert _state(store) == before


@pytest.mark.parametrize(
    "ttl",
    ["x", "10", True, False, -1, 0, math.nan, math.inf, -math.inf, 10**400, timedelta(0),
     timedelta(days=-1), timedelta.max, Decimal("5"), object()],
    ids=repr,
)
def test_ttl_of_any_wrong_type_or_value_is_invalid_input(ttl: Any) -> None:
    store = MemoryStore()
    store.save(KNOWN, KNOWN_MESSAGES)
    before = _state(store)
    for call in (
        lambda: store.save(KNOWN, KNOWN_MESSAGES, ttl=ttl),
        lambda: store.append(KNOWN, {"role": "user"}, ttl=ttl),
        lambda: store.fork(KNOWN, "copy", ttl=ttl),
        lambda: store.conversation(KNOWN, ttl=ttl),
        lambda: MemoryStore(default_ttl=ttl),
    ):
        with pytest.raises(InvalidInput, match="ttl"):
            call()
    assert _state(store) == before


def test_valid_ttls_of_every_accepted_type() -> None:
    store = MemoryStore(clock=lambda: 1_000_000.0)
    for ttl in (1, 2.5, timedelta(hours=1), 10**9, 1e-9):
        store.save(f"s-{ttl}", KNOWN_MESSAGES, ttl=ttl)
        assert store.get(f"s-{ttl}").expires_at is not None


def test_memory_store_limits_must_be_positive() -> None:
    for bad in (0, -5):
        with pytest.raises(InvalidInput, match="max_entries"):
            MemoryStore(max_entries=bad)
        with pytest.raises(InvalidInput, match="max_bytes"):
            MemoryStore(max_bytes=bad)
    one = MemoryStore(max_entries=1)
    one.save("a", KNOWN_MESSAGES)
    one.save("b", KNOWN_MESSAGES)
    assert one.load("b") == KNOWN_MESSAGES
    assert not one.exists("a")


def test_read_parameters_reject_garbage_and_cap_huge_values(harness: Harness) -> None:
    store = harness.make()
    store.save(KNOWN, KNOWN_MESSAGES)
    for last in (2**31, 2**63, 10**30):  # more than any history: the whole history
        assert store.load(KNOWN, last=last) == KNOWN_MESSAGES
    for bad in (-1, True, "2", 1.5):
        with pytest.raises(InvalidInput, match="last"):
            store.load(KNOWN, last=bad)
    for cursor in (_raw_cursor(b"99999999999999999999999:a"), _raw_cursor(b"1:\x00"), "\ud800"):
        with pytest.raises(InvalidInput, match="cursor"):
            store.list(cursor=cursor)
    if harness.kind.removeprefix("async-").startswith("tiered-"):
        assert store.history(KNOWN, before=10**30).messages == KNOWN_MESSAGES
        for bad in (-1, True, "2", 1.5):
            with pytest.raises(InvalidInput, match="before"):
                store.history(KNOWN, before=bad)
