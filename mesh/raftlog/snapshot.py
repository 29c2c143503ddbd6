"""The snapshot file: one state machine image with its place in the log.

How this works. A snapshot is written whole to ``snapshot.tmp``, fsynced,
renamed over ``snapshot`` and the directory fsynced: a crash leaves either the
old snapshot or the new one, never half of one (a leftover ``snapshot.tmp`` is
removed at open). The file is::

    [magic "AMRSNAP1"][crc u32][index u64][term u64][conf_len u32][conf][data]

with ``crc`` (zlib.crc32) over everything after it. Because of the rename, a
snapshot that fails its check is damage, not a torn write: ``LogCorruption``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from mesh.raftlog.errors import LogCorruption
from mesh.raftlog.segment import CORRUPTION_ADVICE, fsync_directory, write_all
from mesh.raftlog.values import SnapshotMeta

__all__ = ["SNAPSHOT_FILE", "SNAPSHOT_TEMP_FILE", "read_snapshot", "write_snapshot"]

SNAPSHOT_FILE = "snapshot"
SNAPSHOT_TEMP_FILE = "snapshot.tmp"
_MAGIC = b"AMRSNAP1"
_HEAD = struct.Struct("<8sIQQI")  # magic, crc, index, term, conf_len
_CHECKED_FROM = 12  # the crc covers the bytes from here (after magic and crc)


def write_snapshot(
    directory: Path, directory_fd: int, meta: SnapshotMeta, data: bytes, *, fsync: bool
) -> int:
    """Replace the snapshot file durably (see module doc); return bytes written."""
    fields = struct.pack("<QQI", meta.index, meta.term, len(meta.conf))
    crc = zlib.crc32(data, zlib.crc32(meta.conf, zlib.crc32(fields)))
    header = _MAGIC + struct.pack("<I", crc) + fields
    temp = directory / SNAPSHOT_TEMP_FILE
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, header)
        write_all(fd, meta.conf)
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, directory / SNAPSHOT_FILE)
    if fsync:
        fsync_directory(directory_fd)
    return len(header) + len(meta.conf) + len(data)


def read_snapshot(directory: Path) -> tuple[SnapshotMeta, bytes] | None:
    """The snapshot held in ``directory``, checked; ``None`` if there is none."""
    path = directory / SNAPSHOT_FILE
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(blob) < _HEAD.size:
        raise _corrupt(path, f"file is {len(blob)} bytes, shorter than its header")
    magic, crc, index, term, conf_len = _HEAD.unpack_from(blob, 0)
    if magic != _MAGIC:
        raise _corrupt(path, f"bad magic {magic!r} (expected {_MAGIC!r})")
    actual = zlib.crc32(memoryview(blob)[_CHECKED_FROM:])
    if actual != crc:
        raise _corrupt(path, f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})")
    if _HEAD.size + conf_len > len(blob):
        raise _corrupt(path, f"configuration of {conf_len} bytes runs past the end")
    conf = blob[_HEAD.size : _HEAD.size + conf_len]
    return SnapshotMeta(index=index, term=term, conf=conf), blob[_HEAD.size + conf_len :]


def _corrupt(path: Path, what: str) -> LogCorruption:
    return LogCorruption(
        f"raft snapshot {path} is corrupt: {what}. It was written by rename, so this is "
        f"damage, not a crash. {CORRUPTION_ADVICE}",
        path=path,
    )
