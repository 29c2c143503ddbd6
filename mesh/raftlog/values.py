"""The plain value types the durable log stores and returns.

How this works: these are immutable values with no behaviour (frozen, slotted
dataclasses; the entry, built on every append, a named tuple), so that the Raft
core's adapter can convert to and from its own types field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["HardState", "LogEntry", "RecoveryReport", "SnapshotMeta"]


class LogEntry(NamedTuple):
    """One Raft log entry: its position, the term it was proposed in, an
    application-defined ``kind`` (0..255) and opaque ``data`` (immutable).

    A named tuple rather than a frozen dataclass: one is built per entry on every
    append and every read from disk, at half the cost.
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    term: int
    kind: int
    data: bytes


@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must not forget across a crash: current term, the vote cast in it
    (``None``: none yet) and the commit index."""

    term: int
    vote: bytes | None
    commit: int


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log (``index`` and its ``term``) and the cluster
    configuration in force there, as opaque bytes (``conf``)."""

    index: int
    term: int
    conf: bytes


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What ``DurableLog.open`` found and repaired.

    A torn tail (an incomplete write at a crash) is cut off the last segment:
    ``bytes_truncated`` bytes at ``truncated_at`` in ``truncated_file``, for the
    reason in ``tail_problem``. Of those, ``zero_bytes_truncated`` were zeros at
    the very end: space preallocated past the last record that a crash left in
    place; when they are all of it, no write was torn. ``files_removed`` lists
    files dropped as unfinished (a last segment with no complete record, a
    half-written snapshot).
    """

    segments_scanned: int = 0
    records_scanned: int = 0
    bytes_scanned: int = 0
    entries_recovered: int = 0
    bytes_truncated: int = 0
    zero_bytes_truncated: int = 0
    truncated_file: str | None = None
    truncated_at: int | None = None
    tail_problem: str | None = None
    files_removed: tuple[str, ...] = ()
    snapshot_adopted: bool = False
    seconds: float = 0.0
