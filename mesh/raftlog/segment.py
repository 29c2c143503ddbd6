"""Segment files: their names and header, file helpers, and the recovery scan.

How this works. The log is a sequence of append-only segment files named
``<seq>-<first index>.seg`` (``seq`` counts segments 1, 2, 3...; the index is
the one the segment's first appended entry would take). Each starts with a
16-byte header, ``b"AMRLOG01"`` (magic and format version) and the lsn of its
first record, followed by records (``records.py``). The segment being written
may end in zero bytes: space ``DurableLog`` wrote ahead of its records so that
a sync need not grow the file (``preallocate_bytes`` in ``log.py``). A segment
is cut to its last record before the next one is created, so only the last
segment can have such a tail.

``SegmentScan`` walks one file's frames and checks each. When a frame is
damaged it decides between the two stories that can explain it:

- a torn tail: the write in progress at a crash got cut. Only possible at the
  end of the last segment, and then nothing valid can follow the damage;
- corruption: damage in an earlier segment, or damage that valid records
  follow. That is raised as ``LogCorruption``: those later records may hold
  acknowledged entries, and skipping past them would silently lose data.

To find valid records after the damage it does not parse every offset: it
searches (in C, ``bytes.find``) for the little-endian lsn the next few records
would carry, and checks each hit's frame. A tail of zero bytes is recognised
directly (one ``bytes.count``, however long): it is the preallocated space past
the last record, or blocks a crash left unwritten, and the scan reports it as
the clean end of the log (``zero_tail``), not as a torn write. A torn record
followed by zeros is a torn tail as any other; zeros in a segment that is not
the last are damage like any other.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from mesh.raftlog.errors import LogCorruption
from mesh.raftlog.records import Malformed, Record, frame_problem, read_tag

__all__ = [
    "CORRUPTION_ADVICE",
    "SEGMENT_HEADER_BYTES",
    "SEGMENT_MAGIC",
    "SegmentScan",
    "encode_segment_header",
    "fsync_directory",
    "parse_segment_name",
    "pread_exact",
    "pwrite_all",
    "segment_name",
    "write_all",
]

SEGMENT_MAGIC = b"AMRLOG01"
_HEADER = struct.Struct("<8sQ")  # magic, lsn of the first record
SEGMENT_HEADER_BYTES = _HEADER.size
_U64 = struct.Struct("<Q")
_NAME = re.compile(r"^(\d{10})-(\d{20})\.seg$")
# How many lsns past a damaged record to look for: covers a zeroed 4 KiB page of
# the smallest records (about 35 bytes) with room to spare.
_FOLLOWERS_SEARCHED = 256

CORRUPTION_ADVICE = (
    "This is not a torn write from a crash, so the node refuses to start rather than "
    "lose or invent log entries. Restore this directory from a backup, or remove this "
    "node's Raft data and re-add it to the cluster so that it catches up from a leader."
)


def segment_name(seq: int, first_index: int) -> str:
    """File name of segment ``seq`` whose first entry would be ``first_index``."""
    return f"{seq:010d}-{first_index:020d}.seg"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(seq, first_index)`` of a segment file name, ``None`` for other files."""
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def encode_segment_header(first_lsn: int) -> bytes:
    """The 16 bytes every segment starts with."""
    return _HEADER.pack(SEGMENT_MAGIC, first_lsn)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte is taken (a regular file rarely writes short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """``os.pwrite`` at ``offset`` until every byte is taken."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read exactly ``size`` bytes at ``offset``, or raise ``LogCorruption`` if the file
    is shorter than the in-memory index says (someone truncated it under us)."""
    chunks = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise LogCorruption(f"segment ended early: {size} bytes missing at offset {offset}")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def fsync_directory(fd: int) -> None:
    """Make created, renamed and removed directory entries durable."""
    os.fsync(fd)


class SegmentScan:
    """One pass over a segment file's bytes, yielding its intact records in order.

    ``first_lsn`` is the lsn the first record must carry (``None``: unknown, as for
    the oldest segment present). If the last segment ends in a torn write, the
    scan stops there and sets ``torn_at`` and ``problem``; damage anywhere else
    raises ``LogCorruption``. After the scan ``next_lsn`` is the lsn that follows,
    and ``zero_tail`` counts the zero bytes that end the damaged part (all of it
    when the file simply ends in zeros after its last record: no torn write).
    """

    def __init__(self, path: Path, data: bytes, *, is_last: bool, first_lsn: int | None):
        self.path = path
        self.data = data
        self.is_last = is_last
        self.expected_first_lsn = first_lsn
        self.torn_at: int | None = None
        self.problem: str | None = None
        self.zero_tail = 0
        self.next_lsn = first_lsn if first_lsn is not None else 1

    def corruption(self, offset: int, what: str) -> LogCorruption:
        """A ``LogCorruption`` naming this file, ``offset`` and ``what`` is wrong."""
        return LogCorruption(
            f"raft log segment {self.path} is corrupt at byte offset {offset}: {what}. "
            f"{CORRUPTION_ADVICE}",
            path=self.path,
            offset=offset,
        )

    def records(self) -> Iterator[Record]:
        """The intact records, in order (see the class docstring for damage)."""
        data = self.data
        end = len(data)
        if not self._header_ok():
            return
        view = memoryview(data)
        lsn = self.next_lsn
        pos = SEGMENT_HEADER_BYTES
        while pos < end:
            problem = frame_problem(data, view, pos, end)
            if problem is not None:
                self._damaged(pos, problem, lsn)
                break
            try:
                size, record_lsn, kind = read_tag(data, pos)
            except Malformed as error:
                raise self.corruption(pos, str(error)) from None
            if record_lsn != lsn:
                raise self.corruption(
                    pos, f"record sequence number {record_lsn} where {lsn} was expected"
                )
            yield Record(kind, pos, size, lsn)
            pos += size
            lsn += 1
        self.next_lsn = lsn

    def _header_ok(self) -> bool:
        data = self.data
        if len(data) < SEGMENT_HEADER_BYTES:
            self._damaged(0, f"incomplete segment header ({len(data)} bytes)", None)
            return False
        magic, first_lsn = _HEADER.unpack_from(data, 0)
        if magic != SEGMENT_MAGIC:
            self._damaged(0, f"bad segment magic {magic!r} (expected {SEGMENT_MAGIC!r})", None)
            return False
        if self.expected_first_lsn is not None and first_lsn != self.expected_first_lsn:
            raise self.corruption(
                0,
                f"segment header says its first record is number {first_lsn}, but the "
                f"previous segment ended at {self.expected_first_lsn - 1}",
            )
        self.next_lsn = first_lsn
        return True

    def _damaged(self, pos: int, problem: str, lsn: int | None) -> None:
        if not self.is_last:
            raise self.corruption(pos, f"{problem}, in a segment that is not the last one")
        data = self.data
        zeros = data.count(0, pos)
        if zeros and zeros == len(data) - pos:
            # Only zeros: preallocated space past the last record, or blocks the
            # crash left unwritten. Nothing was torn; the log simply ends here.
            self.torn_at = pos
            self.zero_tail = zeros
            self.problem = (
                f"{zeros} zero bytes at the end (space written ahead of the records, or "
                "left unwritten by a crash), not a torn write"
            )
            return
        # Not merely zeros: is anything valid after the damage? Not in the zeros
        # that end the file, if any (a record's lsn is followed by its nonzero type).
        if zeros:
            tail = data[pos:]
            self.zero_tail = len(tail) - len(tail.rstrip(b"\0"))
        if lsn is None:
            # A crash cannot damage a header it wrote in full, and with the
            # header gone we cannot tell which records to look for.
            if len(data) >= SEGMENT_HEADER_BYTES:
                raise self.corruption(pos, problem)
        else:
            follower = self._valid_record_after(pos, lsn, len(data) - self.zero_tail)
            if follower is not None:
                at, follower_lsn = follower
                raise self.corruption(
                    pos,
                    f"{problem}, yet a valid record (number {follower_lsn}) follows "
                    f"at offset {at}",
                )
        self.torn_at = pos
        self.problem = problem

    def _valid_record_after(self, pos: int, lsn: int, stop: int) -> tuple[int, int] | None:
        """A valid record after ``pos`` whose lsn lies before ``stop``, if any."""
        data = self.data
        view = memoryview(data)
        end = len(data)
        for wanted in range(lsn, lsn + _FOLLOWERS_SEARCHED):
            needle = _U64.pack(wanted)
            hit = data.find(needle, pos + 1 + 8, stop)
            while hit != -1:
                start = hit - 8  # the lsn sits right after length and crc
                if frame_problem(data, view, start, end) is None:
                    return start, wanted
                hit = data.find(needle, hit + 1, stop)
        return None
