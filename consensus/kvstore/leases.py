"""The lease table: live leases and which one ends next.

How this works: each lease records its TTL, its deadline (stamped time, in
milliseconds) and what hangs on it: the keys attached to it and the lock it backs.
A min-heap of ``(deadline_ms, lease_id)`` finds expired leases in order without
scanning all of them. A keep-alive or a revoke does not search the heap: it leaves
the old entry behind, and an entry is only believed if its lease still exists with
that same deadline. The heap is rebuilt from the live leases when stale entries
outnumber live ones, so it stays within a constant factor of ``leases_max``.

Expiry order is ``(deadline_ms, lease_id)``, a total order over replicated data, so
every replica expires the same leases in the same order. The heap is never part of
a snapshot; it is rebuilt on restore.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["LeaseRecord", "LeaseTable"]

# Rebuild the heap once stale entries exceed live ones by this margin (a constant
# so that small tables do not rebuild on every keep-alive).
_HEAP_SLACK = 64


@dataclass(slots=True)
class LeaseRecord:
    """One live lease (mutable: owned by ``LeaseTable`` and the store)."""

    lease_id: int
    ttl_ms: int
    deadline_ms: int
    keys: set[str] = field(default_factory=set)
    lock: str | None = None


class LeaseTable:
    """Live leases by id, with their expiry order."""

    def __init__(self) -> None:
        self._leases: dict[int, LeaseRecord] = {}
        self._heap: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def get(self, lease_id: int) -> LeaseRecord | None:
        """The lease ``lease_id``, or None."""
        return self._leases.get(lease_id)

    def records(self) -> Iterator[LeaseRecord]:
        """Every live lease, by increasing id."""
        for lease_id in sorted(self._leases):
            yield self._leases[lease_id]

    def add(self, record: LeaseRecord) -> None:
        """Start tracking a new lease."""
        assert record.lease_id not in self._leases, record
        self._leases[record.lease_id] = record
        self._push(record)

    def renew(self, lease_id: int, ttl_ms: int, deadline_ms: int) -> None:
        """Give a live lease a new TTL and deadline."""
        record = self._leases[lease_id]
        record.ttl_ms = ttl_ms
        record.deadline_ms = deadline_ms
        self._push(record)

    def remove(self, lease_id: int) -> LeaseRecord:
        """Stop tracking a lease and return it (its heap entry goes stale)."""
        return self._leases.pop(lease_id)

    def pop_expired(self, now_ms: int) -> LeaseRecord | None:
        """Remove and return the next lease with ``deadline_ms <= now_ms``, or None."""
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            deadline_ms, lease_id = heapq.heappop(heap)
            record = self._leases.get(lease_id)
            if record is not None and record.deadline_ms == deadline_ms:
                del self._leases[lease_id]
                return record
        return None

    def _push(self, record: LeaseRecord) -> None:
        heapq.heappush(self._heap, (record.deadline_ms, record.lease_id))
        if len(self._heap) > 2 * len(self._leases) + _HEAP_SLACK:
            self._heap = [(r.deadline_ms, r.lease_id) for r in self._leases.values()]
            heapq.heapify(self._heap)
