"""``DurableLog``: Raft's log, hard state and snapshot on local disk.

How this works. Everything the log must remember goes into one append-only
stream of checksummed records spread over segment files (entries, hard state
changes, compactions, snapshot resets; see the package docstring). Keeping the
hard state in the same stream as the entries is what lets one fsync of one file
make a whole Raft ``Ready`` durable (group commit): ``append`` and
``set_hard_state`` only fill a buffer in memory, and ``sync`` writes it and
calls ``fdatasync`` once, plus a directory fsync when a segment was created.

A Raft overwrite (entries replacing a conflicting suffix) appends records with
lower indices; replay lets the latest record for an index win, so no record is
ever rewritten and a crash can only ever tear the end of the last segment. (An
overwrite therefore changes nothing on disk but the records it appends: the
write position goes on where it was.) Compaction writes a COMPACT record and,
once that is durable, deletes whole segments that hold nothing live.

Preallocation. An ``fdatasync`` that grows the file must also commit the new
size through the filesystem journal; one that only overwrites blocks already
written does not. On ext4, three processes each appending one 350-byte entry
and syncing at once took a median of 140 - 160 us per append and sync this way
against 180 - 205 growing the file. So the active segment keeps a region of
zero bytes ahead of its records: records are written with ``pwrite`` where
they belong, the segment's size less what is still buffered (the file is not
opened ``O_APPEND``), and when a write would reach past the zeros,
``preallocate_bytes`` more zeros (1 MiB by default) are written after it, up
to ``segment_bytes_max`` plus some room for the records that cross it. The
zeros are really written: ``posix_fallocate`` would leave "unwritten" extents
whose first write is again a journal commit. The zeros and the records before
them are made durable by the same ``fdatasync`` (the next sync), which
commits the new size once per chunk; the syncs after it need no journal commit.
When a segment is finished (a roll, or ``close``) it is cut back to its last
record and fdatasynced before anything else happens, so only the last segment
can end in zeros; recovery (``segment.py``) reads a zero tail there as the
clean end of the log, cuts it off and reports it apart from torn bytes.
``preallocate_bytes=0`` turns this off: every write then grows the file.

In memory: ``Positions`` (16 bytes per live entry: where its record is) and a
cache of the most recent entries (``cache_bytes_max``) that leaders read back
when replicating; older entries are read from disk with ``pread`` and their
checksums checked again. The write buffer holds at most ``write_buffer_bytes``
before it is handed to the OS (not fsynced); the zeros written ahead come from
one buffer of ``preallocate_bytes``, made at the first use.

Not thread-safe: one caller at a time (the runtime calls it from one worker
thread). ``fsync=False`` keeps all the logic but skips every fsync; use it only
for tests and throwaway benchmarks.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from mesh.raftlog.errors import (
    Compacted,
    LogCorruption,
    LogLocked,
    RaftLogError,
    SnapshotOutOfDate,
    StorageFailed,
    Unavailable,
)
from mesh.raftlog.positions import Positions
from mesh.raftlog.records import (
    ENTRY_DATA_BYTES_MAX,
    ENTRY_RECORD_OVERHEAD_BYTES,
    VOTE_BYTES_MAX,
    RecordType,
    decode_entry,
    encode_entry,
    encode_head,
    encode_mark,
    encode_state,
    frame_problem,
)
from mesh.raftlog.recovery import recover
from mesh.raftlog.segment import (
    CORRUPTION_ADVICE,
    SEGMENT_HEADER_BYTES,
    encode_segment_header,
    fsync_directory,
    pread_exact,
    pwrite_all,
    segment_name,
)
from mesh.raftlog.snapshot import SNAPSHOT_TEMP_FILE, read_snapshot, write_snapshot
from mesh.raftlog.values import HardState, LogEntry, RecoveryReport, SnapshotMeta

__all__ = [
    "CACHE_BYTES_MAX_DEFAULT",
    "ENTRY_SIZE_OVERHEAD_BYTES",
    "LOCK_FILE",
    "PREALLOCATE_BYTES_DEFAULT",
    "SEGMENT_BYTES_MAX_DEFAULT",
    "SEGMENT_BYTES_MIN",
    "WRITE_BUFFER_BYTES_DEFAULT",
    "DurableLog",
    "entry_size_bytes",
]

SEGMENT_BYTES_MAX_DEFAULT = 64 << 20
"""A segment is closed and a new one begun once it reaches this size. Larger
segments mean fewer files and fsyncs at rollover; smaller ones free disk sooner
after compaction and bound the memory recovery needs (one segment at a time)."""
SEGMENT_BYTES_MIN = 512
CACHE_BYTES_MAX_DEFAULT = 16 << 20
"""Recent entries kept in memory for reads (counted as ``entry_size_bytes``).
More keeps slow followers off the disk; less saves memory."""
WRITE_BUFFER_BYTES_DEFAULT = 1 << 20
"""Appended records are handed to the OS once this many are buffered, and at
every ``sync``. Larger saves system calls; smaller bounds the buffer's memory."""
ENTRY_SIZE_OVERHEAD_BYTES = 16
"""Bytes an entry counts for in ``entries(max_bytes=...)`` on top of its data: the
same allowance as the Raft core's ``consensus.raft.types.ENTRY_OVERHEAD_BYTES``,
so that a batch cut here matches the core's own budget."""
PREALLOCATE_BYTES_DEFAULT = 1 << 20
"""Zero bytes written at a time ahead of the records in the active segment, so
that most syncs overwrite space the file already has instead of growing it (see
the module doc). Larger makes the sync that writes them rarer but slower; 0
turns preallocation off."""
LOCK_FILE = "LOCK"
# How far past segment_bytes_max the zeros may reach: room for the record that
# crosses the limit and the few small ones (hard state, compaction) that may
# follow it before the next append rolls. A larger one grows the file.
_PREALLOCATE_PAST_MAX_BYTES = 64 << 10
# Longest run of neighbouring records read with one pread.
_READ_SPAN_BYTES_MAX = 4 << 20
_fsync_data = getattr(os, "fdatasync", os.fsync)  # appended data and the size; not atime


def entry_size_bytes(entry: LogEntry) -> int:
    """What ``entry`` counts for against ``max_bytes`` in ``DurableLog.entries``."""
    return len(entry.data) + ENTRY_SIZE_OVERHEAD_BYTES


class DurableLog:
    """Raft's durable log, hard state and snapshot in one directory.

    Open with ``DurableLog.open(directory)``. Writes (``append``,
    ``set_hard_state``, ``compact``) are buffered and become durable together at
    the next ``sync``; ``save_snapshot`` is durable when it returns. Reads see
    every write at once, synced or not. ``recovery`` reports what opening found.
    """

    __slots__ = (
        "_active_seq",
        "_active_size",
        "_buf",
        "_cache",
        "_cache_bytes",
        "_cache_bytes_max",
        "_cache_first",
        "_closed",
        "_compact_index",
        "_compact_term",
        "_counters",
        "_dir_dirty",
        "_dir_fd",
        "_directory",
        "_failed",
        "_fsync",
        "_hard",
        "_lock_fd",
        "_next_lsn",
        "_pos",
        "_preallocate_bytes",
        "_readers",
        "_segment_bytes_max",
        "_segments",
        "_snapshot_meta",
        "_to_delete",
        "_unsynced",
        "_wfd",
        "_write_buffer_bytes",
        "_written_hard",
        "_zeroed_to",
        "_zeros",
        "recovery",
    )

    # -- opening ------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        fsync: bool = True,
        cache_bytes_max: int = CACHE_BYTES_MAX_DEFAULT,
        write_buffer_bytes: int = WRITE_BUFFER_BYTES_DEFAULT,
        preallocate_bytes: int = PREALLOCATE_BYTES_DEFAULT,
    ) -> DurableLog:
        """Open the log in ``directory``, creating it if missing, and recover it.

        Recovery reads every segment and checks every record. A torn write at the
        very end of the last segment (a crash mid-write) is cut off and reported
        in ``recovery``; damage anywhere else, missing entries, an index gap or a
        term regression raise ``LogCorruption`` naming the file and offset, and
        nothing on disk is changed. Raises ``LogLocked`` if the directory is open
        elsewhere. ``preallocate_bytes``: see ``PREALLOCATE_BYTES_DEFAULT``.
        """
        return cls(
            Path(directory),
            segment_bytes_max=segment_bytes_max,
            fsync=fsync,
            cache_bytes_max=cache_bytes_max,
            write_buffer_bytes=write_buffer_bytes,
            preallocate_bytes=preallocate_bytes,
        )

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes_max: int,
        fsync: bool,
        cache_bytes_max: int,
        write_buffer_bytes: int,
        preallocate_bytes: int,
    ) -> None:
        """Use ``DurableLog.open``."""
        if segment_bytes_max < SEGMENT_BYTES_MIN:
            raise ValueError(
                f"segment_bytes_max ({segment_bytes_max}) must be at least {SEGMENT_BYTES_MIN}"
            )
        if cache_bytes_max < 0 or write_buffer_bytes < 0 or preallocate_bytes < 0:
            raise ValueError(
                f"cache_bytes_max ({cache_bytes_max}), write_buffer_bytes "
                f"({write_buffer_bytes}) and preallocate_bytes ({preallocate_bytes}) "
                "must not be negative"
            )
        self._directory = directory
        self._segment_bytes_max = segment_bytes_max
        self._fsync = fsync
        self._cache_bytes_max = cache_bytes_max
        self._write_buffer_bytes = write_buffer_bytes
        self._preallocate_bytes = preallocate_bytes
        self._zeros = b""  # preallocate_bytes of zeros, made at the first use
        self._zeroed_to = 0  # the active segment's size: zeros from the records' end
        self._closed = True  # until the files are open
        self._failed: str | None = None
        self._dir_fd = -1
        self._lock_fd = -1
        self._wfd = -1
        self._readers: dict[int, int] = {}
        self._buf = bytearray()
        self._cache: dict[int, LogEntry] = {}
        self._cache_bytes = 0
        self._to_delete: list[int] = []
        self._unsynced = False
        self._dir_dirty = False
        self._counters = dict.fromkeys(
            (
                "appends",
                "entries_appended",
                "syncs",
                "fsyncs",
                "directory_fsyncs",
                "bytes_written",
                "bytes_preallocated",
                "overwrites",
                "entries_overwritten",
                "compactions",
                "snapshots_saved",
                "segments_created",
                "segments_deleted",
                "cache_hits",
                "entries_read_from_disk",
            ),
            0,
        )
        try:
            self._lock()
            self._recover()
        except BaseException:
            self._release()
            raise

    def _lock(self) -> None:
        created = not self._directory.exists()
        self._directory.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
        if created and self._fsync:
            parent = os.open(self._directory.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fsync_directory(parent)
            finally:
                os.close(parent)
        self._lock_fd = os.open(self._directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogLocked(
                f"raft log {self._directory} is already open (by this or another process)"
            ) from None

    def _recover(self) -> None:
        started = time.perf_counter()
        removed: list[str] = []
        temp = self._directory / SNAPSHOT_TEMP_FILE
        if temp.exists():  # a snapshot write that a crash interrupted before its rename
            temp.unlink()
            removed.append(temp.name)
        found = recover(self._directory)
        for path in found.remove:
            path.unlink()
            removed.append(path.name)
        if found.truncate is not None:
            path, offset = found.truncate
            self._truncate_file(path, offset)
        self._dir_dirty = bool(removed)
        replay = found.replay
        self._pos: Positions = replay.positions
        self._compact_index = replay.compact_index
        self._compact_term = replay.compact_term
        self._hard: HardState = replay.hard_state
        self._written_hard: HardState = replay.hard_state
        self._segments: dict[int, Path] = found.segments
        self._next_lsn = found.next_lsn
        self._snapshot_meta: SnapshotMeta | None = found.snapshot
        self._cache_first = self._pos.last + 1
        self._closed = False
        if self._segments:
            self._active_seq = max(self._segments)
            # Not O_APPEND: records go at their offsets, before the preallocated
            # zeros. Recovery cut any zero tail, so the file ends at its last record.
            self._wfd = os.open(self._segments[self._active_seq], os.O_WRONLY)
            self._active_size = self._zeroed_to = os.fstat(self._wfd).st_size
        else:
            self._active_seq = 0
            self._create_segment()
        adopted = self._reconcile_snapshot()
        if self._buf or self._dir_dirty:
            self.sync()
        self.recovery = RecoveryReport(
            segments_scanned=found.segments_scanned,
            records_scanned=found.records_scanned,
            bytes_scanned=found.bytes_scanned,
            entries_recovered=len(self._pos),
            bytes_truncated=found.bytes_truncated,
            zero_bytes_truncated=found.zero_bytes_truncated,
            truncated_file=found.truncate[0].name if found.truncate else None,
            truncated_at=found.truncate[1] if found.truncate else None,
            tail_problem=found.tail_problem,
            files_removed=tuple(removed),
            snapshot_adopted=adopted,
            seconds=time.perf_counter() - started,
        )

    def _truncate_file(self, path: Path, offset: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _reconcile_snapshot(self) -> bool:
        """Finish a ``save_snapshot`` that a crash cut short after its rename."""
        meta = self._snapshot_meta
        if meta is None or meta.index < self._compact_index:
            return False
        if meta.index == self._compact_index and meta.term == self._compact_term:
            return False
        if self._term_or_none(meta.index) == meta.term:
            return False  # the log still holds the snapshot's entry: nothing to undo
        self._replace_log(meta)
        return True

    # -- writing ------------------------------------------------------------------

    def append(self, entries: Sequence[LogEntry]) -> None:
        """Append contiguous ``entries`` (buffered: durable at the next ``sync``).

        If ``entries[0].index <= last_index()``, the entries from that index on
        are dropped first (a Raft overwrite). Raises ``ValueError``, changing
        nothing, if the entries are not contiguous, start below ``first_index()``
        or past ``last_index() + 1``, or have a term lower than the entry before.
        """
        self._check_usable()
        if not entries:
            return
        start = entries[0].index
        self._validate_append(entries)
        if self._active_size >= self._segment_bytes_max:
            # Roll before an overwrite's truncation, never between it and the first
            # record that implies it: a segment's head must describe the log as the
            # records before it leave it.
            self._roll()
        if start <= self._pos.last:
            self._truncate_suffix(start)
        cache = self._cache
        add_position = self._pos.append
        buf = self._buf
        segment_bytes_max, write_buffer_bytes = self._segment_bytes_max, self._write_buffer_bytes
        # Every voter appends every entry: the loop keeps the counters in locals and
        # stores them back before anything that reads them (a roll, a flush) and at
        # the end.
        lsn, offset, segment = self._next_lsn, self._active_size, self._active_seq
        cached_bytes = 0
        for count, entry in enumerate(entries):
            if count and offset >= segment_bytes_max:
                self._next_lsn, self._active_size = lsn, offset
                self._roll()  # writes a head and the hard state: more records
                lsn, offset, segment = self._next_lsn, self._active_size, self._active_seq
            size = encode_entry(buf, lsn, entry)
            lsn += 1
            add_position(entry.index, entry.term, segment, offset, size)
            offset += size
            cache[entry.index] = entry
            cached_bytes += len(entry.data)
            if len(buf) >= write_buffer_bytes:
                self._active_size = offset  # where the flush puts the buffer
                self._flush()
        self._next_lsn, self._active_size = lsn, offset
        self._cache_bytes += cached_bytes + ENTRY_SIZE_OVERHEAD_BYTES * len(entries)
        self._evict()
        self._counters["appends"] += 1
        self._counters["entries_appended"] += len(entries)

    def _validate_append(self, entries: Sequence[LogEntry]) -> None:
        start = entries[0].index
        first, last = self._compact_index + 1, self._pos.last
        if start < first:
            raise ValueError(
                f"cannot append at index {start}: entries through {first - 1} are compacted "
                f"(first index is {first})"
            )
        if start > last + 1:
            raise ValueError(
                f"cannot append at index {start}: the log ends at {last}, so that would leave a gap"
            )
        previous_index = start - 1
        previous_term = self._term_or_none(previous_index)
        assert previous_term is not None, (previous_index, first, last)
        for entry in entries:
            if entry.index != previous_index + 1:
                raise ValueError(
                    f"entries are not contiguous: index {entry.index} follows {previous_index}"
                )
            if entry.term < previous_term:
                raise ValueError(
                    f"entry {entry.index} has term {entry.term}, below term {previous_term} "
                    f"of entry {previous_index}: terms never go back along the log"
                )
            if not 0 <= entry.kind <= 255:
                raise ValueError(f"entry {entry.index} has kind {entry.kind}, not in 0..255")
            if len(entry.data) > ENTRY_DATA_BYTES_MAX:
                raise ValueError(
                    f"entry {entry.index} has {len(entry.data)} bytes of data, more than "
                    f"{ENTRY_DATA_BYTES_MAX}"
                )
            previous_index, previous_term = entry.index, entry.term

    def _truncate_suffix(self, index: int) -> None:
        last = self._pos.last
        self._pos.truncate_from(index)
        for stale in range(max(index, self._cache_first), last + 1):
            entry = self._cache.pop(stale)
            self._cache_bytes -= len(entry.data) + ENTRY_SIZE_OVERHEAD_BYTES
        self._cache_first = min(self._cache_first, index)
        self._counters["overwrites"] += 1
        self._counters["entries_overwritten"] += last + 1 - index

    def set_hard_state(self, state: HardState) -> None:
        """Replace the hard state (buffered: durable at the next ``sync``).

        Raises ``ValueError`` if the term goes back or the vote is longer than
        ``VOTE_BYTES_MAX``.
        """
        self._check_usable()
        if state.term < self._hard.term:
            raise ValueError(
                f"hard state term {state.term} is below the current term {self._hard.term}: "
                "a term never goes back"
            )
        if state.commit < 0:
            raise ValueError(f"hard state commit {state.commit} is negative")
        if state.vote is not None and len(state.vote) > VOTE_BYTES_MAX:
            raise ValueError(
                f"hard state vote is {len(state.vote)} bytes, more than {VOTE_BYTES_MAX}"
            )
        self._hard = state

    def sync(self) -> None:
        """Make every write so far durable: one fdatasync of the active segment (plus
        a directory fsync if a segment was created or removed since the last one).

        This is the group commit: append and set the hard state for a whole batch,
        then call ``sync`` once before sending anything that depends on it.
        """
        self.write_out()
        self.make_durable()
        self.finish_sync()

    def write_out(self) -> None:
        """The first step of ``sync``: hand every buffered record to the OS.

        ``sync`` in three steps lets a driver run the slow middle one,
        ``make_durable``, on a worker thread while its own thread keeps reading
        the log: ``write_out`` and ``finish_sync`` change the log's state and must
        run on the caller's thread; between them only reads may happen.
        """
        self._check_usable()
        if self._hard != self._written_hard:
            self._write_state()
        self._flush()

    def make_durable(self) -> None:
        """The second step of ``sync``: the fdatasync (and directory fsync) alone.

        Touches no state that reads use, so it may run on another thread while the
        owner reads (see ``write_out``); no write may run meanwhile.
        """
        try:
            self._fdatasync_if_unsynced()
            if self._dir_dirty:
                if self._fsync:
                    fsync_directory(self._dir_fd)
                    self._counters["directory_fsyncs"] += 1
                self._dir_dirty = False
        except OSError as error:
            self._fail("fsync", error)

    def finish_sync(self) -> None:
        """The last step of ``sync``: delete segments compaction freed, count the sync."""
        if self._to_delete:
            self._delete_segments()
        self._counters["syncs"] += 1

    def compact(self, index: int) -> None:
        """Drop the entries through ``index`` (buffered; segments holding nothing live
        are deleted at the next ``sync``). Entries after ``index`` stay readable and
        ``term(index)`` keeps answering. No-op at or below the compaction point;
        ``ValueError`` past the last index."""
        self._check_usable()
        if index <= self._compact_index:
            return
        if index > self._pos.last:
            raise ValueError(f"cannot compact through {index}: the last index is {self._pos.last}")
        term = self._pos.term(index)
        self._write_mark(RecordType.COMPACT, index, term)
        self._pos.drop_through(index)
        for dropped in range(self._cache_first, index + 1):
            entry = self._cache.pop(dropped)
            self._cache_bytes -= len(entry.data) + ENTRY_SIZE_OVERHEAD_BYTES
        self._cache_first = max(self._cache_first, index + 1)
        self._compact_index, self._compact_term = index, term
        live_from = self._pos.segment(self._pos.first) if len(self._pos) else self._active_seq
        self._schedule_deletion(live_from)
        self._counters["compactions"] += 1

    def save_snapshot(
        self,
        meta: SnapshotMeta,
        data: bytes,
        *,
        compact: bool = True,
        replace_log: bool = False,
    ) -> None:
        """Store a snapshot durably (temp file, fsync, rename, directory fsync), then
        sync the log: everything written so far is durable when this returns.

        If the log holds entry ``meta.index`` with ``meta.term`` (a snapshot this
        node took), the entries through it are compacted (unless ``compact`` is
        false: then call ``compact`` later, for instance to keep a tail for slow
        followers) and later entries stay. Otherwise, or with ``replace_log`` (a
        snapshot installed from the leader), the snapshot replaces the whole log.
        Raises ``SnapshotOutOfDate`` unless ``meta.index`` is newer than the held
        snapshot and at least the compaction point.
        """
        self._check_usable()
        held = self._snapshot_meta
        if meta.index < 1 or (held is not None and meta.index <= held.index):
            raise SnapshotOutOfDate(
                f"snapshot at index {meta.index} is not newer than the one held at "
                f"{held.index if held else 0}"
            )
        if meta.index < self._compact_index:
            raise SnapshotOutOfDate(
                f"snapshot at index {meta.index} is below the compaction point "
                f"{self._compact_index}: entries after it are gone, so it cannot stand in "
                "for them"
            )
        if meta.term < 0:
            raise ValueError(f"snapshot term {meta.term} is negative")
        try:
            write_snapshot(self._directory, self._dir_fd, meta, data, fsync=self._fsync)
        except OSError as error:
            self._fail("writing the snapshot", error)
        self._snapshot_meta = meta
        if not replace_log and self._term_or_none(meta.index) == meta.term:
            if compact:
                self.compact(meta.index)
        else:
            self._replace_log(meta)
        self._counters["snapshots_saved"] += 1
        self.sync()

    def _replace_log(self, meta: SnapshotMeta) -> None:
        self._write_mark(RecordType.RESET, meta.index, meta.term)
        self._pos.restart(meta.index + 1)
        self._cache.clear()
        self._cache_bytes = 0
        self._cache_first = meta.index + 1
        self._compact_index, self._compact_term = meta.index, meta.term
        # Begin a fresh segment so that every older one, all stale now, can go at the
        # next sync rather than linger until a later compaction passes them.
        self._roll()
        self._schedule_deletion(self._active_seq)

    # -- reading ------------------------------------------------------------------

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[LogEntry]:
        """The entries with ``lo <= index < hi``, stopping before the one that would take
        their ``entry_size_bytes`` sum past ``max_bytes`` (but at least one).

        Raises ``Compacted`` if ``lo < first_index()``, ``Unavailable`` if
        ``hi > last_index() + 1``, ``ValueError`` if ``lo > hi``.
        """
        self._check_open()
        if lo > hi:
            raise ValueError(f"entries({lo}, {hi}): lo is above hi")
        first, last = self._compact_index + 1, self._pos.last
        if lo < first:
            raise Compacted(f"index {lo} is compacted (first index is {first})")
        if hi > last + 1:
            raise Unavailable(f"index {hi - 1} is past the last index {last}")
        if lo == hi:
            return []
        stop = hi if max_bytes is None else self._stop_within(lo, hi, max_bytes)
        found: list[LogEntry] = []
        if lo < self._cache_first:
            found = self._read(lo, min(stop, self._cache_first))
        cached_from = max(lo, self._cache_first)
        if cached_from < stop:
            cache = self._cache
            found.extend([cache[index] for index in range(cached_from, stop)])
            self._counters["cache_hits"] += stop - cached_from
        return found

    def _stop_within(self, lo: int, hi: int, max_bytes: int) -> int:
        # Record sizes are known without reading: record = data + fixed overhead.
        extra = ENTRY_SIZE_OVERHEAD_BYTES - ENTRY_RECORD_OVERHEAD_BYTES
        total = self._pos.size(lo) + extra
        index = lo + 1
        while index < hi:
            total += self._pos.size(index) + extra
            if total > max_bytes:
                break
            index += 1
        return index

    def _read(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries ``lo..hi-1`` from disk, one pread per run of neighbouring records."""
        found: list[LogEntry] = []
        index = lo
        while index < hi:
            seq, start, size = self._pos.locate(index)
            end = start + size
            after = index + 1
            while after < hi and end - start < _READ_SPAN_BYTES_MAX:
                next_seq, next_start, next_size = self._pos.locate(after)
                if next_seq != seq or next_start != end:
                    break
                end += next_size
                after += 1
            blob = self._pread(seq, start, end - start)
            found.extend(self._decode_run(blob, seq, start, index, after))
            index = after
        self._counters["entries_read_from_disk"] += hi - lo
        return found

    def _decode_run(self, blob: bytes, seq: int, start: int, lo: int, hi: int) -> list[LogEntry]:
        view = memoryview(blob)
        found = []
        at = 0
        for index in range(lo, hi):
            size = self._pos.size(index)
            problem = frame_problem(blob, view, at, at + size)
            entry = decode_entry(blob, at, size) if problem is None else None
            if entry is None or entry.index != index or entry.term != self._pos.term(index):
                raise LogCorruption(
                    f"raft log segment {self._segments[seq]} is corrupt at byte offset "
                    f"{start + at}: reading entry {index} found "
                    f"{problem or f'entry {entry.index if entry else None} instead'}. "
                    f"The damage happened after the log was opened. {CORRUPTION_ADVICE}",
                    path=self._segments[seq],
                    offset=start + at,
                )
            found.append(entry)
            at += size
        return found

    def _pread(self, seq: int, offset: int, size: int) -> bytes:
        if seq == self._active_seq and offset + size > self._active_size - len(self._buf):
            self._flush()  # the records are still in our buffer: hand them to the OS
        fd = self._readers.get(seq)
        if fd is None:
            fd = self._readers[seq] = os.open(self._segments[seq], os.O_RDONLY)
        return pread_exact(fd, size, offset)

    def term(self, index: int) -> int:
        """Term of entry ``index``; at the compaction point (the snapshot's index) the
        term kept for it. Raises ``Compacted`` below it, ``Unavailable`` past the end."""
        self._check_open()
        if index == self._compact_index:
            return self._compact_term
        if index < self._compact_index:
            raise Compacted(
                f"index {index} is compacted (first index is {self._compact_index + 1})"
            )
        if index > self._pos.last:
            raise Unavailable(f"index {index} is past the last index {self._pos.last}")
        return self._pos.term(index)

    def first_index(self) -> int:
        """Index of the first entry held (the compaction point + 1)."""
        return self._compact_index + 1

    def last_index(self) -> int:
        """Index of the last entry held (``first_index() - 1`` when empty)."""
        return self._pos.last

    def hard_state(self) -> HardState:
        """The latest hard state set (durable once ``sync`` has run)."""
        return self._hard

    def snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """The latest snapshot and its data read from disk, ``None`` if none was saved."""
        self._check_open()
        if self._snapshot_meta is None:
            return None
        found = read_snapshot(self._directory)
        if found is None or found[0] != self._snapshot_meta:
            raise LogCorruption(
                f"raft snapshot in {self._directory} changed or vanished while the log was "
                f"open (expected {self._snapshot_meta}). {CORRUPTION_ADVICE}",
                path=self._directory,
            )
        return found

    def snapshot_meta(self) -> SnapshotMeta | None:
        """The latest snapshot's metadata without reading its data."""
        return self._snapshot_meta

    @property
    def directory(self) -> Path:
        """The directory holding the log."""
        return self._directory

    @property
    def stats(self) -> dict[str, int]:
        """Counters since open, the log's current shape, and what recovery found."""
        stats = dict(self._counters)
        stats.update(
            entries=len(self._pos),
            first_index=self.first_index(),
            last_index=self._pos.last,
            segments=len(self._segments),
            cache_entries=len(self._cache),
            cache_bytes=self._cache_bytes,
            recovery_segments_scanned=self.recovery.segments_scanned,
            recovery_records_scanned=self.recovery.records_scanned,
            recovery_entries=self.recovery.entries_recovered,
            recovery_bytes_truncated=self.recovery.bytes_truncated,
            recovery_zero_bytes_truncated=self.recovery.zero_bytes_truncated,
        )
        return stats

    # -- closing ------------------------------------------------------------------

    def close(self) -> None:
        """Sync what is pending, cut the preallocated zeros off the active segment,
        close every file and release the directory lock.

        Safe to call twice. After a ``StorageFailed`` it only releases."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
                self._finish_segment("closing the log")
        finally:
            self._release()

    def __enter__(self) -> DurableLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DurableLog({str(self._directory)!r}, first_index={self.first_index()}, "
            f"last_index={self._pos.last}, segments={len(self._segments)})"
        )

    def _release(self) -> None:
        self._closed = True
        for fd in (self._wfd, *self._readers.values(), self._dir_fd, self._lock_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass  # everything that mattered was fsynced (or reported) before
        self._readers.clear()
        self._wfd = self._dir_fd = self._lock_fd = -1

    # -- records and segments ------------------------------------------------------

    def _write_state(self) -> None:
        self._active_size += encode_state(self._buf, self._next_lsn, self._hard)
        self._next_lsn += 1
        self._written_hard = self._hard

    def _write_mark(self, kind: RecordType, index: int, term: int) -> None:
        self._active_size += encode_mark(self._buf, self._next_lsn, kind, index, term)
        self._next_lsn += 1

    def _roll(self) -> None:
        """Close the active segment and begin the next one.

        The old segment is cut back to its last record (dropping the preallocated
        zeros) and fsynced first, so that only the last segment can ever end in a
        torn write or in zeros: recovery may then treat damage in any other
        segment as corruption. Since the new segment is created only once that
        fsync has returned, no crash can leave a zero tail in an older segment.
        That costs one extra fsync per ``segment_bytes_max``.
        """
        self._flush()
        self._finish_segment("closing a full segment")
        try:
            os.close(self._wfd)
        except OSError as error:
            self._fail("closing a full segment", error)
        self._wfd = -1
        self._create_segment()

    def _finish_segment(self, what: str) -> None:
        """Cut the active segment's preallocated zeros off and make it durable (its
        records are all written out: nothing is buffered)."""
        assert not self._buf
        try:
            if self._zeroed_to > self._active_size:
                os.ftruncate(self._wfd, self._active_size)
                self._zeroed_to = self._active_size
                self._unsynced = True  # the new size, which fdatasync commits
            self._fdatasync_if_unsynced()
        except OSError as error:
            self._fail(what, error)

    def _fdatasync_if_unsynced(self) -> None:
        if self._unsynced:
            if self._fsync:
                _fsync_data(self._wfd)
                self._counters["fsyncs"] += 1
            self._unsynced = False

    def _create_segment(self) -> None:
        seq = self._active_seq + 1
        path = self._directory / segment_name(seq, self._pos.last + 1)
        try:
            self._wfd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as error:
            self._fail(f"creating segment {path}", error)
        self._segments[seq] = path
        self._active_seq = seq
        self._zeroed_to = 0
        self._buf += encode_segment_header(self._next_lsn)
        self._active_size = SEGMENT_HEADER_BYTES
        # Every segment restates where the log stands and the hard state, so that
        # deleting older segments never loses them.
        self._active_size += encode_head(
            self._buf,
            self._next_lsn,
            seq,
            self._pos.last,
            self._compact_index,
            self._compact_term,
        )
        self._next_lsn += 1
        self._write_state()
        self._dir_dirty = True
        self._counters["segments_created"] += 1

    def _schedule_deletion(self, live_from: int) -> None:
        """Delete, at the next sync, the segments before ``live_from``: everything in
        them is compacted or overwritten. Only after the record saying so is durable.

        The hard state is restated in the active segment first, in the same sync:
        the record that restated it when the segment began may be gone (a crash can
        cut a segment at any record boundary), and the older ones are going."""
        doomed = [seq for seq in self._segments
                  if seq < live_from and seq != self._active_seq and seq not in self._to_delete]
        if doomed:
            self._write_state()
            self._to_delete.extend(doomed)

    def _delete_segments(self) -> None:
        for seq in self._to_delete:
            fd = self._readers.pop(seq, None)
            if fd is not None:
                os.close(fd)
            self._segments.pop(seq).unlink(missing_ok=True)
            self._counters["segments_deleted"] += 1
        self._to_delete.clear()
        # Whether an unlink is durable does not matter (recovery replays an old
        # segment that comes back); the next sync's directory fsync settles it.
        self._dir_dirty = True

    def _flush(self) -> None:
        """Hand the buffered records to the OS where they go (the active segment's
        size less what is buffered) and, when they reach past the zeros ahead of
        them, write the next chunk of zeros after them.

        Records first, then the zeros: the file never has a hole. Both are in the
        page cache until the next fdatasync, which makes them durable together
        (their order on disk does not matter: a crash before that sync leaves
        zeros or some of these records after the last synced one, and recovery
        reads either as the end of the log)."""
        buf = self._buf
        if not buf:
            return
        end = self._active_size
        try:
            pwrite_all(self._wfd, buf, end - len(buf))
            if end > self._zeroed_to:
                self._zeroed_to = end  # the file grew: no zeros ahead any more
                if self._preallocate_bytes:
                    self._preallocate()
        except OSError as error:
            self._fail("writing a segment", error)
        self._counters["bytes_written"] += len(buf)
        buf.clear()
        self._unsynced = True

    def _preallocate(self) -> None:
        """Write up to ``preallocate_bytes`` zeros at the end of the active segment."""
        start = self._zeroed_to
        stop = min(
            start + self._preallocate_bytes,
            self._segment_bytes_max + _PREALLOCATE_PAST_MAX_BYTES,
        )
        if stop <= start:
            return  # the segment is about full: its last records grow it
        if not self._zeros:
            self._zeros = bytes(self._preallocate_bytes)
        pwrite_all(self._wfd, memoryview(self._zeros)[: stop - start], start)
        self._zeroed_to = stop
        self._counters["bytes_preallocated"] += stop - start

    def _evict(self) -> None:
        cache = self._cache
        while self._cache_bytes > self._cache_bytes_max and self._cache_first <= self._pos.last:
            entry = cache.pop(self._cache_first)
            self._cache_bytes -= len(entry.data) + ENTRY_SIZE_OVERHEAD_BYTES
            self._cache_first += 1

    def _term_or_none(self, index: int) -> int | None:
        if index == self._compact_index:
            return self._compact_term
        if self._pos.first <= index <= self._pos.last:
            return self._pos.term(index)
        return None

    def _fail(self, what: str, error: OSError) -> NoReturn:
        # After a failed write or fsync the kernel may have dropped the dirty pages
        # and cleared the error: a retried fsync could report success for data that
        # is gone. So the log stops here; reopening recovers from what is on disk.
        self._failed = f"{what} failed: {error}"
        raise StorageFailed(
            f"raft log {self._directory}: {self._failed}. The log refuses further use; "
            "restart the node to recover from what reached the disk."
        ) from error

    def _check_open(self) -> None:
        if self._closed:
            raise RaftLogError(f"raft log {self._directory} is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._failed is not None:
            raise StorageFailed(f"raft log {self._directory}: {self._failed} earlier")
