"""Tombstone collection: forget a delete once every live member is known to have it.

How this works: a tombstone (a deleted map key, or a removed OR-set tag) must be
kept while some replica might still hold the value it deleted, or that replica
would keep the value. Digests tell us what a member holds: a member whose digest
covers the tombstone's ``(origin, version)`` has the tombstone (or a later write to
the same key), and then it also has every earlier version of that origin.

So confirmation runs per origin in epochs. An epoch picks a target version (the
highest tombstone of that origin at the time) and marks, in a bitset over the
current members, each member whose digest reaches it. When every bit is set, every
tombstone of that origin up to the target is confirmed, and the next epoch starts
with the then-highest tombstone. Confirmed tombstones are collected once they are
older than the grace period (their timestamp is at or before the ``cutoff``).
Memory is one small record and one bit per member per origin with tombstones, not
a digest per member: a thousand-node cluster stays cheap.

Any change of membership restarts every epoch (bit positions move, and a member
that just arrived has confirmed nothing). A node without members confirms nothing.
Overwritten tombstones leave stale heap entries; they are skipped when they reach
the top and the heap is rebuilt once half of it is stale.

``collect`` runs every gossip round but rarely finds work: after each pass the
collector notes the earliest cutoff at which the next pass could collect (the
oldest confirmed tombstone's timestamp) and skips passes before it, until a
tombstone is tracked or overwritten or an epoch completes, which may bring it
forward.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = ["TombstoneCollector"]

_REBUILD_STALE_MIN = 32
_NEVER = 1 << 64  # above every timestamp: no collection is due

K = TypeVar("K", bound=Hashable)


class _Origin(Generic[K]):
    """Tombstones of one origin and the state of its confirmation epoch."""

    __slots__ = ("confirmed", "heap", "highest", "ready", "stale", "target")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, K, int]] = []  # (version, seq, key, timestamp)
        self.stale = 0
        self.highest = 0  # highest tombstone version tracked
        self.target = 0  # version this epoch waits for; 0 when no epoch runs
        self.confirmed = 0  # bitset of members whose digest reached ``target``
        self.ready = 0  # every member reached this version (last completed epoch)


class TombstoneCollector(Generic[K]):
    """Tracks tombstones by origin and decides when each can be forgotten.

    ``K`` is the core's store key; ``is_current(origin, version, key)`` (passed to
    ``collect``) says whether that tombstone is still the record stored there.
    """

    __slots__ = ("_all", "_idle_below", "_origins", "_positions", "_seq")

    def __init__(self) -> None:
        self._origins: dict[bytes, _Origin[K]] = {}
        self._positions: dict[bytes, int] = {}  # member -> the position of its bit
        self._all = 0  # every member's bit set
        self._seq = 0  # tie-breaker: store keys of different types are never compared
        # ``collect`` with a cutoff below this has nothing to do; 0: it must look.
        self._idle_below = 0

    def __bool__(self) -> bool:
        return bool(self._origins)

    def __len__(self) -> int:
        return sum(len(state.heap) - state.stale for state in self._origins.values())

    def set_members(self, members: Sequence[bytes]) -> None:
        """The live members changed: restart every confirmation epoch."""
        # Positions, not the bits themselves: built in C, and a member's bit is
        # computed when it is needed (a large cluster changes views often).
        self._positions = dict(zip(members, range(len(members)), strict=True))
        self._all = (1 << len(members)) - 1
        for state in self._origins.values():
            state.ready = state.confirmed = 0
            state.target = state.highest
        self._idle_below = 0

    def track(self, origin: bytes, version: int, key: K, timestamp: int) -> None:
        """A tombstone written at ``timestamp`` was stored under ``key``."""
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _Origin()
        self._seq += 1
        heapq.heappush(state.heap, (version, self._seq, key, timestamp))
        if version > state.highest:
            state.highest = version
        if state.target <= state.ready:
            state.target = state.highest
        self._idle_below = 0

    def untrack(self, origin: bytes) -> None:
        """A tracked tombstone of ``origin`` was overwritten by a later write."""
        state = self._origins.get(origin)
        if state is not None:
            state.stale += 1
            self._idle_below = 0

    def note_digest(self, member: bytes, versions: Mapping[bytes, int]) -> None:
        """``member`` sent its full digest."""
        position = self._positions.get(member)
        if position is None or not self._origins:
            return
        bit = 1 << position
        # Every digest received comes here, and in a large cluster nearly every one is
        # from a member not yet counted: ``_confirm`` inlined.
        get = versions.get
        everyone = self._all
        for origin, state in self._origins.items():
            target = state.target
            if target > state.ready and get(origin, 0) >= target:
                confirmed = state.confirmed | bit
                if confirmed == everyone:
                    self._complete(state)
                else:
                    state.confirmed = confirmed

    def note_versions(self, member: bytes, pairs: Iterable[tuple[bytes, int]]) -> None:
        """``member`` reported its versions for some origins."""
        position = self._positions.get(member)
        if position is None or not self._origins:
            return
        bit = 1 << position
        for origin, version in pairs:
            state = self._origins.get(origin)
            if state is not None and state.target > state.ready and version >= state.target:
                self._confirm(state, bit)

    def collect(self, is_current: Callable[[bytes, int, K], bool], cutoff: int) -> list[K]:
        """Pop and return the store keys of confirmed tombstones written at or before
        the ``cutoff`` timestamp."""
        collected: list[K] = []
        if cutoff < self._idle_below:
            return collected
        idle_below = _NEVER
        for origin in list(self._origins):
            state = self._origins[origin]
            heap = state.heap
            if state.stale or (heap[0][0] <= state.ready and heap[0][3] <= cutoff):
                self._prune(origin, state, is_current)
                while heap and heap[0][0] <= state.ready and heap[0][3] <= cutoff:
                    version, _, key, _ = heapq.heappop(heap)
                    if is_current(origin, version, key):
                        collected.append(key)
                    else:
                        state.stale = max(0, state.stale - 1)
                if not heap:
                    del self._origins[origin]
                    continue
            # Without stale entries every one is current. A confirmed top goes once
            # the cutoff reaches its timestamp; unconfirmed ones wait for an epoch.
            if heap[0][0] <= state.ready:
                idle_below = min(idle_below, heap[0][3])
        self._idle_below = idle_below
        return collected

    def _confirm(self, state: _Origin[K], bit: int) -> None:
        state.confirmed |= bit
        if state.confirmed == self._all:
            self._complete(state)

    def _complete(self, state: _Origin[K]) -> None:
        """Every member confirmed the epoch's target: start the next epoch."""
        state.ready = state.target
        state.confirmed = 0
        self._idle_below = 0
        # Deletes that arrived during the epoch wait for the next one.
        state.target = state.highest if state.highest > state.ready else state.ready

    @staticmethod
    def _prune(
        origin: bytes, state: _Origin[K], is_current: Callable[[bytes, int, K], bool]
    ) -> None:
        heap = state.heap
        if state.stale >= _REBUILD_STALE_MIN and 2 * state.stale > len(heap):
            heap[:] = [item for item in heap if is_current(origin, item[0], item[2])]
            heapq.heapify(heap)
            state.stale = 0
        while heap and not is_current(origin, heap[0][0], heap[0][2]):
            heapq.heappop(heap)
            state.stale = max(0, state.stale - 1)
