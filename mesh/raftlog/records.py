"""One log record on disk: its frame, its body types, and how both are checked.

How this works. A record is a length-prefixed, checksummed frame (integers are
little-endian)::

    [length u32][crc u32][lsn u64][type u8][body ...]

``length`` counts the bytes after the crc field. ``crc`` is ``zlib.crc32`` over
the length field and those bytes, so a flipped length is caught as well: the
frame it describes fails the check. ``lsn`` numbers records 1, 2, 3... across
all segments; recovery uses it to notice a missing or misplaced record and to
look past a damaged one for valid records (which tells a corrupt middle from a
torn tail). The bodies::

    ENTRY    index u64, term u64, kind u8, data        a log entry
    STATE    term u64, commit u64, has_vote u8, vote   the hard state from here on
    COMPACT  index u64, term u64    entries <= index are dropped; index had term
    RESET    index u64, term u64    a snapshot at (index, term) replaced the log
    HEAD     seq u64, last_index u64, compact_index u64, compact_term u64
             first record of every segment: what the log looked like when it began

Why zlib.crc32 and not CRC-32C: it is in the standard library and runs in C at
gigabytes per second. It catches every burst error up to 32 bits and every
single or double bit flip at the record sizes allowed here, and lets random
damage through with probability 2**-32, which is what torn writes and bit rot
call for. CRC-32C is no stronger for that; its advantage is hardware speed, and
it needs a third-party wheel. The checksum guards against accidents, not
attackers: the log is local to its node.
"""

from __future__ import annotations

import struct
import zlib
from enum import IntEnum
from typing import NamedTuple

from mesh.raftlog.values import HardState, LogEntry

__all__ = [
    "BODY_BYTES_MAX",
    "ENTRY_DATA_BYTES_MAX",
    "ENTRY_RECORD_OVERHEAD_BYTES",
    "PREFIX_BYTES",
    "VOTE_BYTES_MAX",
    "Malformed",
    "Record",
    "RecordType",
    "decode_entry",
    "decode_entry_position",
    "decode_head",
    "decode_mark",
    "decode_state",
    "encode_entry",
    "encode_head",
    "encode_mark",
    "encode_state",
    "frame_problem",
    "read_tag",
]


class RecordType(IntEnum):
    """What a record's body holds."""

    ENTRY = 1
    STATE = 2
    COMPACT = 3
    RESET = 4
    HEAD = 5


_U32 = struct.Struct("<I")
_PREFIX = struct.Struct("<II")  # length, crc
_TAG = struct.Struct("<QB")  # lsn, type: the start of every body
_ENTRY = struct.Struct("<QBQQB")  # lsn, type, index, term, kind
# An entry's frame up to its data, with and without the crc: the crc covers the
# length and what follows it, so it is computed over the first and stored by the second.
_ENTRY_CHECKED = struct.Struct("<IQBQQB")  # length, lsn, type, index, term, kind
_ENTRY_FRAMED = struct.Struct("<IIQBQQB")  # length, crc, lsn, type, index, term, kind
_STATE = struct.Struct("<QBQQB")  # lsn, type, term, commit, has_vote
_MARK = struct.Struct("<QBQQ")  # lsn, type, index, term
_HEAD = struct.Struct("<QBQQQQ")  # lsn, type, seq, last_index, compact_index, compact_term

PREFIX_BYTES = _PREFIX.size
_ENTRY_TYPE = int(RecordType.ENTRY)
_crc32 = zlib.crc32
ENTRY_RECORD_OVERHEAD_BYTES = PREFIX_BYTES + _ENTRY.size
"""Bytes an entry's record takes on disk on top of its data (34)."""
ENTRY_DATA_BYTES_MAX = 64 << 20
"""Largest ``LogEntry.data`` accepted (64 MiB): bigger values belong in a snapshot."""
VOTE_BYTES_MAX = 1024
"""Longest ``HardState.vote`` accepted (node ids are 16 bytes)."""
BODY_BYTES_MAX = _ENTRY.size + ENTRY_DATA_BYTES_MAX
"""A frame claiming a longer body is impossible: recovery treats it as damage."""

_TYPES = frozenset(int(t) for t in RecordType)


class Malformed(Exception):
    """A frame with a valid checksum whose body does not fit its type (internal)."""


class Record(NamedTuple):
    """Where one intact frame is: its type, byte offset, total size and lsn."""

    type: int
    offset: int
    size: int
    lsn: int


def _frame(out: bytearray, fixed: bytes, tail: bytes) -> int:
    length = len(fixed) + len(tail)
    length_bytes = _U32.pack(length)
    crc = zlib.crc32(tail, zlib.crc32(fixed, zlib.crc32(length_bytes)))
    out += length_bytes
    out += _U32.pack(crc)
    out += fixed
    out += tail
    return PREFIX_BYTES + length


def encode_entry(out: bytearray, lsn: int, entry: LogEntry) -> int:
    """Append ``entry``'s record to ``out``; return its size in bytes.

    The same frame ``_frame`` builds, in two packs and two checksum calls instead
    of three each: every voter frames every entry."""
    index, term, kind, data = entry
    length = _ENTRY.size + len(data)
    crc = _crc32(data, _crc32(_ENTRY_CHECKED.pack(length, lsn, _ENTRY_TYPE, index, term, kind)))
    out += _ENTRY_FRAMED.pack(length, crc, lsn, _ENTRY_TYPE, index, term, kind)
    out += data
    return PREFIX_BYTES + length


def encode_state(out: bytearray, lsn: int, state: HardState) -> int:
    """Append a STATE record holding ``state``; return its size."""
    has_vote = 0 if state.vote is None else 1
    fixed = _STATE.pack(lsn, RecordType.STATE, state.term, state.commit, has_vote)
    return _frame(out, fixed, state.vote or b"")


def encode_mark(out: bytearray, lsn: int, kind: RecordType, index: int, term: int) -> int:
    """Append a COMPACT or RESET record at ``(index, term)``; return its size."""
    assert kind in (RecordType.COMPACT, RecordType.RESET), kind
    return _frame(out, _MARK.pack(lsn, kind, index, term), b"")


def encode_head(
    out: bytearray, lsn: int, seq: int, last_index: int, compact_index: int, compact_term: int
) -> int:
    """Append a segment's HEAD record; return its size."""
    fixed = _HEAD.pack(lsn, RecordType.HEAD, seq, last_index, compact_index, compact_term)
    return _frame(out, fixed, b"")


def frame_problem(data: bytes, view: memoryview, pos: int, end: int) -> str | None:
    """Why the bytes at ``pos`` (up to ``end``) are not one whole, intact frame;
    ``None`` when they are. Never raises: any garbage is answered with a reason."""
    if end - pos < PREFIX_BYTES + _TAG.size:
        return f"incomplete record header ({end - pos} bytes left)"
    length, crc = _PREFIX.unpack_from(data, pos)
    if length < _TAG.size or length > BODY_BYTES_MAX:
        return f"impossible record length {length}"
    stop = pos + PREFIX_BYTES + length
    if stop > end:
        return f"record of {PREFIX_BYTES + length} bytes runs past the end of the file"
    actual = zlib.crc32(view[pos + PREFIX_BYTES : stop], zlib.crc32(view[pos : pos + 4]))
    if actual != crc:
        return f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
    return None


def read_tag(data: bytes, pos: int) -> tuple[int, int, int]:
    """``(size, lsn, type)`` of the intact frame at ``pos``; raises ``Malformed`` for
    an unknown type."""
    (length,) = _U32.unpack_from(data, pos)
    lsn, kind = _TAG.unpack_from(data, pos + PREFIX_BYTES)
    if kind not in _TYPES:
        raise Malformed(f"unknown record type {kind}")
    return PREFIX_BYTES + length, lsn, kind


def _body_size(size: int, fixed: struct.Struct, what: str, exact: bool) -> int:
    extra = size - PREFIX_BYTES - fixed.size
    if extra < 0 or (exact and extra):
        raise Malformed(f"{what} record of {size} bytes has the wrong size")
    return extra


def decode_entry(data: bytes, pos: int, size: int) -> LogEntry:
    """The entry in the intact ENTRY frame at ``pos`` (``size`` bytes)."""
    _body_size(size, _ENTRY, "entry", exact=False)
    _, _, index, term, kind = _ENTRY.unpack_from(data, pos + PREFIX_BYTES)
    start = pos + PREFIX_BYTES + _ENTRY.size
    return LogEntry(index, term, kind, bytes(data[start : pos + size]))


def decode_entry_position(data: bytes, pos: int, size: int) -> tuple[int, int]:
    """``(index, term)`` of the intact ENTRY frame at ``pos``, without copying its data."""
    _body_size(size, _ENTRY, "entry", exact=False)
    _, _, index, term, _ = _ENTRY.unpack_from(data, pos + PREFIX_BYTES)
    return index, term


def decode_state(data: bytes, pos: int, size: int) -> HardState:
    """The hard state in the intact STATE frame at ``pos``."""
    extra = _body_size(size, _STATE, "state", exact=False)
    _, _, term, commit, has_vote = _STATE.unpack_from(data, pos + PREFIX_BYTES)
    if has_vote not in (0, 1) or (has_vote == 0 and extra) or extra > VOTE_BYTES_MAX:
        raise Malformed(f"state record has has_vote={has_vote} with a {extra}-byte vote")
    start = pos + PREFIX_BYTES + _STATE.size
    vote = bytes(data[start : pos + size]) if has_vote else None
    return HardState(term=term, vote=vote, commit=commit)


def decode_mark(data: bytes, pos: int, size: int) -> tuple[int, int]:
    """``(index, term)`` of the intact COMPACT or RESET frame at ``pos``."""
    _body_size(size, _MARK, "compaction", exact=True)
    _, _, index, term = _MARK.unpack_from(data, pos + PREFIX_BYTES)
    return index, term


def decode_head(data: bytes, pos: int, size: int) -> tuple[int, int, int, int]:
    """``(seq, last_index, compact_index, compact_term)`` of the intact HEAD frame."""
    _body_size(size, _HEAD, "segment head", exact=True)
    _, _, seq, last_index, compact_index, compact_term = _HEAD.unpack_from(data, pos + PREFIX_BYTES)
    return seq, last_index, compact_index, compact_term
