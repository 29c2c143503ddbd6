"""Hybrid logical clock (Kulkarni et al.), driven by a wall clock passed in.

A timestamp is one integer: wall milliseconds in the high bits, a logical counter
in the low 16 bits, so timestamps order like (wall_ms, logical) and pack small.
``now`` moves forward on every local event; ``observe`` folds in a received
timestamp so that causally later events get larger timestamps even when wall
clocks disagree. The clock never reads time itself: the driver passes it in.
"""

from __future__ import annotations

__all__ = ["LOGICAL_BITS", "HybridClock", "make_timestamp", "wall_ms_of"]

LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def make_timestamp(wall_ms: int, logical: int = 0) -> int:
    """Compose a timestamp from its parts."""
    assert 0 <= logical <= _LOGICAL_MASK, logical
    return (wall_ms << LOGICAL_BITS) | logical


def wall_ms_of(timestamp: int) -> int:
    """The wall-clock milliseconds part of a timestamp."""
    return timestamp >> LOGICAL_BITS


class HybridClock:
    """A hybrid logical clock; the caller supplies wall time in milliseconds."""

    __slots__ = ("_last",)

    def __init__(self, last: int = 0) -> None:
        self._last = last

    @property
    def last(self) -> int:
        """The largest timestamp issued or observed so far."""
        return self._last

    def now(self, wall_ms: int) -> int:
        """A timestamp for a local event, larger than every earlier one."""
        candidate = make_timestamp(wall_ms)
        self._last = candidate if candidate > self._last else self._advance(self._last)
        return self._last

    def observe(self, remote: int, wall_ms: int) -> int:
        """Fold in a timestamp received from another node; return the new local time."""
        local = make_timestamp(wall_ms)
        latest = max(self._last, remote)
        self._last = local if local > latest else self._advance(latest)
        return self._last

    @staticmethod
    def _advance(timestamp: int) -> int:
        # When the logical counter is exhausted the wall part moves one
        # millisecond ahead; ordering is preserved, and real time catches up.
        return timestamp + 1
