"""Per-sender replay protection: a sliding window over sequence numbers.

Each sender numbers its envelopes. The receiver keeps the highest number seen and
a bitmap of which of the ``width`` numbers below it have been seen (the IPsec
anti-replay scheme). A number already seen, or older than the window, is a
replay. Out-of-order delivery within the window is accepted once.

Senders start their counter from their boot time in microseconds (see
``mesh.envelope.Sealer``), so a restarted sender continues above the numbers it
used before and is not mistaken for a replay.
"""

from __future__ import annotations

__all__ = ["ReplayWindow"]


class ReplayWindow:
    """Accepts each sequence number at most once, within ``width`` of the highest seen."""

    __slots__ = ("_highest", "_seen", "_width")

    def __init__(self, width: int) -> None:
        assert width > 0, width
        self._width = width
        self._highest = -1
        self._seen = 0  # bit i set: sequence (highest - i) was seen

    @property
    def highest(self) -> int:
        """The highest sequence number accepted so far (-1 before the first)."""
        return self._highest

    def check(self, seq: int) -> bool:
        """True when ``seq`` would be accepted (without recording it)."""
        if seq > self._highest:
            return True
        offset = self._highest - seq
        return offset < self._width and not (self._seen >> offset) & 1

    def accept(self, seq: int) -> None:
        """Record ``seq``; call only after ``check(seq)`` returned True."""
        if seq > self._highest:
            shift = seq - self._highest
            if shift >= self._width:
                self._seen = 1  # a jump past the window forgets it (and never shifts far)
            else:
                self._seen = ((self._seen << shift) | 1) & ((1 << self._width) - 1)
            self._highest = seq
        else:
            self._seen |= 1 << (self._highest - seq)
