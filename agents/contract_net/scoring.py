"""Choosing a winner among bids: a pluggable score, lower is better.

How this works: the manager turns every ``cnet.propose`` into a ``Bid`` and, at
decision time, ranks the bids by ``score(bid, now)`` and then by node id, so two
bids with equal scores always rank the same way on every run. A scoring function
is any ``ScoreFunction``; the default (``weighted_score``) is a weighted sum of

- cost, as the contractor quoted it;
- estimated finish time, ``now + duration_s + load * duration_s``: the task's own
  duration plus the queueing the contractor's load implies (load is work in hand
  per task slot, so ``load * duration_s`` guesses the wait for a free slot);
- load itself, to spread work even when estimates tie;
- doubt, ``1 - confidence`` (weight 0 by default).

A score that is not a finite number (a plugged function's bug, or overflow)
ranks last rather than poisoning the order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mesh.errors import ConfigError

__all__ = ["Bid", "ScoreFunction", "ScoringWeights", "rank_bids", "weighted_score"]


@dataclass(frozen=True, slots=True)
class Bid:
    """One contractor's proposal for one task epoch."""

    node_id: bytes
    cost: float
    duration_s: float
    """Estimated run time once started, in seconds."""
    load: float
    """Work in hand per task slot (0 idle, 1 full)."""
    confidence: float
    """0 to 1: how sure the contractor is that it can do the task."""
    lease_id: int | None = None
    """The lease the contractor offered to run the task under (not scored)."""


ScoreFunction = Callable[[Bid, float], float]
"""``score(bid, now) -> float``; lower is better. Must be deterministic."""


@dataclass(frozen=True, slots=True)
class ScoringWeights:
    """Weights of the default score; each is a finite number >= 0."""

    cost: float = 1.0
    """Per unit of quoted cost."""
    finish_time: float = 1.0
    """Per second of estimated finish time (now + duration + implied queueing)."""
    load: float = 1.0
    """Per unit of load (work per task slot)."""
    doubt: float = 0.0
    """Per unit of ``1 - confidence``; raise it to prefer confident bidders."""

    def __post_init__(self) -> None:
        for name in ("cost", "finish_time", "load", "doubt"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"scoring weight {name} ({value!r}) must be a finite number >= 0")


def weighted_score(weights: ScoringWeights) -> ScoreFunction:
    """The default score with ``weights``: see the module docstring."""

    def score(bid: Bid, now: float) -> float:
        finish = now + bid.duration_s * (1.0 + bid.load)
        return (
            weights.cost * bid.cost
            + weights.finish_time * finish
            + weights.load * bid.load
            + weights.doubt * (1.0 - bid.confidence)
        )

    return score


def rank_bids(bids: Iterable[Bid], now: float, score: ScoreFunction) -> list[Bid]:
    """``bids`` best first: by score, then by node id (a deterministic tie-break)."""

    def key(bid: Bid) -> tuple[float, bytes]:
        value = score(bid, now)
        return (value if math.isfinite(value) else math.inf, bid.node_id)

    return sorted(bids, key=key)
