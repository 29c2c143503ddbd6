"""Durable storage for Raft: the log, the hard state and the snapshot, on local disk.

How this works. ``DurableLog`` (``log.py``) keeps everything Raft must not lose
in one directory. Writes are buffered and made durable together by ``sync``, one
``fdatasync`` for a whole batch (group commit), which the runtime calls before
sending any message that depends on them ("persist before you send").

Files in the directory::

    0000000001-00000000000000000001.seg   segments: <seq>-<first index>.seg
    0000000002-00000000000000052113.seg
    snapshot                              the latest snapshot (snapshot.py)
    LOCK                                  flock'ed while a DurableLog has it open

A segment is a 16-byte header (``b"AMRLOG01"``, the lsn of its first record)
followed by records::

    [length u32][crc32 u32][lsn u64][type u8][body]

``length`` counts the bytes after the crc; the crc (``zlib.crc32``, see
``records.py`` for why) covers the length field and everything after it; ``lsn``
numbers records 1, 2, 3... across segments. Record types: ENTRY (index, term,
kind, data), STATE (term, commit, vote: the hard state), COMPACT (entries
through an index are dropped; that index's term), RESET (a snapshot replaced the
whole log) and HEAD (first record of each segment: the log's last index and
compaction point when the segment began; a STATE record follows it). Integers
are little-endian. An entry costs 34 bytes on top of its data.

The stream is append-only and replayed in order at open: a Raft overwrite is an
ENTRY with a lower index than the last one (the later record wins), and the
last STATE is the hard state. No record is ever rewritten, so a crash can only
tear the end of the last segment; recovery cuts such a torn tail off and
reports it, and treats any other damage (a bad record followed by valid ones, a
bad record in an older segment, an index gap, a term regression, a missing
segment that held live entries) as ``LogCorruption`` with the file, the offset
and what to do. A segment is fsynced before the next one is created, and older
segments are deleted only once a durable COMPACT or RESET record covers them.

The last segment is written ahead with zero bytes (``preallocate_bytes``, 1 MiB
at a time) so that a sync overwrites space the file already has instead of
growing it, which spares most fdatasyncs a journal commit; a segment is cut
back to its last record when the next one begins and at ``close``, so only the
last one can end in zeros, which recovery reads as the clean end of the log.

Memory: 16 bytes per live entry (its record's location) plus the recent-entry
cache (``cache_bytes_max``, 16 MiB by default), the write buffer
(``write_buffer_bytes``, 1 MiB) and a buffer of zeros (``preallocate_bytes``,
1 MiB); older entries are read from disk. Compaction after each snapshot is what
bounds the live log.

Modules: ``values`` (value types), ``errors``, ``records`` (frame encoding and
checks), ``segment`` (file names, scan, torn tail versus corruption),
``positions`` (the in-memory index), ``replay`` (rebuilding state from
records), ``recovery`` (opening), ``snapshot`` (the snapshot file), ``log``.
"""

from mesh.raftlog.errors import (
    Compacted,
    LogCorruption,
    LogLocked,
    RaftLogError,
    SnapshotOutOfDate,
    StorageFailed,
    Unavailable,
)
from mesh.raftlog.log import (
    CACHE_BYTES_MAX_DEFAULT,
    ENTRY_SIZE_OVERHEAD_BYTES,
    PREALLOCATE_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX_DEFAULT,
    WRITE_BUFFER_BYTES_DEFAULT,
    DurableLog,
    entry_size_bytes,
)
from mesh.raftlog.records import (
    ENTRY_DATA_BYTES_MAX,
    ENTRY_RECORD_OVERHEAD_BYTES,
    VOTE_BYTES_MAX,
)
from mesh.raftlog.values import HardState, LogEntry, RecoveryReport, SnapshotMeta

__all__ = [
    "CACHE_BYTES_MAX_DEFAULT",
    "ENTRY_DATA_BYTES_MAX",
    "ENTRY_RECORD_OVERHEAD_BYTES",
    "ENTRY_SIZE_OVERHEAD_BYTES",
    "PREALLOCATE_BYTES_DEFAULT",
    "SEGMENT_BYTES_MAX_DEFAULT",
    "VOTE_BYTES_MAX",
    "WRITE_BUFFER_BYTES_DEFAULT",
    "Compacted",
    "DurableLog",
    "HardState",
    "LogCorruption",
    "LogEntry",
    "LogLocked",
    "RaftLogError",
    "RecoveryReport",
    "SnapshotMeta",
    "SnapshotOutOfDate",
    "StorageFailed",
    "Unavailable",
    "entry_size_bytes",
]
