"""Lifeguard local health awareness: how much this node trusts its own timing.

How this works: a node that is itself slow (overloaded CPU, a congested link)
misses acks that were sent in time and wrongly suspects healthy peers. So it
keeps a health score, 0 when healthy: failed probes, expected nacks that never
came and suspicions about itself it had to refute each add 1; every successful
probe takes 1 away. The score stays within 0..cap. Probe interval and probe
timeout are multiplied by ``score + 1``: a struggling node probes less often and
waits longer before it accuses anyone.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    """The local health score and the timeouts it stretches."""

    __slots__ = ("_max_score", "_score")

    def __init__(self, max_score: int) -> None:
        assert max_score >= 0, max_score
        self._max_score = max_score
        self._score = 0

    @property
    def score(self) -> int:
        """0 when healthy, up to the cap when this node misses much of what it expects."""
        return self._score

    def apply(self, delta: int) -> int:
        """Move the score by ``delta`` within 0..cap; return the new score."""
        self._score = min(self._max_score, max(0, self._score + delta))
        return self._score

    def scale(self, seconds: float) -> float:
        """``seconds`` stretched by the current health: ``seconds * (score + 1)``."""
        return seconds * (self._score + 1)
