"""A Raft storage on the simulated disk: only what was synced survives a crash.

How this works. ``SimRaftStorage`` implements the Raft core's ``WritableStorage``
over a node's ``SimDisk``, so the simulator tests the rule "persist before you
send" against a disk that really loses unsynced writes. Reads are answered from
an in-memory ``MemoryStorage`` (the reference implementation) that mirrors every
write; the disk is only read back when a new incarnation opens the storage.

Two files:

- ``raft/log``: an append-only stream of checksummed records, each
  ``[length u32][crc32 u32][body]`` (little-endian; the crc covers the body):
  ENTRY (index, term, kind, data), STATE (term, commit, vote: the hard state
  from here on) and COMPACT (entries up to an index are dropped; that index's
  term; past the last entry it empties the log). A Raft overwrite is an
  ENTRY whose index is at or below the last one: the later record wins.
  ``append``/``set_hard_state`` only write; ``sync`` is the one fsync that
  makes a whole Ready durable (group commit).
- ``raft/snapshot``: the latest snapshot, written whole and fsynced at once
  (a whole-file write is lost whole at a crash, like write-to-temp-and-rename).

Recovery (``open``) replays the log: a record cut short or failing its
checksum can only be a torn tail (``SimDisk`` tears nothing but the end of an
append, at a crash), so the log is cut there, the cut made durable, and the
torn bytes reported. The snapshot file wins over the log where they disagree:
a snapshot reaches the disk before the COMPACT record or the rewrite that
follows it, so a crash between the two leaves a log older than the snapshot;
the log is kept only if it continues the snapshot (holds the snapshot's index
with its term), else the snapshot replaces it. Anything else inconsistent (an
index gap, a log compacted past the snapshot) is refused with ``StorageError``.

Installing a snapshot rewrites the log file whole (a COMPACT record for the
snapshot, the hard state), fsynced at once; so does a compaction once the file
has grown four times (and at least ``REWRITE_BYTES_MIN``) past its size at the
last rewrite, which keeps rewrites rare and the file proportional to the live
log.

``fsync=False`` builds a deliberately broken storage that never syncs: what it
writes stays in the page cache and a crash loses it. Tests use it to prove the
safety checkers catch a storage that breaks "persist before you send".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from consensus.raft import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Snapshot,
    StorageError,
)
from sim.disk import SimDisk

__all__ = [
    "LOG_FILE",
    "REWRITE_BYTES_MIN",
    "SNAPSHOT_FILE",
    "RecoveryReport",
    "SimRaftStorage",
    "StorageCounters",
]

LOG_FILE = "raft/log"
SNAPSHOT_FILE = "raft/snapshot"

REWRITE_BYTES_MIN = 64 * 1024
"""A compaction rewrites the log file only once it is at least this long (and four
times its length after the last rewrite), so that rewrites stay rare."""

_FRAME = struct.Struct("<II")  # body length, crc32 of the body
_ENTRY = struct.Struct("<BQQB")  # type, index, term, kind; then the data
_STATE = struct.Struct("<BQQ")  # type, term, commit; then the vote (empty: none)
_MARK = struct.Struct("<BQQ")  # type, index, term (COMPACT)
_ENTRY_T, _STATE_T, _COMPACT_T = 1, 2, 3
_SNAPSHOT_MAGIC = b"AMSIMSN1"
_SNAPSHOT_HEAD = struct.Struct("<8sI")  # magic, crc32 of the body
_KINDS = tuple(EntryKind)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What opening the storage found on the disk."""

    records: int = 0
    torn_bytes: int = 0
    """Bytes cut off the end of the log: a record the crash tore."""
    entries: int = 0
    snapshot_index: int = 0
    dropped_for_snapshot: int = 0
    """Log entries discarded because a newer snapshot replaced them."""


@dataclass(slots=True)
class StorageCounters:
    """What one storage incarnation wrote."""

    records: int = 0
    syncs: int = 0
    rewrites: int = 0
    snapshots_written: int = 0


def _frame(body: bytes) -> bytes:
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _entry_record(entry: Entry) -> bytes:
    return _frame(_ENTRY.pack(_ENTRY_T, entry.index, entry.term, int(entry.kind)) + entry.data)


def _state_record(hard: HardState) -> bytes:
    return _frame(_STATE.pack(_STATE_T, hard.term, hard.commit) + (hard.vote or b""))


def _mark_record(kind: int, index: int, term: int) -> bytes:
    return _frame(_MARK.pack(kind, index, term))


def _encode_snapshot(snapshot: Snapshot) -> bytes:
    conf = snapshot.conf
    body: bytes = msgpack.packb(
        [snapshot.index, snapshot.term, list(conf.voters), list(conf.learners), snapshot.data],
        use_bin_type=True,
    )
    return _SNAPSHOT_HEAD.pack(_SNAPSHOT_MAGIC, zlib.crc32(body)) + body


def _decode_snapshot(data: bytes) -> Snapshot:
    if len(data) < _SNAPSHOT_HEAD.size:
        raise StorageError(f"{SNAPSHOT_FILE} is {len(data)} bytes, shorter than its header")
    magic, crc = _SNAPSHOT_HEAD.unpack_from(data)
    body = data[_SNAPSHOT_HEAD.size :]
    if magic != _SNAPSHOT_MAGIC or zlib.crc32(body) != crc:
        raise StorageError(f"{SNAPSHOT_FILE} is corrupt (bad magic or checksum)")
    index, term, voters, learners, payload = msgpack.unpackb(body, raw=False)
    conf = ConfState.of((bytes(v) for v in voters), (bytes(x) for x in learners))
    return Snapshot(index=index, term=term, conf=conf, data=bytes(payload))


class _Replay:
    """The log as its records describe it: compaction point, entries, hard state."""

    def __init__(self) -> None:
        self.offset_index = 0
        self.offset_term = 0
        self.entries: list[Entry] = []
        self.hard = HardState()

    @property
    def last_index(self) -> int:
        return self.offset_index + len(self.entries)

    def term(self, index: int) -> int | None:
        if index == self.offset_index:
            return self.offset_term
        if self.offset_index < index <= self.last_index:
            return self.entries[index - self.offset_index - 1].term
        return None

    def record(self, body: bytes, position: int) -> None:
        kind = body[0] if body else 0
        if kind == _ENTRY_T and len(body) >= _ENTRY.size:
            _, index, term, entry_kind = _ENTRY.unpack_from(body)
            if entry_kind >= len(_KINDS):
                raise StorageError(f"{LOG_FILE} at byte {position}: unknown entry kind")
            self._entry(Entry(term, index, _KINDS[entry_kind], body[_ENTRY.size :]), position)
        elif kind == _STATE_T and len(body) >= _STATE.size:
            _, term, commit = _STATE.unpack_from(body)
            vote = body[_STATE.size :]
            self.hard = HardState(term=term, vote=vote or None, commit=commit)
        elif kind == _COMPACT_T and len(body) == _MARK.size:
            _, index, term = _MARK.unpack_from(body)
            if index > self.offset_index:
                if index >= self.last_index:
                    self.entries = []
                else:
                    self.entries = self.entries[index - self.offset_index :]
                self.offset_index, self.offset_term = index, term
        else:
            raise StorageError(f"{LOG_FILE} at byte {position}: malformed record (type {kind})")

    def _entry(self, entry: Entry, position: int) -> None:
        if entry.index <= self.offset_index:
            return  # covered by the compaction point, as MemoryStorage ignores it
        if entry.index > self.last_index + 1:
            raise StorageError(
                f"{LOG_FILE} at byte {position}: entry {entry.index} leaves a gap after "
                f"{self.last_index}"
            )
        del self.entries[entry.index - self.offset_index - 1 :]
        self.entries.append(entry)

    def adopt(self, snapshot: Snapshot) -> int:
        """Reconcile the log with ``snapshot``; returns how many entries were dropped.

        A log that continues the snapshot (holds its index with its term) is kept
        whole, entries before the snapshot included; any other is replaced by it.
        """
        if snapshot.index < self.offset_index:
            raise StorageError(
                f"{LOG_FILE} is compacted to {self.offset_index}, past the snapshot at "
                f"{snapshot.index}: entries in between are lost"
            )
        if self.term(snapshot.index) == snapshot.term:
            return 0
        if snapshot.index == self.offset_index:
            raise StorageError(
                f"{LOG_FILE} is compacted at {self.offset_index} with term "
                f"{self.offset_term}, the snapshot there has term {snapshot.term}"
            )
        dropped = len(self.entries)
        self.entries = []
        self.offset_index, self.offset_term = snapshot.index, snapshot.term
        return dropped


class SimRaftStorage:
    """``WritableStorage`` over a ``SimDisk``, durable at ``sync`` (see module doc)."""

    def __init__(self, disk: SimDisk, memory: MemoryStorage, *, fsync: bool,
                 report: RecoveryReport, log_bytes: int) -> None:
        """Use ``open``; this wraps state that ``open`` recovered."""
        self._disk = disk
        self._memory = memory
        self._fsync = fsync
        self._log_bytes = log_bytes
        self._rewritten_bytes = log_bytes
        self.report = report
        """What ``open`` found on the disk."""
        self.counters = StorageCounters()

    @classmethod
    def open(cls, disk: SimDisk, conf: ConfState, *, fsync: bool = True) -> SimRaftStorage:
        """Recover the storage from ``disk`` (empty, with bootstrap ``conf``, if new).

        Cuts a torn tail off the log (durably); raises ``StorageError`` for a log
        that cannot be the result of crashes (see the module doc).
        """
        data = disk.read(LOG_FILE) or b""
        replay = _Replay()
        position = records = 0
        while position + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, position)
            start = position + _FRAME.size
            body = data[start : start + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break  # torn: the crash cut this record
            replay.record(body, position)
            records += 1
            position = start + length
        torn = len(data) - position
        if torn:
            disk.write(LOG_FILE, data[:position])
            if fsync:
                disk.fsync(LOG_FILE)
        snapshot_bytes = disk.read(SNAPSHOT_FILE)
        snapshot = _decode_snapshot(snapshot_bytes) if snapshot_bytes else Snapshot(conf=conf)
        dropped = replay.adopt(snapshot) if snapshot.index > 0 else 0
        if snapshot.index == 0 and replay.offset_index > 0:
            raise StorageError(f"{LOG_FILE} is compacted to {replay.offset_index} but there "
                               f"is no snapshot")
        memory = MemoryStorage(conf=conf)
        if replay.offset_index == snapshot.index:
            if snapshot.index > 0:
                memory.apply_snapshot(snapshot)
            memory.append(replay.entries)
        else:
            # The log starts before the snapshot (entries kept behind it): set the
            # compaction point, add the entries, then record the snapshot within them.
            if replay.offset_index > 0:
                memory.apply_snapshot(Snapshot(index=replay.offset_index,
                                               term=replay.offset_term, conf=snapshot.conf))
            memory.append(replay.entries)
            memory.create_snapshot(snapshot.index, snapshot.conf, snapshot.data)
        memory.set_hard_state(replay.hard)
        report = RecoveryReport(records=records, torn_bytes=torn, entries=len(replay.entries),
                                snapshot_index=snapshot.index, dropped_for_snapshot=dropped)
        return cls(disk, memory, fsync=fsync, report=report, log_bytes=position)

    # -- read side (answered from memory, which mirrors every write) ---------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See ``Storage.initial_state``."""
        return self._memory.initial_state()

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """See ``Storage.entries``."""
        return self._memory.entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        """See ``Storage.term``."""
        return self._memory.term(index)

    def first_index(self) -> int:
        """See ``Storage.first_index``."""
        return self._memory.first_index()

    def last_index(self) -> int:
        """See ``Storage.last_index``."""
        return self._memory.last_index()

    def snapshot(self) -> Snapshot:
        """See ``Storage.snapshot``."""
        return self._memory.snapshot()

    @property
    def hard_state(self) -> HardState:
        """The hard state last set (durable once synced)."""
        return self._memory.hard_state

    # -- write side ------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """See ``WritableStorage.append``; durable at the next ``sync``."""
        if not entries:
            return
        self._memory.append(entries)
        offset = self._memory.first_index() - 1
        self._write(b"".join(_entry_record(e) for e in entries if e.index > offset))

    def set_hard_state(self, hard_state: HardState) -> None:
        """See ``WritableStorage.set_hard_state``; durable at the next ``sync``."""
        self._memory.set_hard_state(hard_state)
        self._write(_state_record(hard_state))

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """See ``WritableStorage.apply_snapshot``: the snapshot file is written and
        synced first, then the log is rewritten to start at it."""
        self._memory.apply_snapshot(snapshot)
        self._write_snapshot(snapshot)
        self._rewrite()

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """See ``WritableStorage.create_snapshot``; the snapshot file is synced at once."""
        snapshot = self._memory.create_snapshot(index, conf, data)
        self._write_snapshot(snapshot)
        return snapshot

    def compact(self, index: int) -> None:
        """See ``WritableStorage.compact``; rewrites the log file once it is mostly dead."""
        if index < self._memory.first_index():
            return
        self._memory.compact(index)
        self._write(_mark_record(_COMPACT_T, index, self._memory.term(index)))
        if self._log_bytes >= max(REWRITE_BYTES_MIN, 4 * self._rewritten_bytes):
            self._rewrite()

    def sync(self) -> None:
        """Make everything written so far durable: one fsync for a whole Ready."""
        if self._fsync and self._disk.size(LOG_FILE) is not None:
            self._disk.fsync(LOG_FILE)
            self.counters.syncs += 1

    # -- internals -------------------------------------------------------------------

    def _write(self, records: bytes) -> None:
        if records:
            self._disk.append(LOG_FILE, records)
            self._log_bytes += len(records)
            self.counters.records += 1

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        self._disk.write(SNAPSHOT_FILE, _encode_snapshot(snapshot))
        if self._fsync:
            # Durable before the COMPACT record or rewrite that relies on it.
            self._disk.fsync(SNAPSHOT_FILE)
        self.counters.snapshots_written += 1

    def _rewrite(self) -> None:
        """Replace the log file by what it describes now (called with nothing unsynced
        that is not also in memory, so nothing is lost by it)."""
        memory = self._memory
        first, last = memory.first_index(), memory.last_index()
        live = memory.entries(first, last + 1, 1 << 62) if last >= first else []
        content = b"".join([
            _mark_record(_COMPACT_T, first - 1, memory.term(first - 1)),
            _state_record(memory.hard_state),
            *(_entry_record(entry) for entry in live),
        ])
        self._disk.write(LOG_FILE, content)
        if self._fsync:
            self._disk.fsync(LOG_FILE)
        self._log_bytes = self._rewritten_bytes = len(content)
        self.counters.rewrites += 1
