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

    __slots__ = ("_capacity", "_items", "dropped")

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1, capacity
        self._capacity = capacity
        # store key -> rumour; dicts keep insertion order, which is age order.
        self._items: dict[Hashable, _Rumor] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, key: Hashable, record: GossipRecord, transmissions: int) -> None:
        """Queue ``record`` (replacing any rumour for the same store key) at the back."""
        if transmissions <= 0:
            return
        self._items.pop(key, None)
        if len(self._items) >= self._capacity:
            del self._items[next(iter(self._items))]
            self.dropped += 1
        self._items[key] = _Rumor(record, transmissions)

    def discard(self, key: Hashable) -> None:
        """Stop rumouring the record stored under ``key``."""
        self._items.pop(key, None)

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
            del self._items[key]
        return tuple(taken)
