"""ReadIndex: linearizable reads confirmed by a round of heartbeats; read leases.

How this works. Every heartbeat broadcast is a numbered *round*, and followers
echo the round number. A read that reaches the leader is stamped with the
leader's commit index at that moment (its *read index*) and with the next round
(``seq``). Once a quorum of voters (the leader counting itself) has echoed a
round ``>= seq``, the leader was still the leader after the read arrived, so no
other leader can have committed anything it does not know of: the read may be
served as soon as the state machine has applied its read index. Reads arriving
between two broadcasts share a round, so a burst of reads costs one round.

The same echoes give a *lease*: a follower that received a heartbeat sent at
tick ``t`` refuses to vote for anyone else until ``t + election_timeout`` on its
own clock (check-quorum's stickiness). So once a quorum echoed round ``r``, no
other leader can exist before ``sent_tick(r) + election_timeout``, provided
clocks advance at nearly the same rate; ``lease_expiry`` is that tick, minus one
of margin. The leader only accepts reads once it has committed an entry of its
own term (before that its commit index may lag the true one); ``node`` holds
them back until then.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from consensus.raft.quorum import committed_index

__all__ = ["PendingRead", "ReadOnly"]


@dataclass(frozen=True, slots=True)
class PendingRead:
    """A read waiting for its heartbeat round to be confirmed."""

    request_id: bytes
    origin: bytes | None
    """The peer that forwarded the read, or None for a read made on this node."""
    index: int
    """The leader's commit index when the read arrived."""
    seq: int


class ReadOnly:
    """The leader's pending reads and the rounds each peer has echoed (one term)."""

    __slots__ = ("_acks", "_capacity", "_pending", "_rounds", "_seq")

    def __init__(self, capacity: int, rounds_kept: int) -> None:
        """Hold at most ``capacity`` pending reads; remember when the last
        ``rounds_kept`` rounds were sent (for leases)."""
        self._capacity = capacity
        self._seq = 0
        self._acks: dict[bytes, int] = {}
        self._pending: deque[PendingRead] = deque()
        self._rounds: deque[tuple[int, int]] = deque(maxlen=rounds_kept)  # (seq, tick)

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def needs_broadcast(self) -> bool:
        """Whether a read waits for a round that has not been sent yet."""
        return bool(self._pending) and self._pending[-1].seq > self._seq

    def add(self, request_id: bytes, origin: bytes | None, index: int) -> bool:
        """Queue a read at ``index`` for the next round; False if the queue is full."""
        if len(self._pending) >= self._capacity:
            return False
        self._pending.append(PendingRead(request_id, origin, index, self._seq + 1))
        return True

    def broadcast(self, tick: int) -> int:
        """Start a new round at ``tick``; returns the number its heartbeats carry."""
        self._seq += 1
        self._rounds.append((self._seq, tick))
        return self._seq

    def ack(self, peer: bytes, seq: int) -> None:
        """``peer`` echoed round ``seq`` (rounds never sent are ignored)."""
        if seq <= self._seq and seq > self._acks.get(peer, 0):
            self._acks[peer] = seq

    def confirmed_round(self, voters: Collection[bytes], self_id: bytes) -> int:
        """The newest round a quorum of ``voters`` has echoed."""
        echoed = dict(self._acks)
        echoed[self_id] = self._seq
        return committed_index(voters, echoed)

    def release(self, voters: Collection[bytes], self_id: bytes) -> list[PendingRead]:
        """Remove and return the reads whose round a quorum of ``voters`` confirmed."""
        if not self._pending:
            return []
        confirmed = self.confirmed_round(voters, self_id)
        released: list[PendingRead] = []
        while self._pending and self._pending[0].seq <= confirmed:
            released.append(self._pending.popleft())
        return released

    def lease_expiry(self, voters: Collection[bytes], self_id: bytes, timeout: int) -> int:
        """The tick before which no other leader can exist (0 if unknown)."""
        confirmed = self.confirmed_round(voters, self_id)
        for seq, tick in reversed(self._rounds):
            if seq <= confirmed:
                return tick + timeout - 1
        return 0
