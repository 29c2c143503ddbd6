"""Rebuild the log's state from its record stream, checking it as it goes.

How this works. The segments hold an append-only stream of records; the log is
what you get by applying them in order:

- ENTRY ``j``: drop any entries at ``j`` and after, then hold ``j`` (a Raft
  overwrite is simply a record with a lower index than the last one);
- COMPACT ``c``: drop the entries at ``c`` and before; ``c``'s term is kept;
- RESET ``c``: a snapshot at ``c`` replaced the whole log;
- STATE: the hard state from here on (the last one wins);
- HEAD: the first record of each segment, repeating the log's bounds and
  compaction point as they were when the segment began.

Compaction deletes old segments, so the stream replayed may start in the
middle of the log's history: entries below the first segment's
``last_index`` are then unknown until a later compaction covers them or a later
overwrite replaces them. ``Replay`` tracks that: the log is *anchored* when the
entries it holds reach down to the compaction point. If it is not anchored at
the end, entries that Raft may need are missing, and ``finish`` raises.

Anything a correct writer cannot produce is ``LogCorruption``: an index gap, a
term lower than the entry before it, an entry at or below the compaction point,
a compaction that goes back, a segment head that disagrees with the records
before it.
"""

from __future__ import annotations

from pathlib import Path

from mesh.raftlog.errors import LogCorruption
from mesh.raftlog.positions import Positions
from mesh.raftlog.segment import CORRUPTION_ADVICE
from mesh.raftlog.values import HardState

__all__ = ["Replay"]


class Replay:
    """The log's state while its record stream is replayed.

    The caller sets ``at(path, offset)`` before each record so that an error
    names the file and byte offset of the record at fault.
    """

    __slots__ = (
        "_offset",
        "_path",
        "compact_index",
        "compact_term",
        "continuous",
        "hard_state",
        "positions",
    )

    def __init__(self) -> None:
        self.positions = Positions(1)
        self.compact_index = 0
        self.compact_term = 0
        self.hard_state = HardState(term=0, vote=None, commit=0)
        # False at the start and after a missing segment: the next HEAD then
        # tells us where the log stood instead of being checked against it.
        self.continuous = False
        self._path = Path()
        self._offset = 0

    def at(self, path: Path, offset: int) -> None:
        """The next record is at ``offset`` in ``path``."""
        self._path = path
        self._offset = offset

    @property
    def last_index(self) -> int:
        """Last index held."""
        return self.positions.last

    @property
    def anchored(self) -> bool:
        """Whether every entry from the compaction point to the last is known."""
        return self.positions.first == self.compact_index + 1

    def gap(self) -> None:
        """Segments are missing before the next one (a crash mid-compaction or loss)."""
        self.continuous = False

    def head(self, last_index: int, compact_index: int, compact_term: int) -> None:
        """A segment begins; the log then ended at ``last_index``."""
        if not self.continuous:
            if last_index < compact_index:
                raise self._corrupt(
                    f"segment head has last index {last_index} below its "
                    f"compaction point {compact_index}"
                )
            # When last_index > compact_index, entries compact_index+1..last_index
            # sit in segments we do not have: fine if later records drop or replace
            # them, which finish() checks.
            self.compact_index, self.compact_term = compact_index, compact_term
            self.positions.restart(last_index + 1)
            self.continuous = True
            return
        if (last_index, compact_index, compact_term) != (
            self.last_index,
            self.compact_index,
            self.compact_term,
        ):
            raise self._corrupt(
                f"segment head says last index {last_index}, compacted through "
                f"{compact_index} (term {compact_term}), but the records before it leave "
                f"last index {self.last_index}, compacted through {self.compact_index} "
                f"(term {self.compact_term})",
            )

    def entry(self, index: int, term: int, segment: int, offset: int, size: int) -> None:
        """An ENTRY record for ``index`` of ``term``."""
        positions = self.positions
        if index <= self.compact_index:
            raise self._corrupt(
                f"entry {index} is at or below the compaction point {self.compact_index}"
            )
        if index > positions.last + 1:
            raise self._corrupt(f"index gap: entry {index} follows last index {positions.last}")
        if index < positions.first:
            # Overwrites entries we never saw (they were in a deleted segment).
            positions.restart(index)
        else:
            positions.truncate_from(index)
        previous = self._known_term(index - 1)
        if previous is not None and term < previous:
            raise self._corrupt(
                f"term regression: entry {index} has term {term}, below "
                f"term {previous} of entry {index - 1}"
            )
        positions.append(index, term, segment, offset, size)

    def compact(self, index: int, term: int) -> None:
        """A COMPACT record: entries through ``index`` (of ``term``) are dropped."""
        if index < self.compact_index:
            raise self._corrupt(f"compaction goes back from {self.compact_index} to {index}")
        if index > self.last_index:
            raise self._corrupt(
                f"compaction through {index} is past the last index {self.last_index}"
            )
        known = self._known_term(index)
        if known is not None and known != term:
            raise self._corrupt(
                f"compaction says entry {index} has term {term}, but it has term {known}"
            )
        self.compact_index, self.compact_term = index, term
        if index >= self.positions.first - 1:
            self.positions.drop_through(index)

    def reset(self, index: int, term: int) -> None:
        """A RESET record: a snapshot at ``(index, term)`` replaced the whole log."""
        if index < self.compact_index:
            raise self._corrupt(f"snapshot reset goes back from {self.compact_index} to {index}")
        self.compact_index, self.compact_term = index, term
        self.positions.restart(index + 1)

    def state(self, state: HardState) -> None:
        """A STATE record."""
        if state.term < self.hard_state.term:
            raise self._corrupt(
                f"hard state term goes back from {self.hard_state.term} to {state.term}"
            )
        self.hard_state = state

    def finish(self, directory: str) -> None:
        """Check that the replayed log is whole."""
        if not self.anchored:
            raise LogCorruption(
                f"raft log in {directory} is missing entries {self.compact_index + 1} to "
                f"{self.positions.first - 1}: the segment files that held them are gone. "
                "Restore the directory from a backup, or remove this node's Raft data and "
                "re-add it to the cluster."
            )

    def _corrupt(self, what: str) -> LogCorruption:
        return LogCorruption(
            f"raft log segment {self._path} is inconsistent at byte offset {self._offset}: "
            f"{what}. {CORRUPTION_ADVICE}",
            path=self._path,
            offset=self._offset,
        )

    def _known_term(self, index: int) -> int | None:
        if index == self.compact_index:
            return self.compact_term
        if self.positions.first <= index <= self.positions.last:
            return self.positions.term(index)
        return None
