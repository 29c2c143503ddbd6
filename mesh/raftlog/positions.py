"""Where every live entry is on disk, and its term: the log's in-memory index.

How this works: the live entries are one contiguous run of indices
``first..last``. For each, three parallel arrays hold the segment number, the
byte offset and the size of its record, so a read is one ``pread`` (and a range
of neighbours one ``pread`` too). That is 16 bytes per live entry in compact
``array`` storage (a million entries: 16 MB); compaction, which follows every
snapshot, is what bounds it. Terms change rarely, so they are kept run-length
encoded (the first index of each run of equal terms) and looked up by bisection.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right

__all__ = ["Positions"]


class Positions:
    """Location and term of each entry in ``first..last`` (empty: ``last == first - 1``)."""

    __slots__ = ("_first", "_offsets", "_segments", "_sizes", "_term_starts", "_terms")

    def __init__(self, first: int = 1) -> None:
        assert first >= 1, first
        self._first = first
        self._segments: array[int] = array("I")
        self._offsets: array[int] = array("Q")
        self._sizes: array[int] = array("I")
        self._term_starts: list[int] = []
        self._terms: list[int] = []

    @property
    def first(self) -> int:
        """Index of the first entry held (``last + 1`` when empty)."""
        return self._first

    @property
    def last(self) -> int:
        """Index of the last entry held (``first - 1`` when empty)."""
        return self._first + len(self._offsets) - 1

    def __len__(self) -> int:
        return len(self._offsets)

    def restart(self, first: int) -> None:
        """Forget every entry; the next one appended will be ``first``."""
        assert first >= 1, first
        self._first = first
        del self._segments[:], self._offsets[:], self._sizes[:]
        self._term_starts.clear()
        self._terms.clear()

    def append(self, index: int, term: int, segment: int, offset: int, size: int) -> None:
        """Record that entry ``index`` (of ``term``) is at ``offset`` in ``segment``."""
        assert index == self._first + len(self._offsets), (index, self.last)
        assert not self._terms or term >= self._terms[-1], (term, self._terms[-1])
        self._segments.append(segment)
        self._offsets.append(offset)
        self._sizes.append(size)
        if not self._terms or self._terms[-1] != term:
            self._term_starts.append(index)
            self._terms.append(term)

    def truncate_from(self, index: int) -> None:
        """Drop the entries at ``index`` and after (``first <= index <= last + 1``)."""
        assert self._first <= index <= self.last + 1, (index, self._first, self.last)
        keep = index - self._first
        del self._segments[keep:], self._offsets[keep:], self._sizes[keep:]
        runs = bisect_left(self._term_starts, index)
        del self._term_starts[runs:], self._terms[runs:]

    def drop_through(self, index: int) -> None:
        """Drop the entries at ``index`` and before; ``first`` becomes ``index + 1``."""
        if index >= self.last:
            self.restart(index + 1)
            return
        drop = index + 1 - self._first
        if drop <= 0:
            return
        del self._segments[:drop], self._offsets[:drop], self._sizes[:drop]
        self._first = index + 1
        runs = bisect_right(self._term_starts, self._first) - 1
        del self._term_starts[:runs], self._terms[:runs]
        self._term_starts[0] = self._first

    def term(self, index: int) -> int:
        """Term of entry ``index`` (held)."""
        assert self._first <= index <= self.last, (index, self._first, self.last)
        return self._terms[bisect_right(self._term_starts, index) - 1]

    def last_term(self) -> int | None:
        """Term of the last entry held, ``None`` when empty."""
        return self._terms[-1] if self._terms else None

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(segment, offset, size)`` of entry ``index`` (held)."""
        slot = index - self._first
        assert 0 <= slot < len(self._offsets), (index, self._first, self.last)
        return self._segments[slot], self._offsets[slot], self._sizes[slot]

    def size(self, index: int) -> int:
        """Size in bytes of entry ``index``'s record."""
        return self._sizes[index - self._first]

    def segment(self, index: int) -> int:
        """Number of the segment holding entry ``index``."""
        return self._segments[index - self._first]
