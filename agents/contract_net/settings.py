"""Limits and timings of the contract-net cores, each with its trade-off.

Every limit is finite: a table that is full refuses (and counts) rather than
grows. Times are in seconds of the driver's monotonic clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agents.contract_net.messages import BATCH_TASKS_MAX
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
    """Wait before the second round; each further round waits twice as long."""
    busy_backoff_s: float = 0.1
    """Wait before calling again after a round in which no one bid but some capable
    contractor refused as busy: such a round does not count towards
    ``no_bid_rounds_max`` (the task queues for a free slot rather than failing).
    Each further busy round waits twice as long, up to ``busy_backoff_max_s``."""
    busy_backoff_max_s: float = 2.0
    """Longest wait between busy rounds: a freed slot is found at most this late.
    Shorter finds it sooner but sends more calls while every slot is taken."""
    busy_wait_max_s: float = 600.0
    """How long an auction may wait for a busy contractor before giving up
    (``NoBids``, which fails the attempt) as if no one could do the task."""
    progress_check_s: float = 2.0
    """How often the awarded contractor of a running task is asked whether it still
    runs it (``cnet.query``): an award whose accept or result message was lost is
    found this long after, at the latest."""
    progress_unanswered_max: int = 3
    """Queries in a row the contractor may leave unanswered before the attempt is
    given up (its node lease may still be alive while it cannot reach us)."""
    window_initial: int = 16
    """Auctions of one capability collecting bids at once before the manager has
    learnt better (see ``manager``: the window grows while rounds draw bids and
    halves when all invitees are busy)."""
    window_max: int = 1024
    """Largest window: bounds the calls for proposals one manager has out at once
    for one capability."""
    batch_tasks_max: int = 16
    """Most auctions one batch of calls for proposals holds (the auctions started
    between two sends go out as batches and are awarded jointly, see ``manager``).
    Larger batches place more tasks at their best; the joint award's cost grows
    with the batch's tasks squared times its bidders' places."""
    weights: ScoringWeights = field(default_factory=ScoringWeights)
    """Weights of the default scoring function (a custom one may be injected)."""

    def __post_init__(self) -> None:
        _positive_int(self.auctions_max, "auctions_max")
        _positive_int(self.bids_per_auction_max, "bids_per_auction_max")
        _positive_int(self.no_bid_rounds_max, "no_bid_rounds_max")
        _positive_int(self.window_initial, "window_initial")
        _positive_int(self.progress_unanswered_max, "progress_unanswered_max")
        _positive_seconds(self.progress_check_s, "progress_check_s", 3600.0)
        _positive_int(self.window_max, "window_max")
        _positive_int(self.batch_tasks_max, "batch_tasks_max")
        if self.batch_tasks_max > BATCH_TASKS_MAX:
            raise ConfigError(f"batch_tasks_max ({self.batch_tasks_max}) must be at most "
                              f"{BATCH_TASKS_MAX}")
        if self.window_max < self.window_initial:
            raise ConfigError("window_max must be at least window_initial")
        _positive_seconds(self.bid_window_s, "bid_window_s", 3600.0)
        _positive_seconds(self.no_bid_backoff_s, "no_bid_backoff_s", 3600.0)
        _positive_seconds(self.busy_backoff_s, "busy_backoff_s", 3600.0)
        _positive_seconds(self.busy_backoff_max_s, "busy_backoff_max_s", 3600.0)
        _positive_seconds(self.busy_wait_max_s, "busy_wait_max_s", 86400.0)
        if self.busy_backoff_max_s < self.busy_backoff_s:
            raise ConfigError("busy_backoff_max_s must be at least busy_backoff_s")


@dataclass(frozen=True, slots=True)
class ContractorSettings:
    """How a contractor answers calls for proposals."""

    tasks_running_max: int = 4
    """Concurrency limit: tasks running at once. Outstanding bids count against it
    too, so winning every bid never overcommits; a busy contractor refuses."""
    offers_max: int = 256
    """Outstanding bids remembered at once (bounded even if the running limit is
    raised); beyond it the contractor refuses."""
    results_kept_max: int = 1024
    """Results of finished tasks kept to answer a manager's progress query again
    (the first ``cnet.inform`` may have been lost)."""
    results_kept_bytes_max: int = 16 * 1024 * 1024
    """Bound on the bytes of the results kept; the oldest go first."""
    award_grace_s: float = 5.0
    """How long after the bid window a bid is held open for the award: the award
    needs a ledger write, so it comes a little after the window. An accept for a
    bid already forgotten is answered with a failure (the task is re-auctioned)."""

    def __post_init__(self) -> None:
        _positive_int(self.tasks_running_max, "tasks_running_max")
        _positive_int(self.offers_max, "offers_max")
        _positive_int(self.results_kept_max, "results_kept_max")
        if type(self.results_kept_bytes_max) is not int or self.results_kept_bytes_max < 0:
            raise ConfigError("results_kept_bytes_max must be an integer >= 0")
        _positive_seconds(self.award_grace_s, "award_grace_s", 3600.0)


def _positive_int(value: object, name: str) -> None:
    if type(value) is not int or not 1 <= value <= 1_000_000:
        raise ConfigError(f"{name} ({value!r}) must be an integer from 1 to 1000000")


def _positive_seconds(value: object, name: str, high: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 < value <= high:
        raise ConfigError(f"{name} ({value!r}) must be more than 0 and at most {high} seconds")
