"""A simulated disk: what a node wrote survives a crash only if it was synced.

How this works: each named file keeps two layers, the durable content (what an
fsync made stable) and the pending change since (a whole-file ``write`` and/or
bytes ``append``-ed to the tail). Reads see both layers, as a process sees its
own page cache. ``fsync(name)`` folds the pending layer into the durable one;
``crash()`` throws every pending layer away, and a file that was never synced
disappears. With torn writes on, a crash instead keeps a random prefix of each
unsynced append tail (a sector-granular write that was half done), which is how
a log's last record gets cut in two; a pending whole-file ``write`` is still
lost whole, as with write-to-temp-then-rename.

The disk belongs to the simulated node, not to a process incarnation: it
outlives crashes and restarts. ``delete`` is immediate and durable (an unlink
followed by a directory fsync), which keeps the model small.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

__all__ = ["DiskCounters", "SimDisk"]


@dataclass(slots=True)
class DiskCounters:
    """What happened to one disk over a run."""

    writes: int = 0
    appends: int = 0
    fsyncs: int = 0
    crashes: int = 0
    bytes_lost: int = 0
    torn_tails: int = 0


class _File:
    __slots__ = ("durable", "exists_durably", "replaced", "tail")

    def __init__(self) -> None:
        self.durable = bytearray()
        self.exists_durably = False
        # Whole-file content written since the last fsync (None: not rewritten).
        self.replaced: bytes | None = None
        # Bytes appended since the last fsync, after ``replaced`` or ``durable``.
        self.tail = bytearray()

    def view(self) -> bytes:
        base = self.durable if self.replaced is None else self.replaced
        return bytes(base) + bytes(self.tail) if self.tail else bytes(base)

    def dirty(self) -> bool:
        return self.replaced is not None or bool(self.tail) or not self.exists_durably


class SimDisk:
    """One node's files, each a byte string with a synced and an unsynced part."""

    __slots__ = ("_files", "counters")

    def __init__(self) -> None:
        self._files: dict[str, _File] = {}
        self.counters = DiskCounters()

    def write(self, name: str, data: bytes) -> None:
        """Replace the content of ``name`` (created if missing); lost at a crash unless synced."""
        file = self._files.get(name)
        if file is None:
            file = self._files[name] = _File()
        file.replaced = bytes(data)
        file.tail.clear()
        self.counters.writes += 1

    def append(self, name: str, data: bytes) -> None:
        """Add ``data`` at the end of ``name`` (created if missing); unsynced until fsync."""
        file = self._files.get(name)
        if file is None:
            file = self._files[name] = _File()
        file.tail += data
        self.counters.appends += 1

    def fsync(self, name: str) -> None:
        """Make everything written to ``name`` so far survive a crash."""
        file = self._files.get(name)
        if file is None:
            raise FileNotFoundError(name)
        self.counters.fsyncs += 1
        if file.replaced is not None:
            file.durable = bytearray(file.replaced)
            file.replaced = None
        if file.tail:
            file.durable += file.tail
            file.tail.clear()
        file.exists_durably = True

    def sync(self) -> None:
        """fsync every file."""
        for name in sorted(self._files):
            self.fsync(name)

    def read(self, name: str) -> bytes | None:
        """The current content of ``name`` (synced or not), or None if there is no such file."""
        file = self._files.get(name)
        return None if file is None else file.view()

    def size(self, name: str) -> int | None:
        """The current length of ``name`` in bytes, or None if there is no such file."""
        file = self._files.get(name)
        if file is None:
            return None
        base = file.durable if file.replaced is None else file.replaced
        return len(base) + len(file.tail)

    def names(self) -> list[str]:
        """Every file name, sorted."""
        return sorted(self._files)

    def delete(self, name: str) -> None:
        """Remove ``name`` at once and durably; a missing file is not an error."""
        self._files.pop(name, None)

    def is_synced(self, name: str) -> bool:
        """True if ``name`` exists and a crash now would not change it."""
        file = self._files.get(name)
        return file is not None and not file.dirty()

    def crash(self, rng: Random | None = None) -> None:
        """Lose everything not synced; with ``rng``, keep a random prefix of each append tail.

        Files are visited in name order so that the draws from ``rng`` are the same
        on every run.
        """
        self.counters.crashes += 1
        for name in sorted(self._files):
            file = self._files[name]
            kept = b""
            if rng is not None and file.replaced is None and file.tail:
                kept = bytes(file.tail[: rng.randint(0, len(file.tail))])
                if kept:
                    self.counters.torn_tails += 1
            lost = len(file.tail) - len(kept)
            if file.replaced is not None:
                lost += len(file.replaced)
            self.counters.bytes_lost += lost
            file.replaced = None
            file.tail.clear()
            if kept:
                # The surviving prefix reached the platter: it is durable now.
                file.durable += kept
                file.exists_durably = True
            if not file.exists_durably:
                del self._files[name]
