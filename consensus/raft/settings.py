"""Raft settings: every knob of the Raft core, its default and its trade-off.

How this works: one frozen dataclass, validated on construction. A bad value
raises ``ValueError`` naming the field and the value. Time is counted in ticks:
the driver calls ``tick(now)`` with monotonic seconds and the core derives how
many ticks of ``tick_interval_s`` have elapsed, so timeouts do not depend on how
often the driver happens to call. Byte limits count an entry as its data plus
``types.ENTRY_OVERHEAD_BYTES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from consensus.raft.messages import (
    CHUNK_BYTES_WIRE_MAX,
    ENTRIES_WIRE_MAX,
    ENTRY_BYTES_WIRE_MAX,
    SNAPSHOT_BYTES_WIRE_MAX,
)

__all__ = ["RaftSettings"]


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """Tuning and limits of one Raft core (defaults suit 3 or 5 voters on a LAN)."""

    election_timeout_ticks: int = 10
    """A follower that hears nothing from a leader for a random time in
    ``[T, 2T)`` ticks campaigns. Longer survives pauses and slow links without
    needless elections; shorter fails over sooner. Also the check-quorum period."""
    heartbeat_interval_ticks: int = 1
    """Ticks between leader heartbeats; must be well below the election timeout so
    that a few lost heartbeats do not trigger an election."""
    tick_interval_s: float = 0.1
    """Seconds per tick. With the defaults: heartbeats every 0.1 s, elections after
    1 to 2 s of silence."""
    pre_vote: bool = True
    """Run a pre-vote before a real election, so that a node cut off from the
    cluster does not raise its term and depose a healthy leader when it returns."""
    check_quorum: bool = True
    """A leader steps down when it has not heard from a quorum within an election
    timeout, and followers that heard from a leader within that time ignore vote
    requests (leader stickiness). Required by ``lease_read``."""
    max_entries_per_append: int = 4096
    """Most entries in one append message. Larger batches cost fewer messages and
    signatures; smaller ones bound the work one message causes."""
    max_bytes_per_append: int = 512 * 1024
    """Most entry bytes in one append message (at least one entry is always sent),
    and the largest proposal accepted. Keep it below the envelope size limit."""
    max_inflight_appends: int = 256
    """Appends sent to one follower and not yet acknowledged (pipelining). More
    hides more latency; each one may cost a resend after a loss."""
    max_uncommitted_bytes: int = 64 * 1024 * 1024
    """Bytes of proposals the leader holds uncommitted; ``propose`` returns None
    (counted as ``proposals_dropped_uncommitted``) beyond it, so an overloaded or
    partitioned leader does not grow its log without bound. A proposal is always
    accepted when nothing is uncommitted."""
    max_apply_bytes_per_ready: int = 16 * 1024 * 1024
    """Most committed entry bytes handed out in one ``Ready`` (at least one entry);
    the rest follow in the next ones."""
    snapshot_chunk_bytes: int = 512 * 1024
    """Bytes of snapshot data per chunk sent to a follower that needs the snapshot."""
    max_snapshot_bytes: int = 1024 * 1024 * 1024
    """Largest snapshot a follower assembles in memory; a larger one is refused
    (counted as ``snapshots_refused``)."""
    max_pending_reads: int = 4096
    """Linearizable reads the leader holds awaiting confirmation; more are dropped
    (counted as ``reads_dropped``) and the caller's timeout answers them."""
    max_learner_lag_entries: int = 1000
    """A learner is promoted to voter only when its log is within this many entries
    of the leader's, so that promoting it does not stall commits while it catches up."""
    announce_commit_at_once: bool = False
    """Send a newly advanced commit index to the followers at once, in an append
    of its own. Off (the default), it rides on the next append or heartbeat
    instead: at low load that saves an append and its acknowledgement per
    follower per write, and followers apply up to one heartbeat later (a
    follower serving a linearizable read is told at once regardless)."""
    lease_read: bool = False
    """Serve reads from the leader's commit index without a heartbeat round, on the
    strength of check-quorum's lease. Faster, but correct only if clocks drift by
    less than the election timeout between nodes; enable only where that holds."""

    def __post_init__(self) -> None:
        _check_int("heartbeat_interval_ticks", self.heartbeat_interval_ticks, 1, 1_000_000)
        _check_int("election_timeout_ticks", self.election_timeout_ticks, 2, 1_000_000)
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ValueError(
                f"election_timeout_ticks ({self.election_timeout_ticks}) must exceed "
                f"heartbeat_interval_ticks ({self.heartbeat_interval_ticks})"
            )
        if not (
            isinstance(self.tick_interval_s, int | float)
            and not isinstance(self.tick_interval_s, bool)
            and math.isfinite(self.tick_interval_s)
            and self.tick_interval_s > 0
        ):
            raise ValueError(
                f"tick_interval_s ({self.tick_interval_s!r}) must be a positive number"
            )
        for name in ("pre_vote", "check_quorum", "announce_commit_at_once", "lease_read"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} ({getattr(self, name)!r}) must be a bool")
        if self.lease_read and not self.check_quorum:
            raise ValueError("lease_read (True) requires check_quorum (False)")
        _check_int("max_entries_per_append", self.max_entries_per_append, 1, ENTRIES_WIRE_MAX)
        _check_int("max_bytes_per_append", self.max_bytes_per_append, 1, ENTRY_BYTES_WIRE_MAX)
        _check_int("max_inflight_appends", self.max_inflight_appends, 1, 1_000_000)
        _check_int("max_uncommitted_bytes", self.max_uncommitted_bytes, 1, 1 << 50)
        _check_int("max_apply_bytes_per_ready", self.max_apply_bytes_per_ready, 1, 1 << 50)
        _check_int("snapshot_chunk_bytes", self.snapshot_chunk_bytes, 1, CHUNK_BYTES_WIRE_MAX)
        _check_int("max_snapshot_bytes", self.max_snapshot_bytes, 0, SNAPSHOT_BYTES_WIRE_MAX)
        _check_int("max_pending_reads", self.max_pending_reads, 1, 10_000_000)
        _check_int("max_learner_lag_entries", self.max_learner_lag_entries, 0, 1 << 50)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} ({value!r}) must be an integer from {low} to {high}")
