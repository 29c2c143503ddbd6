"""The bounded queue of membership updates waiting to be piggybacked.

How this works: every change this node learns or makes is queued once, keyed by
the member it is about, so a newer update about a node replaces the older one.
Each outgoing ping, ack, ping-req and nack takes a few updates, those sent the
fewest times first (newest first among equals), so fresh news travels first.
An update leaves the queue after ``retransmit_limit`` transmissions: with
``multiplier * ceil(log10(n + 1))`` transmissions by each node that learns it,
infection-style gossip reaches every one of ``n`` nodes with high probability.
The queue holds at most ``capacity`` updates; past that, the most-sent one is
dropped and counted. A heap keyed by (transmissions, newest first) finds the
next updates without scanning the queue; entries made stale by a replacement
or a transmission are skipped when they surface, and the heap is rebuilt when
stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from mesh.membership.messages import MemberUpdate

__all__ = ["BroadcastQueue", "retransmit_limit"]


def retransmit_limit(multiplier: int, cluster_size: int) -> int:
    """Transmissions per update: ``multiplier * ceil(log10(cluster_size + 1))``."""
    return multiplier * max(1, math.ceil(math.log10(max(1, cluster_size) + 1)))


@dataclass(slots=True)
class _Queued:
    update: MemberUpdate
    transmits: int
    order: int  # insertion counter: higher is newer


class BroadcastQueue:
    """Updates to piggyback, one per member, each sent a limited number of times."""

    __slots__ = ("_capacity", "_heap", "_next_order", "_queued", "dropped")

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1, capacity
        self._capacity = capacity
        self._queued: dict[bytes, _Queued] = {}
        self._heap: list[tuple[int, int, bytes]] = []  # (transmits, -order, node id)
        self._next_order = 0
        self.dropped = 0
        """Updates pushed out because the queue was full."""

    def __len__(self) -> int:
        return len(self._queued)

    def enqueue(self, update: MemberUpdate) -> None:
        """Queue ``update``, replacing any queued update about the same member."""
        self._queued.pop(update.node_id, None)
        if len(self._queued) >= self._capacity:
            self._drop_most_sent()
        self._next_order += 1
        self._queued[update.node_id] = _Queued(update, 0, self._next_order)
        self._push(update.node_id, 0, self._next_order)

    def take(
        self, count_max: int, transmit_limit: int, *, first: bytes | None = None
    ) -> list[MemberUpdate]:
        """Up to ``count_max`` updates, fewest-sent first; each counts one transmission.

        The update about ``first``, if queued, comes before all others.
        """
        if count_max <= 0 or not self._queued:
            return []
        chosen: list[_Queued] = []
        head = self._queued.get(first) if first is not None else None
        if head is not None:
            chosen.append(head)
        heap, queued_by_id = self._heap, self._queued
        while heap and len(chosen) < count_max:
            transmits, negative_order, node_id = heapq.heappop(heap)
            queued = queued_by_id.get(node_id)
            if (queued is None or queued is head or queued.order != -negative_order
                    or queued.transmits != transmits):
                continue  # stale: replaced, sent meanwhile, or already chosen
            chosen.append(queued)
        for queued in chosen:
            queued.transmits += 1
            if queued.transmits >= transmit_limit:
                del queued_by_id[queued.update.node_id]
            else:
                self._push(queued.update.node_id, queued.transmits, queued.order)
        if len(heap) > 4 * len(queued_by_id) + 64:
            self._rebuild()
        return [queued.update for queued in chosen]

    def _push(self, node_id: bytes, transmits: int, order: int) -> None:
        heapq.heappush(self._heap, (transmits, -order, node_id))

    def _rebuild(self) -> None:
        self._heap = [(q.transmits, -q.order, node_id) for node_id, q in self._queued.items()]
        heapq.heapify(self._heap)

    def _drop_most_sent(self) -> None:
        victim = max(self._queued.values(), key=lambda q: (q.transmits, -q.order))
        del self._queued[victim.update.node_id]
        self.dropped += 1
