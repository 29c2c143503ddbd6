"""The Raft log as the core sees it: durable storage plus what is not yet persisted.

How this works. Entries (and at most one snapshot) the core accepted but the
driver has not persisted yet live in the *unstable* part: a list of entries
starting at ``offset`` and an optional snapshot. Reads look there first, then in
storage below ``offset``. ``Ready`` hands the unstable part to the driver; when
the driver reports it persisted (``stable_to``), those entries are dropped from
memory. Storage may still hold a stale suffix that unstable entries replace: it
is overwritten when the driver appends them, and never read meanwhile because
every index ``>= offset`` is answered from the unstable part.

``committed`` is the highest index known committed, ``applied`` the highest the
driver has applied; ``applied <= committed <= last_index`` always holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from consensus.raft.errors import CompactedError, UnavailableError
from consensus.raft.storage import Storage, limit_size
from consensus.raft.types import Entry, Snapshot

__all__ = ["RaftLog"]


class RaftLog:
    """Storage plus the unstable entries and snapshot (see module doc)."""

    __slots__ = ("applied", "committed", "offset", "storage", "unstable", "unstable_snapshot")

    def __init__(self, storage: Storage) -> None:
        """Open the log over ``storage`` (nothing unstable yet)."""
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        self.unstable_snapshot: Snapshot | None = None
        first = storage.first_index()
        self.committed = first - 1
        self.applied = first - 1

    # -- reading -----------------------------------------------------------------

    def first_index(self) -> int:
        """The first index held as an entry."""
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """The last index in the log."""
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index
        return self.storage.last_index()

    def persisted_index(self) -> int:
        """The last index the driver has persisted (entries after it are unstable)."""
        assert self.unstable_snapshot is None, self.unstable_snapshot
        return self.offset - 1 if self.unstable else self.storage.last_index()

    def term(self, index: int) -> int | None:
        """The term at ``index``; None if compacted or past the end."""
        snap = self.unstable_snapshot
        if snap is not None and index == snap.index:
            return snap.term
        if index >= self.offset and self.unstable:
            position = index - self.offset
            return self.unstable[position].term if position < len(self.unstable) else None
        if snap is not None:
            return None  # below the snapshot (compacted) or past it
        try:
            return self.storage.term(index)
        except (CompactedError, UnavailableError):
            return None

    def last_term(self) -> int:
        """The term of the last entry."""
        term = self.term(self.last_index())
        assert term is not None, (self.last_index(), self.offset, len(self.unstable))
        return term

    def match_term(self, index: int, term: int) -> bool:
        """Whether the log holds an entry (or snapshot point) at ``index`` of ``term``."""
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as up to date."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries ``lo <= index < hi`` within ``max_bytes`` (at least one).

        Raises ``CompactedError`` when ``lo`` was compacted away.
        """
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted")
        assert hi <= self.last_index() + 1, (hi, self.last_index())
        if lo >= hi:
            return []
        offset = self.offset
        if lo >= offset:
            return limit_size(self.unstable[lo - offset : hi - offset], max_bytes)
        stored = self.storage.entries(lo, min(hi, offset), max_bytes)
        if hi <= offset or len(stored) < offset - lo:
            return stored  # all from storage, or cut there by the byte limit
        return limit_size(stored + self.unstable[: hi - offset], max_bytes)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """The first index of ``entries`` that the log lacks or holds with another
        term; 0 when the log already holds them all."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index ``<= index`` whose term is ``<= term``, with that term.

        The back-off hint: entries above it cannot match a log whose entry at
        ``index`` has ``term``. Stops at the first unknown term (compacted), which
        is returned with term 0.
        """
        while index > 0:
            found = self.term(index)
            if found is None:
                return index, 0
            if found <= term:
                return index, found
            index -= 1
        return 0, 0

    # -- changing ----------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append contiguous ``entries``, replacing any suffix from their first index
        (never a committed one); returns the new last index."""
        if not entries:
            return self.last_index()
        after = entries[0].index
        assert after > self.committed, (after, self.committed)
        end = self.offset + len(self.unstable)
        if after == end and (self.unstable or after == self.last_index() + 1):
            self.unstable.extend(entries)  # the common case: at the end
            return after + len(entries) - 1
        assert after <= self.last_index() + 1, (after, self.last_index())
        if after <= self.offset:
            # Replaces persisted entries too: the driver overwrites them on append.
            self.offset = after
            self.unstable = list(entries)
        else:
            del self.unstable[after - self.offset :]
            self.unstable.extend(entries)
        return self.last_index()

    def commit_to(self, index: int) -> None:
        """Raise the commit index to ``index`` (never lowers it)."""
        if index > self.committed:
            assert index <= self.last_index(), (index, self.last_index())
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to ``index`` if its entry is of ``term`` (the current term: older
        entries are committed only indirectly, Raft §5.4.2)."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        """The driver applied everything up to ``index``."""
        assert self.applied <= index <= self.committed, (self.applied, index, self.committed)
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to (index, term). Ignored when the log was
        rewritten meanwhile (the rewritten entries come out again in the next Ready)."""
        if self.term(index) != term or index < self.offset:
            return
        del self.unstable[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        """The driver persisted the unstable snapshot at ``index``."""
        if self.unstable_snapshot is not None and self.unstable_snapshot.index == index:
            self.unstable_snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (installed from the leader)."""
        assert snapshot.index > self.committed, (snapshot.index, self.committed)
        self.unstable_snapshot = snapshot
        self.unstable = []
        self.offset = snapshot.index + 1
        self.committed = snapshot.index

    def snapshot(self) -> Snapshot:
        """The newest snapshot: the unstable one, or storage's."""
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot
        return self.storage.snapshot()

    def committed_to_apply(self, max_bytes: int) -> list[Entry]:
        """Committed entries not yet applied, from the first (within ``max_bytes``)."""
        lo = self.applied + 1
        if self.unstable_snapshot is not None:
            lo = max(lo, self.unstable_snapshot.index + 1)
        if lo > self.committed:
            return []
        return self.entries(lo, self.committed + 1, max_bytes)
