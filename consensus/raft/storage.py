"""The storage contract of the Raft core, and an in-memory implementation.

How this works. The core only *reads* storage (``Storage``): its hard state and
configuration at start, entries, terms, index bounds and the latest snapshot.
Everything it wants written comes out in a ``Ready`` and the driver writes it
through the *write side* (``WritableStorage``: ``append``, ``set_hard_state``,
``apply_snapshot``) before sending the Ready's messages. The driver also decides
when to snapshot its state machine (``create_snapshot``) and to drop the log
before it (``compact``).

The log held by a storage is ``(first_index - 1, last_index]`` plus, at
``first_index - 1``, the index and term of the point it was compacted to (the
term of that index is still answered). ``MemoryStorage`` keeps it in a list; the
file implementation (in ``mesh``) keeps the same shape on disk.

A fresh cluster is bootstrapped by giving every initial voter a storage whose
configuration names all of them (``MemoryStorage(conf=ConfState.of(voters))``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from consensus.raft.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from consensus.raft.types import ENTRY_OVERHEAD_BYTES, ConfState, Entry, HardState, Snapshot

__all__ = ["MemoryStorage", "Storage", "WritableStorage", "limit_size"]


class Storage(Protocol):
    """What the Raft core reads. Every method answers from durable state."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state, and the configuration in force at the latest
        snapshot's index (``snapshot().conf``); later changes are entries of the log."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``, cut once their ``size_bytes`` sum would
        exceed ``max_bytes`` (but at least one entry when ``lo < hi``).

        Raises ``CompactedError`` if ``lo < first_index()`` and ``UnavailableError``
        if ``hi > last_index() + 1``.
        """
        ...

    def term(self, index: int) -> int:
        """The term of the entry at ``index``, for ``first_index() - 1 <= index <=
        last_index()``; raises ``CompactedError`` below and ``UnavailableError`` above."""
        ...

    def first_index(self) -> int:
        """The first index still held as an entry (the snapshot's index + 1 at most)."""
        ...

    def last_index(self) -> int:
        """The last index held (``first_index() - 1`` when there are no entries)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (index 0 if none was ever taken)."""
        ...


class WritableStorage(Storage, Protocol):
    """The write side the driver uses to carry out a ``Ready``."""

    def append(self, entries: Sequence[Entry]) -> None:
        """Append contiguous ``entries``; an existing suffix from the first new index
        on is replaced. Entries at or below the compaction point are ignored."""
        ...

    def set_hard_state(self, hard_state: HardState) -> None:
        """Replace the persisted hard state."""
        ...

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (raises ``SnapshotOutOfDateError``
        unless it is newer than the one held)."""
        ...

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """Record the state machine image ``data`` taken at applied ``index``, where
        ``conf`` was in force; returns it. ``index`` must be held in the log."""
        ...

    def compact(self, index: int) -> None:
        """Drop the entries up to ``index`` (at most the snapshot's index, so that the
        snapshot can always stand in for what was dropped)."""
        ...


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_bytes`` (never fewer than one)."""
    # Hot path (every append and every Ready): plain arithmetic, no property calls.
    total = -max_bytes
    overhead = ENTRY_OVERHEAD_BYTES
    for position, entry in enumerate(entries):
        total += len(entry.data) + overhead
        if total > 0 and position > 0:
            return entries[:position]
    return entries


class MemoryStorage:
    """``WritableStorage`` in memory: for tests, the simulator and as a reference.

    ``self._entries[0]`` is a placeholder holding the index and term of the
    compaction point, so that positions map to indices by one subtraction.
    """

    def __init__(self, conf: ConfState | None = None) -> None:
        """Start empty with ``conf`` (the bootstrap configuration) at index 0."""
        self._hard = HardState()
        self._snapshot = Snapshot(conf=conf if conf is not None else ConfState())
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # -- read side ---------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See ``Storage.initial_state``."""
        return self._hard, self._snapshot.conf

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """See ``Storage.entries``."""
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is past the last index {self.last_index()}")
        assert lo <= hi, (lo, hi)
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        """See ``Storage.term``."""
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (first index {offset + 1})")
        if index - offset >= len(self._entries):
            raise UnavailableError(f"index {index} is past the last index {self.last_index()}")
        return self._entries[index - offset].term

    def first_index(self) -> int:
        """See ``Storage.first_index``."""
        return self._entries[0].index + 1

    def last_index(self) -> int:
        """See ``Storage.last_index``."""
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        """See ``Storage.snapshot``."""
        return self._snapshot

    @property
    def hard_state(self) -> HardState:
        """The persisted hard state (a convenience for tests and the simulator)."""
        return self._hard

    # -- write side --------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """See ``WritableStorage.append``."""
        if not entries:
            return
        assert entries[-1].index == entries[0].index + len(entries) - 1, (entries[0], entries[-1])
        first_new = entries[0].index
        offset = self._entries[0].index
        assert first_new <= self.last_index() + 1, (first_new, self.last_index())
        if entries[-1].index <= offset:
            return  # all compacted already
        if first_new <= offset:
            entries = entries[offset + 1 - first_new :]
            first_new = offset + 1
        del self._entries[first_new - offset :]
        self._entries.extend(entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        """See ``WritableStorage.set_hard_state``."""
        self._hard = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """See ``WritableStorage.apply_snapshot``."""
        if snapshot.index <= self._snapshot.index:
            raise SnapshotOutOfDateError(
                f"snapshot at index {snapshot.index} is not newer than the one held "
                f"at {self._snapshot.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(term=snapshot.term, index=snapshot.index)]

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """See ``WritableStorage.create_snapshot``."""
        if index <= self._snapshot.index:
            raise SnapshotOutOfDateError(
                f"snapshot index {index} is not newer than the one held at {self._snapshot.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} is past the last index")
        self._snapshot = Snapshot(index=index, term=self.term(index), conf=conf, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """See ``WritableStorage.compact``."""
        offset = self._entries[0].index
        if index <= offset:
            return  # already compacted that far
        if index > self._snapshot.index:
            raise ValueError(
                f"compact index ({index}) must not exceed the snapshot index "
                f"({self._snapshot.index})"
            )
        self._entries = self._entries[index - offset :]
        self._entries[0] = Entry(term=self._entries[0].term, index=index)
