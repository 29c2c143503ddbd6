"""Operating errors of the durable Raft log, under ``mesh.errors.MeshError``.

How this works: the log raises four kinds of trouble. ``LogCorruption`` means the
files on disk are damaged in a way a crash cannot explain; the node must not
start from them. ``StorageFailed`` means a write or fsync failed while running;
what reached the disk is unknown, so the log refuses further use rather than
risk acknowledging data that is not there. ``Compacted`` and ``Unavailable``
answer a read below the first or past the last index (Raft asks both in normal
operation). Misuse by the caller (a gap in appended indices, a term that goes
back) is a ``ValueError`` naming the values at fault.
"""

from __future__ import annotations

from pathlib import Path

from mesh.errors import MeshError

__all__ = [
    "Compacted",
    "LogCorruption",
    "LogLocked",
    "RaftLogError",
    "SnapshotOutOfDate",
    "StorageFailed",
    "Unavailable",
]


class RaftLogError(MeshError):
    """Root of the durable Raft log's operating errors."""


class LogCorruption(RaftLogError):
    """The log's files are damaged in a way a crash cannot explain.

    ``path`` and ``offset`` locate the damage when it is in one file.
    """

    def __init__(self, message: str, *, path: Path | None = None, offset: int | None = None):
        super().__init__(message)
        self.path = path
        self.offset = offset


class StorageFailed(RaftLogError):
    """A write or fsync failed; the log refuses further use (its durable state is unknown)."""


class LogLocked(RaftLogError):
    """Another ``DurableLog`` (in this or another process) has the directory open."""


class Compacted(RaftLogError):
    """The index asked for is below the log's first index (a snapshot covers it)."""


class Unavailable(RaftLogError):
    """The index asked for is past the log's last index."""


class SnapshotOutOfDate(RaftLogError, ValueError):
    """A snapshot not newer than the one held (or than the compaction point) was offered."""
