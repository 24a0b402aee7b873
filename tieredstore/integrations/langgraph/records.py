"""Checkpoints and pending writes as every tier stores them: records, ids, copies.

Framework-free: the saver turns LangGraph's objects into these (its serializer
makes the bytes), the tiers move them around unchanged. A checkpoint record
and a write record are the bytes a Redis hash field holds; the archive keeps
the same fields in columns.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tieredstore.config import Limits
from tieredstore.core import check_session_id
from tieredstore.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_NS_LENGTH",
    "SEP",
    "Found",
    "StoredCheckpoint",
    "StoredWrite",
    "ThreadCopy",
    "check_part",
    "check_thread_id",
    "member",
    "merge_writes",
    "pack_checkpoint",
    "pack_write",
    "split_member",
    "unpack_checkpoint",
    "unpack_write",
]

SEP = "\x00"
"""Separates the parts of a member (namespace, checkpoint id, task id, idx)."""

_VERSION = b"\x01"
_CHECKPOINT_HEAD = struct.Struct(">qIII")
_WRITE_HEAD = struct.Struct(">III")
MAX_NS_LENGTH = 2048
MAX_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """One checkpoint: where it is, its parent, the serializer's output, metadata JSON."""

    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None
    created_ms: int
    type: str
    blob: bytes
    metadata: bytes

    @property
    def member(self) -> str:
        return member(self.checkpoint_ns, self.checkpoint_id)


@dataclass(frozen=True, slots=True)
class StoredWrite:
    """One pending write of a task, as LangGraph keys it: ``(task_id, idx)``."""

    task_id: str
    idx: int
    channel: str
    type: str
    value: bytes
    task_path: str

    @property
    def suffix(self) -> str:
        return f"{self.task_id}{SEP}{self.idx}"


@dataclass(frozen=True, slots=True)
class Found:
    """A checkpoint with its pending writes, its thread and the thread's generation,
    and the tier that served it."""

    thread_id: str
    checkpoint: StoredCheckpoint
    writes: tuple[StoredWrite, ...]
    created_ms: int
    tier: str


@dataclass(frozen=True, slots=True)
class ThreadCopy:
    """What one copy brings into the archive: part of one generation of a thread.

    ``writes`` are ``(checkpoint_ns, checkpoint_id, write)``: a write may
    belong to a checkpoint the copy does not carry (the archive has it).
    """

    thread_id: str
    created_ms: int
    updated_ms: int
    expires_ms: int | None
    checkpoints: tuple[StoredCheckpoint, ...]
    writes: tuple[tuple[str, str, StoredWrite], ...]


# -- ids -----------------------------------------------------------------------------


def check_thread_id(thread_id: object, limits: Limits) -> str:
    """A thread id as a key part: a string by the session-id rules (``InvalidSessionId``)."""
    if not isinstance(thread_id, str):
        thread_id = str(thread_id)
    return check_session_id(thread_id, limits, what="thread id")


def check_part(value: object, what: str, *, empty: bool = False,
               longest: int = MAX_ID_LENGTH) -> str:
    """A namespace, checkpoint id, task id, channel or path: UTF-8 text without NUL."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if not value and not empty:
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > longest:
        raise InvalidInput(f"{what} is {len(value)} characters; the limit is {longest}")
    if SEP in value:
        raise InvalidInput(f"{what} must not contain NUL, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} {value!r} is not valid UTF-8 (a lone surrogate)") from None
    return value


def member(checkpoint_ns: str, checkpoint_id: str) -> str:
    return f"{checkpoint_ns}{SEP}{checkpoint_id}"


def split_member(value: str) -> tuple[str, str]:
    """``(checkpoint_ns, checkpoint_id)`` of a member."""
    ns, _, cid = value.partition(SEP)
    return ns, cid


# -- records -------------------------------------------------------------------------


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def pack_checkpoint(checkpoint: StoredCheckpoint, limits: Limits) -> bytes:
    """The Redis record of a checkpoint (its namespace and id are in the member)."""
    parent = (checkpoint.parent_id or "").encode()
    type_ = checkpoint.type.encode()
    record = b"".join((
        _VERSION,
        _CHECKPOINT_HEAD.pack(checkpoint.created_ms, len(parent), len(type_),
                              len(checkpoint.metadata)),
        parent, type_, checkpoint.metadata, checkpoint.blob,
    ))
    if len(record) > limits.max_call_bytes:
        raise PayloadTooLarge(
            f"checkpoint {checkpoint.checkpoint_id!r} is {len(record)} bytes encoded; "
            f"the limit is {limits.max_call_bytes} (Limits.max_call_bytes)"
        )
    return record


def unpack_checkpoint(record: bytes, checkpoint_ns: str, checkpoint_id: str) -> StoredCheckpoint:
    if record[:1] != _VERSION:
        raise InvalidInput(f"checkpoint {checkpoint_id!r}: not a checkpoint record")
    created, n_parent, n_type, n_meta = _CHECKPOINT_HEAD.unpack_from(record, 1)
    at = 1 + _CHECKPOINT_HEAD.size
    parent = _text(record[at : at + n_parent])
    at += n_parent
    type_ = _text(record[at : at + n_type])
    at += n_type
    metadata = bytes(record[at : at + n_meta])
    return StoredCheckpoint(checkpoint_ns, checkpoint_id, parent or None, created, type_,
                            bytes(record[at + n_meta :]), metadata)


def pack_write(write: StoredWrite) -> bytes:
    """The Redis record of a write (its task id and idx are in the member)."""
    channel, type_, path = write.channel.encode(), write.type.encode(), write.task_path.encode()
    return b"".join((_VERSION, _WRITE_HEAD.pack(len(channel), len(type_), len(path)),
                     channel, type_, path, write.value))


def unpack_write(record: bytes, suffix: str) -> StoredWrite:
    """A write from its record and its member's ``<task id>\\0<idx>``."""
    if record[:1] != _VERSION:
        raise InvalidInput(f"write {suffix!r}: not a write record")
    task_id, _, idx = suffix.rpartition(SEP)
    n_channel, n_type, n_path = _WRITE_HEAD.unpack_from(record, 1)
    at = 1 + _WRITE_HEAD.size
    channel = _text(record[at : at + n_channel])
    at += n_channel
    type_ = _text(record[at : at + n_type])
    at += n_type
    path = _text(record[at : at + n_path])
    return StoredWrite(task_id, int(idx), channel, type_, bytes(record[at + n_path :]), path)


def merge_writes(older: Sequence[StoredWrite], newer: Sequence[StoredWrite]) -> tuple[
        StoredWrite, ...]:
    """The writes of one checkpoint from two tiers; ``newer`` wins per ``(task_id, idx)``,
    in LangGraph's replay order (``writes_sort_key``: task path, task id, idx)."""
    merged = {(w.task_id, w.idx): w for w in older}
    merged.update({(w.task_id, w.idx): w for w in newer})
    return tuple(sorted(merged.values(), key=lambda w: (w.task_path, w.task_id, w.idx)))
