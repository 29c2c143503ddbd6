"""Rumour queue: recent records piggybacked on outgoing digests a bounded number of times.

How this works: a record that was just written here, or just learned, becomes a
rumour with a transmission budget (``multiplier * ceil(log2(n + 1))``). Each
outgoing digest carries the oldest rumours, each carriage spends one unit, and a
rumour leaves the queue when its budget is spent. Since every node that learns a
record passes it on too, an update reaches everyone in about log(n) rounds without
waiting for anti-entropy to pick the right peer. A newer record for the same key
replaces the older rumour (the old value is not worth spreading). The queue is
bounded: when full the oldest rumour is dropped, and anti-entropy delivers it.
"""

from __future__ import annotations

from collections.abc import Hashable

from consensus.gossip.messages import GossipRecord, record_size_bytes

__all__ = ["RumorQueue"]


class _Rumor:
    __slots__ = ("left", "record", "size_bytes")

    def __init__(self, record: GossipRecord, left: int) -> None:
        self.record = record
        self.left = left
        self.size_bytes = record_size_bytes(record)


class RumorQueue:
    """Records to piggyback, oldest first, each with its remaining transmissions."""

    __slots__ = ("_bytes", "_capacity", "_items", "dropped")

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1, capacity
        self._capacity = capacity
        # store key -> rumour; dicts keep insertion order, which is age order.
        self._items: dict[Hashable, _Rumor] = {}
        self._bytes = 0  # the size of all the rumours queued
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, key: Hashable, record: GossipRecord, transmissions: int) -> None:
        """Queue ``record`` (replacing any rumour for the same store key) at the back."""
        if transmissions <= 0:
            return
        self.discard(key)
        if len(self._items) >= self._capacity:
            self.discard(next(iter(self._items)))
            self.dropped += 1
        rumor = self._items[key] = _Rumor(record, transmissions)
        self._bytes += rumor.size_bytes

    def discard(self, key: Hashable) -> None:
        """Stop rumouring the record stored under ``key``."""
        rumor = self._items.pop(key, None)
        if rumor is not None:
            self._bytes -= rumor.size_bytes

    def take(self, count_max: int, bytes_max: int) -> tuple[GossipRecord, ...]:
        """The oldest rumours fitting the limits; each spends one transmission."""
        taken: list[GossipRecord] = []
        spent: list[Hashable] = []
        for key, rumor in self._items.items():
            if len(taken) >= count_max:
                break
            if rumor.size_bytes > bytes_max and taken:
                break  # the first always goes, or one large rumour would block the queue
            bytes_max -= rumor.size_bytes
            taken.append(rumor.record)
            rumor.left -= 1
            if rumor.left <= 0:
                spent.append(key)
        for key in spent:
            self.discard(key)
        return tuple(taken)

    def take_many(
        self, count_max: int, bytes_max: int, times: int
    ) -> list[tuple[GossipRecord, ...]]:
        """What ``times`` successive ``take`` calls return, each spending as ``take`` does.

        A round carries rumours to several peers, and usually the whole queue fits
        in a message: then each call would take every rumour still there, so the
        answers are worked out in one pass, and those that are equal are one tuple.
        """
        items = self._items
        if len(items) > count_max or (self._bytes > bytes_max and len(items) > 1):
            return [self.take(count_max, bytes_max) for _ in range(times)]
        everything = tuple(rumor.record for rumor in items.values())
        # A rumour with ``left`` transmissions goes in the first ``left`` answers.
        shortest = min((rumor.left for rumor in items.values()), default=times)
        answers = [everything] * min(shortest, times)
        for round_ in range(len(answers), times):
            answers.append(tuple(r.record for r in items.values() if r.left > round_))
        spent = []
        for key, rumor in items.items():
            rumor.left -= min(rumor.left, times)
            if rumor.left <= 0:
                spent.append(key)
        for key in spent:
            self.discard(key)
        return answers
