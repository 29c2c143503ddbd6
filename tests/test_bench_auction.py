"""scripts/bench_auction.py in a short form: it runs, and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)


def test_the_auction_benchmark_runs_and_reports_every_figure() -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_auction.py"
    result = subprocess.run(
        [sys.executable, str(script), "--nodes", "3", "--burst", "30", "--rate", "20",
         "--paced-seconds", "1", "--json"],
        capture_output=True, text=True, timeout=220,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    for phase, tasks in (("burst", 30), ("paced", 20)):
        figures = report[phase]
        assert figures["done"] == tasks and figures["unfinished"] == 0, figures
        assert figures["wrong_or_failed"] == 0
        assert figures["auction_samples"] >= tasks  # a re-auction would add one
        assert 0 < figures["auction_p50_ms_at_most"] <= figures["auction_p99_ms_at_most"]
        assert figures["decision_p50_ms_at_most"] <= figures["auction_p50_ms_at_most"]
    assert report["burst"]["tasks_per_s"] > 0
