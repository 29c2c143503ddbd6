"""Latencies a service reports in its status: a histogram since start, plus the
percentiles of the latest samples.

The histogram's counts only grow, so a reader can subtract two readings to get
the latencies of what happened in between, and add several nodes' readings
together: that is how ``scripts/bench_auction.py`` measures one phase of a run
across a cluster. Percentiles of a histogram are bucket upper bounds (never
below the true value).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping

__all__ = ["BUCKET_EDGES_MS", "LatencyRecord", "histogram_percentile"]

BUCKET_EDGES_MS: tuple[float, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 25, 30, 40, 50, 60, 80, 100,
    150, 200, 300, 500, 1000, 2000, 5000, 10_000, math.inf,
)
"""Upper bounds (ms) of the histogram's buckets; the last catches everything."""


class LatencyRecord:
    """Latencies in milliseconds: a cumulative histogram and the latest ``keep``."""

    def __init__(self, keep: int = 4096) -> None:
        self._counts = [0] * len(BUCKET_EDGES_MS)
        self._latest: deque[float] = deque(maxlen=keep)

    def add(self, ms: float) -> None:
        """Record one latency."""
        self._counts[bisect.bisect_left(BUCKET_EDGES_MS, ms)] += 1
        self._latest.append(ms)

    def histogram(self) -> dict[str, int]:
        """Bucket upper bound as text -> latencies in it since start (empty ones left out)."""
        return {_edge_name(edge): count
                for edge, count in zip(BUCKET_EDGES_MS, self._counts, strict=True) if count}

    def status(self) -> dict[str, object]:
        """``samples`` and ``p50``/``p99``/``max`` of the latest, ``histogram``
        (bucket upper bound as text -> count since start, empty buckets left out)."""
        ordered = sorted(self._latest)

        def at(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)

        return {
            "samples": len(ordered),
            "p50": at(0.5),
            "p99": at(0.99),
            "max": at(1.0),
            "histogram": self.histogram(),
        }


def _edge_name(edge: float) -> str:
    return "inf" if math.isinf(edge) else f"{edge:g}"


def histogram_percentile(histograms: Iterable[Mapping[str, int]], q: float) -> float | None:
    """The ``q`` quantile (0..1) of several ``status()["histogram"]`` readings added
    up: the upper bound of the bucket it falls in (None when they are empty)."""
    counts = dict.fromkeys(BUCKET_EDGES_MS, 0)
    for histogram in histograms:
        for name, count in histogram.items():
            counts[math.inf if name == "inf" else float(name)] += count
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for edge in BUCKET_EDGES_MS:
        seen += counts[edge]
        if seen >= rank:
            return edge
    return math.inf
