"""Virtual time on an event heap.

How this works: an event is a plain tuple ``(time, sequence, function, argument)``
on a binary heap. ``run(until)`` pops the earliest event, moves the clock to its
time and calls ``function(argument)``; handlers schedule further events. The
sequence number is a strictly increasing counter, so two events at the same
virtual time run in the order they were scheduled and tuples never compare the
function or argument: a run is a pure function of what was scheduled. Tuples
rather than event objects keep the per-event cost to one small allocation.

Nothing here reads a real clock; virtual time only moves when an event runs or
``run`` reaches its ``until``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Engine"]

T = TypeVar("T")


class Engine:
    """An event heap and the virtual clock it drives (seconds from 0)."""

    __slots__ = ("_heap", "_sequence", "_stopped", "events_processed", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.events_processed = 0
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._sequence = 0
        self._stopped = False

    def at(self, time: float, function: Callable[[T], None], argument: T) -> None:
        """Run ``function(argument)`` at virtual ``time`` (not before the current time)."""
        assert time >= self.now, (time, self.now)
        self._sequence += 1
        heapq.heappush(self._heap, (time, self._sequence, function, argument))

    def after(self, delay_s: float, function: Callable[[T], None], argument: T) -> None:
        """Run ``function(argument)`` ``delay_s`` seconds of virtual time from now."""
        assert delay_s >= 0.0, delay_s
        self._sequence += 1
        heapq.heappush(self._heap, (self.now + delay_s, self._sequence, function, argument))

    def run(self, until: float) -> None:
        """Run every event due at or before ``until``, then set the clock to ``until``.

        Stops early (clock left at the last event run) if a handler calls ``stop``.
        """
        assert until >= self.now, (until, self.now)
        heap = self._heap
        pop = heapq.heappop
        processed = 0
        self._stopped = False
        try:
            while heap and heap[0][0] <= until:
                time, _, function, argument = pop(heap)
                self.now = time
                function(argument)
                processed += 1
                if self._stopped:
                    return
            self.now = until
        finally:
            self.events_processed += processed

    def stop(self) -> None:
        """Make the current ``run`` return after the event being handled."""
        self._stopped = True

    @property
    def pending(self) -> int:
        """How many events are scheduled and not yet run."""
        return len(self._heap)

    def next_time(self) -> float | None:
        """The time of the earliest scheduled event, or None if there is none."""
        return self._heap[0][0] if self._heap else None
