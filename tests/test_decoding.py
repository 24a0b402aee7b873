"""Windows and archive rows decode in passes of one JSON parse: the same
messages as decoding each entry alone, frozen alike, whatever the size."""

from __future__ import annotations

from typing import Any

import pytest

from tieredstore.codec import (
    decode_message,
    decode_messages,
    decode_window,
    encode_entry,
    encode_json,
    entry_payload,
    resident_nbytes,
)
from tieredstore.errors import InvalidMessage
from tieredstore.model import FrozenDict, FrozenList


def _messages(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 5 == 1:
            out.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"c{i}", "type": "function",
                 "function": {"name": "look", "arguments": '{"q": [1, 2]}'}}]})
        elif i % 5 == 2:
            out.append({"role": "tool", "tool_call_id": f"c{i - 1}", "content": "{\"ok\": [true]}"})
        elif i % 5 == 3:
            out.append({"role": "user", "content": [{"type": "text", "text": "a [b] {c}"}]})
        else:
            out.append({"role": "user", "content": f"plain {i} with a ] and a }} inside"})
    return out


@pytest.mark.parametrize("n", [0, 1, 7, 255, 256, 257, 1000])
def test_a_window_decodes_as_each_entry_alone(n: int) -> None:
    messages = _messages(n)
    entries = [encode_entry("m", 40 + i, 1_700_000_000_000, encode_json(m))
               for i, m in enumerate(messages)]
    window = decode_window(entries)
    alone = [decode_message(entry_payload(e)) for e in entries]
    assert window.messages == alone == messages
    assert window.seqs == tuple(range(40, 40 + n))
    assert window.kinds == "m" * n
    assert window.nbytes == sum(resident_nbytes(encode_json(m)) for m in messages)
    for got in window.messages:
        for value in got.values():  # nested values are frozen, as on the entry-by-entry path
            assert type(value) not in (dict, list)
    calls = [m for m in window.messages if "tool_calls" in m]
    if calls:
        assert isinstance(calls[0]["tool_calls"], FrozenList)
        assert isinstance(calls[0]["tool_calls"][0]["function"], FrozenDict)
        with pytest.raises(TypeError):
            calls[0]["tool_calls"].append({})


def test_seqs_with_gaps_are_read_one_by_one() -> None:
    entries = [encode_entry("m", seq, 1, encode_json({"role": "user", "content": "x"}))
               for seq in (3, 4, 9)]
    assert decode_window(entries).seqs == (3, 4, 9)


@pytest.mark.parametrize("n", [0, 3, 600])
def test_archive_payloads_decode_alike(n: int) -> None:
    messages = _messages(n)
    assert decode_messages([encode_json(m) for m in messages]) == messages


def test_payloads_that_do_not_make_one_value_each_are_refused() -> None:
    with pytest.raises(InvalidMessage):
        decode_messages([b'{"role": "user"}, {"role": "user"}'])
