"""Per-sender replay protection: the last ``width`` sequence numbers accepted.

Each sender numbers its envelopes; the numbers follow the wall clock in
microseconds (see ``mesh.envelope.EnvelopeSealer``), so they are sparse and a
restarted sender continues above the numbers it used before. The receiver
remembers the last ``width`` numbers it accepted from a sender and the highest
number it has forgotten (the *floor*). A number it remembers, or at or below
the floor, is a replay; any other is new and accepted once.

The window counts messages, not numbers: reordering is tolerated for as long as
fewer than ``width`` later envelopes were accepted in between, however far
apart in time the two were sealed. (A window over the numbers themselves would,
with microsecond numbers, tolerate only ``width`` microseconds of reordering,
less than an envelope that took the reply path needs to overtake one on the
sender's own connection under load.)
"""

from __future__ import annotations

from collections import deque

__all__ = ["ReplayWindow"]


class ReplayWindow:
    """Accepts each sequence number at most once; remembers the last ``width``."""

    __slots__ = ("_floor", "_highest", "_order", "_seen", "_width")

    def __init__(self, width: int) -> None:
        assert width > 0, width
        self._width = width
        self._highest = -1
        self._floor = -1  # the highest number forgotten: it and all below are refused
        self._seen: set[int] = set()
        self._order: deque[int] = deque()  # the remembered numbers, oldest accepted first

    @property
    def highest(self) -> int:
        """The highest sequence number accepted so far (-1 before the first)."""
        return self._highest

    def check(self, seq: int) -> bool:
        """True when ``seq`` would be accepted (without recording it)."""
        return seq > self._floor and seq not in self._seen

    def accept(self, seq: int) -> None:
        """Record ``seq``; call only after ``check(seq)`` returned True."""
        self._seen.add(seq)
        self._order.append(seq)
        if seq > self._highest:
            self._highest = seq
        if len(self._order) > self._width:
            forgotten = self._order.popleft()
            self._seen.discard(forgotten)
            if forgotten > self._floor:
                self._floor = forgotten
