"""``FileStorage``: the Raft core's ``WritableStorage`` on the durable log.

How this works. ``consensus.raft`` defines what the core reads and the driver
writes (``consensus.raft.storage``); ``mesh.raftlog.DurableLog`` keeps a log, a
hard state and a snapshot on disk with its own plain value types and errors.
``FileStorage`` joins the two and answers exactly as ``MemoryStorage`` does:

- values are converted field by field, by keyword (``Entry`` and ``LogEntry``
  order their fields differently), and the log's ``Compacted``, ``Unavailable``
  and ``SnapshotOutOfDate`` become the core's ``CompactedError``,
  ``UnavailableError`` and ``SnapshotOutOfDateError``;
- ``append`` drops entries at or below the compaction point first (the log
  refuses them with ``ValueError``; the core's contract ignores them);
- "no snapshot" is the core's index-0 snapshot carrying the bootstrap
  configuration; ``create_snapshot`` keeps the log (``compact=False``: the driver
  calls ``compact`` when it wants), ``apply_snapshot`` replaces it
  (``replace_log=True``);
- a ``ConfState`` is stored in ``SnapshotMeta.conf`` as canonical msgpack
  (``encode_conf_state``): ``[1, [voter, ...], [learner, ...]]``, ids as bin, sorted.

Durability. ``append``, ``set_hard_state`` and ``compact`` are buffered and become
durable together at ``sync`` (one fdatasync: the runtime calls it once per Ready,
before sending that Ready's messages). ``create_snapshot`` and ``apply_snapshot``
are durable when they return, and make everything written before them durable.

The bootstrap configuration. ``MemoryStorage(conf)`` starts at index 0 with the
initial voter set; the log cannot hold a snapshot at index 0, so ``FileStorage``
writes that configuration once, when the directory holds no Raft state yet, to
its own small file beside the segments (``bootstrap``: magic ``b"AMRBOOT1"``,
crc32 of the rest, the encoded ``ConfState``; temp file, fsync, rename,
directory fsync). A reopen reads it back and ignores the ``conf`` it is given,
as a restarted node must keep the configuration it started with. Once a snapshot
exists its configuration is the one in force at its index, and the bootstrap
file no longer matters.

Not thread-safe, like ``DurableLog``: one caller at a time.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from consensus.raft.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from consensus.raft.types import ConfState, Entry, EntryKind, HardState, Snapshot
from mesh.codec import pack, unpack
from mesh.errors import CodecError
from mesh.raftlog import (
    CACHE_BYTES_MAX_DEFAULT,
    PREALLOCATE_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX_DEFAULT,
    WRITE_BUFFER_BYTES_DEFAULT,
    Compacted,
    DurableLog,
    LogCorruption,
    LogEntry,
    SnapshotMeta,
    SnapshotOutOfDate,
    StorageFailed,
    Unavailable,
)
from mesh.raftlog import HardState as LogHardState
from mesh.raftlog.segment import CORRUPTION_ADVICE, fsync_directory, write_all

__all__ = [
    "BOOTSTRAP_FILE",
    "CONF_FORMAT_VERSION",
    "FileStorage",
    "decode_conf_state",
    "encode_conf_state",
]

BOOTSTRAP_FILE = "bootstrap"
"""The file (in the log's directory) holding the configuration at index 0."""
CONF_FORMAT_VERSION = 1
"""First element of an encoded ``ConfState``."""

_BOOTSTRAP_TEMP_FILE = "bootstrap.tmp"
_BOOTSTRAP_MAGIC = b"AMRBOOT1"
_BOOTSTRAP_HEAD = struct.Struct("<8sI")  # magic, crc32 of the encoded configuration
_CONF_BYTES_MAX = 1 << 20  # far above any real voter set; bounds the decoder
_KINDS: dict[int, EntryKind] = {int(kind): kind for kind in EntryKind}


def encode_conf_state(conf: ConfState) -> bytes:
    """``conf`` as canonical msgpack: ``[1, [voters...], [learners...]]`` with ids as bin.

    Deterministic: ``ConfState`` keeps its ids sorted and unique, so equal
    configurations always encode to the same bytes.
    """
    return pack([CONF_FORMAT_VERSION, list(conf.voters), list(conf.learners)])


def decode_conf_state(data: bytes) -> ConfState:
    """The ``ConfState`` that ``encode_conf_state`` turned into ``data``.

    Raises ``CodecError`` for anything ``encode_conf_state`` cannot have produced
    (invalid msgpack, another shape or version, ids unsorted or repeated).
    """
    value = unpack(data, max_bytes=_CONF_BYTES_MAX)
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(
            isinstance(group, list) and all(isinstance(node, bytes) for node in group)
            for group in value[1:]
        )
    ):
        raise CodecError(
            "configuration is not [version, [voter ids], [learner ids]] with ids as bytes"
        )
    conf = ConfState.of(value[1], value[2])
    if encode_conf_state(conf) != data:
        raise CodecError(
            f"configuration is not in canonical form (format version {value[0]!r}, "
            f"expected {CONF_FORMAT_VERSION}; ids sorted, unique, voters and learners disjoint)"
        )
    return conf


class FileStorage:
    """``consensus.raft.storage.WritableStorage`` on a ``DurableLog`` (see module doc).

    Open with ``FileStorage.open(directory, conf=...)``; it owns the log and
    ``close`` closes it. Reads answer every write at once, synced or not;
    ``sync`` makes the buffered writes durable.
    """

    __slots__ = ("_conf", "_hard", "_log", "_snapshot")

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        conf: ConfState | None = None,
        fsync: bool = True,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        cache_bytes_max: int = CACHE_BYTES_MAX_DEFAULT,
        write_buffer_bytes: int = WRITE_BUFFER_BYTES_DEFAULT,
        preallocate_bytes: int = PREALLOCATE_BYTES_DEFAULT,
    ) -> FileStorage:
        """Open (creating if missing) the Raft storage in ``directory``.

        ``conf`` is the bootstrap configuration, used only if the directory holds
        no Raft state yet (see the module doc). The other options go to
        ``DurableLog.open``; ``fsync=False`` is for tests and throwaway runs only.
        Raises ``LogCorruption`` if the files are damaged in a way a crash cannot
        explain (a torn tail is cut off and reported in ``recovery``), and
        ``LogLocked`` if the directory is open elsewhere.
        """
        log = DurableLog.open(
            directory,
            segment_bytes_max=segment_bytes_max,
            fsync=fsync,
            cache_bytes_max=cache_bytes_max,
            write_buffer_bytes=write_buffer_bytes,
            preallocate_bytes=preallocate_bytes,
        )
        try:
            return cls(log, conf=conf, fsync=fsync)
        except BaseException:
            log.close()
            raise

    def __init__(
        self, log: DurableLog, *, conf: ConfState | None = None, fsync: bool = True
    ) -> None:
        """Adapt the open ``log`` (it is owned from now on); ``conf`` as in ``open``.

        ``fsync`` applies to writing the bootstrap file and should match the log's.
        """
        self._log = log
        hard = log.hard_state()
        self._hard = HardState(term=hard.term, vote=hard.vote, commit=hard.commit)
        self._snapshot: Snapshot | None = None  # loaded (with its data) on first use
        meta = log.snapshot_meta()
        if meta is not None:
            self._conf = _conf_from_disk(meta.conf, log.directory, "snapshot")
            return
        bootstrap = _read_bootstrap(log.directory)
        if bootstrap is not None:
            self._conf = bootstrap
            return
        pristine = (
            log.last_index() == 0
            and log.first_index() == 1
            and hard == LogHardState(term=0, vote=None, commit=0)
        )
        if not pristine:
            raise LogCorruption(
                f"raft storage {log.directory} holds a log (last index {log.last_index()}, "
                f"term {hard.term}) but neither a snapshot nor its {BOOTSTRAP_FILE} file, so "
                f"the configuration at index 0 is unknown. {CORRUPTION_ADVICE}",
                path=log.directory / BOOTSTRAP_FILE,
            )
        self._conf = conf if conf is not None else ConfState()
        _write_bootstrap(log.directory, self._conf, fsync=fsync)

    # -- read side ---------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See ``Storage.initial_state``."""
        return self._hard, self._conf

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """See ``Storage.entries``."""
        try:
            found = self._log.entries(lo, hi, max_bytes)
        except Compacted as error:
            raise CompactedError(str(error)) from None
        except Unavailable as error:
            raise UnavailableError(str(error)) from None
        kinds = _KINDS
        try:
            # Positional: keywords cost a named tuple half as much again, per entry
            # read (for every follower's append, and again to apply it).
            return [Entry(entry.term, entry.index, kinds[entry.kind], entry.data)
                    for entry in found]
        except KeyError:
            bad = next(entry for entry in found if entry.kind not in kinds)
            raise LogCorruption(
                f"raft storage {self._log.directory}: entry {bad.index} has kind {bad.kind}, "
                f"which is no Raft entry kind ({sorted(kinds)}); this log was not written "
                f"by FileStorage. {CORRUPTION_ADVICE}",
                path=self._log.directory,
            ) from None

    def term(self, index: int) -> int:
        """See ``Storage.term``."""
        try:
            return self._log.term(index)
        except Compacted as error:
            raise CompactedError(str(error)) from None
        except Unavailable as error:
            raise UnavailableError(str(error)) from None

    def first_index(self) -> int:
        """See ``Storage.first_index``."""
        return self._log.first_index()

    def last_index(self) -> int:
        """See ``Storage.last_index``."""
        return self._log.last_index()

    def snapshot(self) -> Snapshot:
        """See ``Storage.snapshot``. The image is read from disk once, then kept."""
        if self._snapshot is None:
            found = self._log.snapshot()
            if found is None:
                self._snapshot = Snapshot(conf=self._conf)
            else:
                meta, data = found
                self._snapshot = Snapshot(
                    index=meta.index, term=meta.term, conf=self._conf, data=data
                )
        return self._snapshot

    @property
    def hard_state(self) -> HardState:
        """The latest hard state set (as ``MemoryStorage.hard_state``)."""
        return self._hard

    @property
    def log(self) -> DurableLog:
        """The underlying log (for ``stats`` and ``recovery``; do not write to it)."""
        return self._log

    # -- write side --------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """See ``WritableStorage.append`` (buffered: durable at the next ``sync``)."""
        if not entries:
            return
        offset = self._log.first_index() - 1
        if entries[-1].index <= offset:
            return  # all compacted already
        if entries[0].index <= offset:
            entries = entries[offset + 1 - entries[0].index :]
        # Positional, and the kind as it is: an ``EntryKind`` is an int already.
        self._log.append(
            [LogEntry(entry.index, entry.term, entry.kind, entry.data) for entry in entries]
        )

    def set_hard_state(self, hard_state: HardState) -> None:
        """See ``WritableStorage.set_hard_state`` (buffered: durable at the next ``sync``).

        Raises ``ValueError`` if the term goes back (Raft never does that).
        """
        self._log.set_hard_state(
            LogHardState(term=hard_state.term, vote=hard_state.vote, commit=hard_state.commit)
        )
        self._hard = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """See ``WritableStorage.apply_snapshot``; durable when it returns."""
        held = self._held_snapshot_index()
        if snapshot.index <= held:
            raise SnapshotOutOfDateError(
                f"snapshot at index {snapshot.index} is not newer than the one held at {held}"
            )
        meta = SnapshotMeta(
            index=snapshot.index, term=snapshot.term, conf=encode_conf_state(snapshot.conf)
        )
        self._save(meta, snapshot.data, replace_log=True)
        self._snapshot, self._conf = snapshot, snapshot.conf

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """See ``WritableStorage.create_snapshot``; durable when it returns. The log is
        kept: call ``compact`` to drop the entries the snapshot covers."""
        held = self._held_snapshot_index()
        if index <= held:
            raise SnapshotOutOfDateError(
                f"snapshot index {index} is not newer than the one held at {held}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} is past the last index")
        snapshot = Snapshot(index=index, term=self.term(index), conf=conf, data=data)
        meta = SnapshotMeta(index=index, term=snapshot.term, conf=encode_conf_state(conf))
        self._save(meta, data, replace_log=False)
        self._snapshot, self._conf = snapshot, conf
        return snapshot

    def compact(self, index: int) -> None:
        """See ``WritableStorage.compact`` (buffered: durable at the next ``sync``)."""
        if index < self._log.first_index():
            return  # already compacted that far
        held = self._held_snapshot_index()
        if index > held:
            raise ValueError(f"compact index ({index}) must not exceed the snapshot index ({held})")
        self._log.compact(index)

    def sync(self) -> None:
        """Make every write so far durable with one fdatasync (the group commit: call
        it once per Ready, after its writes and before sending its messages)."""
        self._log.sync()

    def write_out(self) -> None:
        """``sync`` step 1, on the owner's thread: hand buffered writes to the OS."""
        self._log.write_out()

    def make_durable(self) -> None:
        """``sync`` step 2, the fdatasync alone: may run on a worker thread while the
        owner only reads (the runtime keeps its event loop going meanwhile)."""
        self._log.make_durable()

    def finish_sync(self) -> None:
        """``sync`` step 3, on the owner's thread once step 2 has returned."""
        self._log.finish_sync()

    def close(self) -> None:
        """Sync what is pending and close the log (safe to call twice)."""
        self._log.close()

    def __enter__(self) -> FileStorage:
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
            f"FileStorage({str(self._log.directory)!r}, first_index={self.first_index()}, "
            f"last_index={self.last_index()}, snapshot_index={self._held_snapshot_index()})"
        )

    # -- helpers -----------------------------------------------------------------

    def _held_snapshot_index(self) -> int:
        meta = self._log.snapshot_meta()
        return 0 if meta is None else meta.index

    def _save(self, meta: SnapshotMeta, data: bytes, *, replace_log: bool) -> None:
        try:
            self._log.save_snapshot(meta, data, compact=False, replace_log=replace_log)
        except SnapshotOutOfDate as error:  # below the compaction point: not newer either
            raise SnapshotOutOfDateError(str(error)) from None


def _conf_from_disk(data: bytes, directory: Path, where: str) -> ConfState:
    try:
        return decode_conf_state(data)
    except CodecError as error:
        raise LogCorruption(
            f"raft storage {directory}: the configuration in its {where} is not one "
            f"FileStorage wrote ({error}). {CORRUPTION_ADVICE}",
            path=directory,
        ) from None


def _read_bootstrap(directory: Path) -> ConfState | None:
    """The configuration in the bootstrap file, checked; ``None`` if there is none."""
    (directory / _BOOTSTRAP_TEMP_FILE).unlink(missing_ok=True)  # a write cut by a crash
    path = directory / BOOTSTRAP_FILE
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    problem: str | None = None
    if len(blob) < _BOOTSTRAP_HEAD.size:
        problem = f"file is {len(blob)} bytes, shorter than its header"
    else:
        magic, crc = _BOOTSTRAP_HEAD.unpack_from(blob)
        actual = zlib.crc32(blob[_BOOTSTRAP_HEAD.size :])
        if magic != _BOOTSTRAP_MAGIC:
            problem = f"bad magic {magic!r} (expected {_BOOTSTRAP_MAGIC!r})"
        elif crc != actual:
            problem = f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
    if problem is not None:
        raise LogCorruption(
            f"raft bootstrap configuration {path} is corrupt: {problem}. It was written by "
            f"rename, so this is damage, not a crash. {CORRUPTION_ADVICE}",
            path=path,
        )
    return _conf_from_disk(blob[_BOOTSTRAP_HEAD.size :], directory, f"{BOOTSTRAP_FILE} file")


def _write_bootstrap(directory: Path, conf: ConfState, *, fsync: bool) -> None:
    """Write the bootstrap file durably: temp file, fsync, rename, directory fsync."""
    body = encode_conf_state(conf)
    temp = directory / _BOOTSTRAP_TEMP_FILE
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, _BOOTSTRAP_HEAD.pack(_BOOTSTRAP_MAGIC, zlib.crc32(body)) + body)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, directory / BOOTSTRAP_FILE)
        if fsync:
            directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fsync_directory(directory_fd)
            finally:
                os.close(directory_fd)
    except OSError as error:
        raise StorageFailed(
            f"raft storage {directory}: writing its {BOOTSTRAP_FILE} file failed: {error}"
        ) from error
