"""Whom to probe next, and the bookkeeping of probes in flight.

How this works: members are probed round-robin over a list shuffled at the start
of every pass, so each live member is probed once per pass (bounded detection
time, unlike picking at random) while the order stays unpredictable. A member
that joins mid-pass is inserted at a random position. Members that died or were
forgotten are skipped lazily when their turn comes.

``Probe`` is one of this node's probes in flight: a direct ping until
``ack_deadline``, then ping-reqs to helpers, then failure at ``verdict_at``
unless an ack (direct or relayed) arrived. ``Relay`` is a ping this node sends as a
helper for another node's probe, answered back to the requester with the ack or,
after ``nack_at``, a nack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

__all__ = ["Probe", "ProbeOrder", "Relay"]


class ProbeOrder:
    """Round-robin over a list of node ids, reshuffled every pass."""

    __slots__ = ("_index", "_listed", "_order", "_rng")

    def __init__(self, rng: Random) -> None:
        self._rng = rng
        self._order: list[bytes] = []
        self._listed: set[bytes] = set()  # for membership tests only, never iterated
        self._index = 0

    def __len__(self) -> int:
        return len(self._order)

    def insert(self, node_id: bytes) -> None:
        """Add a newly live member at a random position (no-op if already listed)."""
        if node_id in self._listed:
            return
        position = self._rng.randint(0, len(self._order))
        self._order.insert(position, node_id)
        self._listed.add(node_id)
        if position < self._index:
            # Keep pointing at the same next member.
            self._index += 1

    def extend_shuffled(self, node_ids: list[bytes]) -> None:
        """Append members not yet listed, in random order (a faster bulk ``insert``)."""
        fresh = [node_id for node_id in node_ids if node_id not in self._listed]
        self._rng.shuffle(fresh)
        self._order += fresh
        self._listed.update(fresh)

    def next(
        self, probeable: Callable[[bytes], bool], live: Callable[[], list[bytes]]
    ) -> bytes | None:
        """The next member to probe, or None when nobody is probeable.

        ``probeable`` says whether a listed node may still be probed; ``live``
        gives the members to shuffle into a new pass when the current one ends.
        """
        for _ in range(2):
            while self._index < len(self._order):
                node_id = self._order[self._index]
                self._index += 1
                if probeable(node_id):
                    return node_id
            self._order = list(live())
            self._rng.shuffle(self._order)
            self._listed = set(self._order)
            self._index = 0
        return None


@dataclass(slots=True)
class Probe:
    """One of this node's probes in flight, of ``target``."""

    target: bytes
    seq: int
    ack_deadline: float
    verdict_at: float
    helpers: list[bytes] = field(default_factory=list)
    nacks_from: list[bytes] = field(default_factory=list)
    indirect_sent: bool = False


@dataclass(slots=True)
class Relay:
    """A ping sent as a helper on behalf of ``requester``'s probe ``requester_seq``."""

    requester: bytes
    requester_address: str
    requester_seq: int
    target: bytes
    nack_at: float
    expires_at: float
    nacked: bool = False
