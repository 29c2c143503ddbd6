"""Limits and timings of the contract-net cores, each with its trade-off.

Every limit is finite: a table that is full refuses (and counts) rather than
grows. Times are in seconds of the driver's monotonic clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agents.contract_net.scoring import ScoringWeights
from mesh.errors import ConfigError

__all__ = ["ContractorSettings", "ManagerSettings"]


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    """How a manager runs its auctions."""

    auctions_max: int = 1024
    """Tasks this manager tracks at once (collecting bids, backing off, awaiting the
    ledger or the result). More memory and tick work against more concurrent tasks."""
    bids_per_auction_max: int = 64
    """Candidates invited per auction (and so answers kept). More candidates find a
    better bid but cost a CFP each; extra candidates are dropped and counted."""
    bid_window_s: float = 2.0
    """How long bids are awaited after the CFP, unless every invitee answers sooner.
    Longer waits for slow contractors; shorter awards sooner."""
    no_bid_rounds_max: int = 3
    """Auction rounds at one epoch without a single bid before giving up (then a
    ``NoBids`` event tells the driver to fail the attempt in the ledger)."""
    no_bid_backoff_s: float = 1.0
    """Wait before the second round; each further round waits twice as long, so
    contractors that were busy get time to free a slot."""
    weights: ScoringWeights = field(default_factory=ScoringWeights)
    """Weights of the default scoring function (a custom one may be injected)."""

    def __post_init__(self) -> None:
        _positive_int(self.auctions_max, "auctions_max")
        _positive_int(self.bids_per_auction_max, "bids_per_auction_max")
        _positive_int(self.no_bid_rounds_max, "no_bid_rounds_max")
        _positive_seconds(self.bid_window_s, "bid_window_s", 3600.0)
        _positive_seconds(self.no_bid_backoff_s, "no_bid_backoff_s", 3600.0)


@dataclass(frozen=True, slots=True)
class ContractorSettings:
    """How a contractor answers calls for proposals."""

    tasks_running_max: int = 4
    """Concurrency limit: tasks running at once. Outstanding bids count against it
    too, so winning every bid never overcommits; a busy contractor refuses."""
    offers_max: int = 256
    """Outstanding bids remembered at once (bounded even if the running limit is
    raised); beyond it the contractor refuses."""
    award_grace_s: float = 5.0
    """How long after the bid window a bid is held open for the award: the award
    needs a ledger write, so it comes a little after the window. An accept for a
    bid already forgotten is answered with a failure (the task is re-auctioned)."""

    def __post_init__(self) -> None:
        _positive_int(self.tasks_running_max, "tasks_running_max")
        _positive_int(self.offers_max, "offers_max")
        _positive_seconds(self.award_grace_s, "award_grace_s", 3600.0)


def _positive_int(value: object, name: str) -> None:
    if type(value) is not int or not 1 <= value <= 1_000_000:
        raise ConfigError(f"{name} ({value!r}) must be an integer from 1 to 1000000")


def _positive_seconds(value: object, name: str, high: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 < value <= high:
        raise ConfigError(f"{name} ({value!r}) must be more than 0 and at most {high} seconds")
