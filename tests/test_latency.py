"""The latency record services report in their status, and its percentiles."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from agents.latency import BUCKET_EDGES_MS, LatencyRecord, histogram_percentile


def test_the_status_has_exact_latest_percentiles_and_a_cumulative_histogram() -> None:
    record = LatencyRecord(keep=3)
    assert record.status() == {"samples": 0, "p50": None, "p99": None, "max": None,
                               "histogram": {}}
    for ms in (0.5, 3.2, 3.9, 250.0):
        record.add(ms)
    status = record.status()
    assert (status["samples"], status["p50"], status["max"]) == (3, 3.9, 250.0)  # latest 3
    assert status["histogram"] == {"1": 1, "4": 2, "300": 1}  # all four, since start


def test_histograms_of_two_readings_and_two_nodes_combine() -> None:
    early, late, other = LatencyRecord(), LatencyRecord(), LatencyRecord()
    for ms in (5.0, 5.0):
        early.add(ms)
        late.add(ms)
    for ms in (11.0, 11.0, 11.0):
        late.add(ms)
    other.add(19.5)
    before, after = early.histogram(), late.histogram()
    phase = {edge: count - before.get(edge, 0) for edge, count in after.items()}
    assert histogram_percentile([phase, other.histogram()], 0.5) == 12
    assert histogram_percentile([phase, other.histogram()], 1.0) == 20
    assert histogram_percentile([], 0.5) is None


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1),
       st.floats(min_value=0.01, max_value=1.0))
def test_a_histogram_percentile_is_never_below_the_true_one(values: list[float],
                                                             q: float) -> None:
    record = LatencyRecord()
    for value in values:
        record.add(value)
    bound = histogram_percentile([record.histogram()], q)
    ordered = sorted(values)
    true = ordered[max(1, math.ceil(q * len(ordered))) - 1]
    assert bound is not None and bound >= true
    assert bound in BUCKET_EDGES_MS
