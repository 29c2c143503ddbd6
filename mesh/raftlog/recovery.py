"""Recovery: read every segment, check every record, and say what to repair.

How this works: ``recover`` only reads. It lists the segment files by number,
scans each (``segment.SegmentScan`` checks every frame's checksum and sequence
number) and feeds its records to ``replay.Replay``, which rebuilds the in-memory
index and checks the log's logic (no index gap, no term regression...). It
returns the rebuilt state and the repairs a crash calls for, which
``DurableLog.open`` carries out only once everything has been checked: cut a
torn tail off the last segment, or remove a last segment that holds no complete
record (a crash right after it was created). A last segment that ends in zero
bytes (the space ``DurableLog`` preallocates ahead of its records, which a crash
leaves in place) is cut back to its last record the same way, and the zeros are
counted apart from torn bytes (``zero_bytes_truncated``): they are no sign of a
torn write. Anything else wrong raises ``LogCorruption`` before a single byte is
changed.

Memory: one segment's bytes at a time (``segment_bytes_max`` plus one record,
or plus the preallocated zeros if more), plus the index being rebuilt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mesh.raftlog.errors import LogCorruption
from mesh.raftlog.records import (
    Malformed,
    RecordType,
    decode_entry_position,
    decode_head,
    decode_mark,
    decode_state,
)
from mesh.raftlog.replay import Replay
from mesh.raftlog.segment import CORRUPTION_ADVICE, SegmentScan, parse_segment_name
from mesh.raftlog.snapshot import read_snapshot
from mesh.raftlog.values import SnapshotMeta

__all__ = ["Recovered", "recover"]


@dataclass(slots=True)
class Recovered:
    """The state rebuilt from disk and the repairs to make before writing."""

    replay: Replay
    segments: dict[int, Path] = field(default_factory=dict)
    """Segments that stay, by number, oldest first."""
    next_lsn: int = 1
    truncate: tuple[Path, int] | None = None
    """Cut this file at this offset: a torn tail."""
    remove: list[Path] = field(default_factory=list)
    """Delete these files: a last segment without one complete record."""
    tail_problem: str | None = None
    bytes_truncated: int = 0
    zero_bytes_truncated: int = 0
    """Of ``bytes_truncated``, the zeros at the very end (preallocated, never written)."""
    segments_scanned: int = 0
    records_scanned: int = 0
    bytes_scanned: int = 0
    snapshot: SnapshotMeta | None = None


def _segment_files(directory: Path) -> list[tuple[int, Path]]:
    found: dict[int, Path] = {}
    for name in os.listdir(directory):
        parsed = parse_segment_name(name)
        if parsed is None:
            continue
        seq = parsed[0]
        if seq in found:
            raise LogCorruption(
                f"raft log in {directory} has two segments numbered {seq}: "
                f"{found[seq].name} and {name}. {CORRUPTION_ADVICE}",
                path=directory / name,
            )
        found[seq] = directory / name
    return sorted(found.items())


def recover(directory: Path) -> Recovered:
    """Check the log in ``directory`` and rebuild its state (see module doc)."""
    result = Recovered(replay=Replay())
    files = _segment_files(directory)
    previous_seq: int | None = None
    for position, (seq, path) in enumerate(files):
        is_last = position == len(files) - 1
        continuous = previous_seq is not None and seq == previous_seq + 1
        if not continuous:
            result.replay.gap()
        data = path.read_bytes()
        scan = SegmentScan(
            path, data, is_last=is_last, first_lsn=result.next_lsn if continuous else None
        )
        records = _replay_segment(scan, seq, result.replay)
        result.segments_scanned += 1
        result.records_scanned += records
        result.bytes_scanned += len(data)
        if records == 0:
            # Not even the segment head survived: the crash came right after the
            # segment was created, before anything in it was synced.
            if not is_last:
                raise scan.corruption(len(data), "the segment holds no record, not even its head")
            result.remove.append(path)
            result.tail_problem = scan.problem or "segment header without any record"
            result.bytes_truncated = len(data)
            result.zero_bytes_truncated = scan.zero_tail
            break
        if scan.torn_at is not None:
            result.tail_problem = scan.problem
            result.bytes_truncated = len(data) - scan.torn_at
            result.zero_bytes_truncated = scan.zero_tail
            result.truncate = (path, scan.torn_at)
        result.segments[seq] = path
        result.next_lsn = scan.next_lsn
        previous_seq = seq
    _check_whole(directory, files, result)
    return result


def _check_whole(directory: Path, files: list[tuple[int, Path]], result: Recovered) -> None:
    snapshot = read_snapshot(directory)
    result.snapshot = snapshot[0] if snapshot is not None else None
    lost_later_segment = bool(files) and files[0][0] != 1
    if not result.segments and (lost_later_segment or result.snapshot is not None):
        # Only the very first segment, created and synced at the log's creation,
        # can be lost whole to a crash; a later one is durable before older ones go.
        what = "a snapshot" if result.snapshot is not None else f"segment {files[0][1].name}"
        raise LogCorruption(
            f"raft log in {directory} has no intact segment although {what} exists. "
            f"{CORRUPTION_ADVICE}",
            path=directory,
        )
    result.replay.finish(str(directory))


def _replay_segment(scan: SegmentScan, seq: int, replay: Replay) -> int:
    data = scan.data
    count = 0
    for record in scan.records():
        replay.at(scan.path, record.offset)
        kind, offset, size = record.type, record.offset, record.size
        try:
            if count == 0 and kind != RecordType.HEAD:
                raise scan.corruption(offset, f"first record is of type {kind}, not a segment head")
            if kind == RecordType.ENTRY:
                index, term = decode_entry_position(data, offset, size)
                replay.entry(index, term, seq, offset, size)
            elif kind == RecordType.STATE:
                replay.state(decode_state(data, offset, size))
            elif kind == RecordType.COMPACT:
                replay.compact(*decode_mark(data, offset, size))
            elif kind == RecordType.RESET:
                replay.reset(*decode_mark(data, offset, size))
            else:
                head_seq, last_index, compact_index, compact_term = decode_head(data, offset, size)
                if count != 0 or head_seq != seq:
                    raise scan.corruption(
                        offset,
                        f"segment head for segment {head_seq} found as record {count} of "
                        f"segment {seq}",
                    )
                replay.head(last_index, compact_index, compact_term)
        except Malformed as error:
            raise scan.corruption(offset, str(error)) from None
        count += 1
    return count
