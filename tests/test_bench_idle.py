"""scripts/bench_idle.py in a short form: it runs and reports a plausible figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_idle.py"


def test_the_idle_benchmark_reports_the_cpu_of_a_quiet_mesh() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", "3", "--settle", "1", "--seconds", "1",
         "--json"],
        capture_output=True, text=True, timeout=160,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["nodes"] == 3 and report["window_s"] >= 1
    # Running nodes always spend something (heartbeats, gossip); three idle nodes
    # cannot use more than every core there is.
    assert 0 < report["idle_cpu_pct_of_one_core"] <= 100 * report["cpus"]
    assert report["idle_cpu_pct_of_one_core_per_node"] == pytest.approx(
        report["idle_cpu_pct_of_one_core"] / 3, abs=0.1)


def test_the_idle_benchmark_refuses_an_empty_window() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "0"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--seconds" in result.stderr
