"""The leader's view of each follower: how far its log matches, what to send next.

How this works. For every peer the leader keeps ``match`` (highest index known to
be replicated there) and ``next`` (the next index to send). A peer is in one of
three states:

- PROBE: the leader does not know where the logs agree. It sends one append at a
  time and waits for the answer (or a heartbeat answer) before the next, moving
  ``next`` back by the follower's hint on each rejection.
- REPLICATE: the logs agree up to ``match``; appends are pipelined, ``next``
  advances optimistically as soon as an append is sent, and ``Inflights`` caps
  how many are outstanding. A rejection (a lost message) drops back to PROBE.
- SNAPSHOT: the entries the peer needs are compacted away; the snapshot is being
  sent in chunks and appends wait until the peer acknowledges it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.Enum):
    """How the leader replicates to one peer."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The last indices of appends sent and not yet acknowledged, oldest first."""

    __slots__ = ("_capacity", "_last_indices")

    def __init__(self, capacity: int) -> None:
        """Hold at most ``capacity`` outstanding appends."""
        assert capacity >= 1, capacity
        self._capacity = capacity
        self._last_indices: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._last_indices)

    @property
    def full(self) -> bool:
        """Whether no more appends may be sent before an acknowledgement."""
        return len(self._last_indices) >= self._capacity

    def add(self, last_index: int) -> None:
        """Record an append whose last entry is ``last_index``."""
        assert not self.full, (len(self._last_indices), self._capacity)
        assert not self._last_indices or last_index > self._last_indices[-1], (
            last_index,
            self._last_indices[-1],
        )
        self._last_indices.append(last_index)

    def free_to(self, index: int) -> None:
        """Forget the appends acknowledged by a match at ``index``."""
        queue = self._last_indices
        while queue and queue[0] <= index:
            queue.popleft()

    def free_first(self) -> None:
        """Forget the oldest append (a heartbeat answer shows the peer is alive, so the
        window should not stay shut on one that was lost)."""
        if self._last_indices:
            self._last_indices.popleft()

    def reset(self) -> None:
        """Forget every outstanding append."""
        self._last_indices.clear()


@dataclass(slots=True)
class Progress:
    """Replication state of one peer, as the leader sees it (see module doc)."""

    match: int
    next: int
    inflights: Inflights
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    """PROBE only: an append is out and unanswered, so no other is sent."""
    pending_snapshot: int = 0
    """SNAPSHOT only: the index of the snapshot being sent."""
    recent_active: bool = False
    """Heard from in the current check-quorum period."""
    sent_commit: int = 0
    """The highest commit index sent to this peer in an append."""
    snapshot_idle_ticks: int = field(default=0)
    """SNAPSHOT only: ticks since the peer last acknowledged a chunk."""

    def __post_init__(self) -> None:
        assert 0 <= self.match < self.next, self

    def become_probe(self) -> None:
        """Probe from just after what is known to match (or the snapshot sent)."""
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._enter(ProgressState.PROBE)

    def become_replicate(self) -> None:
        """Start pipelining from just after ``match``."""
        self.next = self.match + 1
        self._enter(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        """Stop appends while the snapshot at ``snapshot_index`` is sent."""
        self._enter(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def _enter(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_idle_ticks = 0
        self.inflights.reset()

    @property
    def paused(self) -> bool:
        """Whether appends to this peer must wait."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full
        return True

    def sent_entries(self, last_index: int) -> None:
        """An append carrying entries up to ``last_index`` was sent."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        else:
            assert self.state is ProgressState.PROBE, self
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The peer matches up to ``index``; returns whether ``match`` grew."""
        self.next = max(self.next, index + 1)
        if index <= self.match:
            return False
        self.match = index
        self.probe_sent = False
        return True

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """The append after ``rejected`` was refused and the peer suggests probing
        after ``hint``. Returns False for a stale rejection (nothing changes)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # answer to an append older than what is known to match
            # A lost or reordered append; everything up to ``match`` is safe.
            self.next = self.match + 1
            return True
        if self.state is ProgressState.SNAPSHOT or self.next - 1 != rejected:
            return False  # not the probe outstanding now
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True
