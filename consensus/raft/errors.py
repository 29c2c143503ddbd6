"""Operating errors of the Raft core and its storage.

How this works: ``consensus`` sits below ``mesh`` and cannot use ``MeshError``, so
Raft has its own root, ``RaftError``. The storage errors are part of the storage
contract (``storage.Storage``): the core catches ``CompactedError`` (fall back to
sending a snapshot) and ``UnavailableError`` (the index is past the end of the
log); anything else a storage raises is a failure of the driver's disk and
propagates to the driver.
"""

from __future__ import annotations

__all__ = [
    "CompactedError",
    "RaftError",
    "SnapshotOutOfDateError",
    "StorageError",
    "UnavailableError",
]


class RaftError(Exception):
    """Root of every operating error the Raft core and its storages raise."""


class StorageError(RaftError):
    """A storage request cannot be served as asked."""


class CompactedError(StorageError):
    """The requested index was compacted away (it is covered by the snapshot)."""


class UnavailableError(StorageError):
    """The requested index is past the last index the storage holds."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than (or as old as) the one already held was offered."""
