"""Tuning of SWIM membership: every timing and bound, with its trade-off.

How this works: one frozen value, checked once at construction. Times are
seconds of the driver's monotonic clock; the probe interval and probe timeout
are the healthy-node values, which Lifeguard's local health awareness stretches
by ``health_score + 1`` while this node itself is struggling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from mesh.membership.messages import ENTRIES_MAX

__all__ = ["MembershipSettings"]


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    """Timings and bounds of one membership core. Invalid values raise ``ValueError``."""

    probe_interval_s: float = 1.0
    """Time between two probes of this node. Shorter finds failures sooner and
    costs one ping (plus piggybacked gossip) per interval."""

    probe_timeout_s: float = 0.5
    """How long a direct ping waits for its ack before helpers are asked to
    probe indirectly. Must exceed a round trip and stay below the interval.
    Helpers nack a failed indirect ping after 80% of it; a probe's verdict comes
    at the end of the interval or three timeouts after the ping, if later."""

    indirect_probes: int = 3
    """Helpers (k) asked to ping a target that missed its direct ack; also the
    number of independent confirmations that bring a suspicion to its shortest
    timeout. More helpers mean fewer false suspicions on lossy links and more
    messages per failed probe. 0 disables indirect probing."""

    suspicion_min_multiplier: float = 4.0
    """Shortest suspicion timeout = this * max(1, log10(n)) * probe_interval_s,
    reached with enough confirmations. Lower declares deaths sooner and gives a
    wrongly suspected node less time to refute."""

    suspicion_max_multiplier: float = 6.0
    """Longest suspicion timeout (no confirmation) = this * the shortest one."""

    awareness_max: int = 8
    """Cap of this node's health score (Lifeguard local health awareness). Probe
    interval and timeout are multiplied by score + 1, so at most by
    awareness_max + 1. 0 disables local health awareness."""

    retransmit_multiplier: int = 4
    """Each membership update is piggybacked at most this * ceil(log10(n + 1))
    times. Higher spreads updates more reliably on lossy links, at the cost of
    room in every message."""

    piggyback_updates_max: int = 8
    """Updates carried by one ping, ack, ping-req or nack."""

    push_pull_interval_s: float = 30.0
    """Period of a full-table exchange with one random live member (and with
    seeds and one dead member while they are not alive, which reunites a cluster
    after a partition). Shorter repairs divergence sooner; each sync carries the
    whole table."""

    join_retry_interval_s: float = 1.0
    """While no member is live, the seeds are contacted again this often."""

    dead_forget_after_s: float = 120.0
    """Dead and left members are kept this long (their address stays reachable for
    reunification), then removed with a FORGOTTEN event."""

    members_max: int = 4096
    """Most members kept (excluding this node). Updates about new members beyond it
    are ignored and counted in ``members_ignored_over_limit``."""

    sync_members_max: int = 4096
    """Most entries in one push-pull message (this node included); a larger table
    is sampled. Keep entries * ~100 bytes under the driver's envelope size limit."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{field.name} ({value}) must be a finite number")
        self._check_timings()
        self._check_counts()

    def _check_timings(self) -> None:
        for name in (
            "probe_interval_s",
            "probe_timeout_s",
            "push_pull_interval_s",
            "join_retry_interval_s",
            "dead_forget_after_s",
            "suspicion_min_multiplier",
        ):
            _require(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ValueError(
                f"probe_timeout_s ({self.probe_timeout_s}) must be less than "
                f"probe_interval_s ({self.probe_interval_s})"
            )
        _require(
            self.suspicion_max_multiplier >= 1,
            "suspicion_max_multiplier",
            self.suspicion_max_multiplier,
            "must be at least 1",
        )

    def _check_counts(self) -> None:
        _require(self.indirect_probes >= 0, "indirect_probes", self.indirect_probes, "must be >= 0")
        _require(self.awareness_max >= 0, "awareness_max", self.awareness_max, "must be >= 0")
        _require(
            self.retransmit_multiplier >= 1,
            "retransmit_multiplier",
            self.retransmit_multiplier,
            "must be at least 1",
        )
        _require(
            1 <= self.piggyback_updates_max <= ENTRIES_MAX,
            "piggyback_updates_max",
            self.piggyback_updates_max,
            f"must be between 1 and {ENTRIES_MAX}",
        )
        _require(self.members_max >= 1, "members_max", self.members_max, "must be at least 1")
        _require(
            1 <= self.sync_members_max <= ENTRIES_MAX,
            "sync_members_max",
            self.sync_members_max,
            f"must be between 1 and {ENTRIES_MAX}",
        )


def _require(ok: bool, name: str, value: object, rule: str) -> None:
    if not ok:
        raise ValueError(f"{name} ({value}) {rule}")
