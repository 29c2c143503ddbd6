"""scripts/bench_raft.py in a short form: it runs, and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_raft.py"


@pytest.mark.parametrize("client_gc_threshold", [0, 50_000])
def test_the_raft_benchmark_runs_and_reports_every_figure(client_gc_threshold: int) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "1", "--outstanding", "64",
         "--failovers", "1", "--client-gc-threshold", str(client_gc_threshold), "--json"],
        capture_output=True, text=True, timeout=220,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["system"] == "agentmesh"
    assert report["writes_per_s"] > 0
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert len(report["failover_ms_all"]) == 1 and report["failover_ms_p50"] > 0
    assert report["client_gc_young_threshold"] == client_gc_threshold
    voters = report["counters"]
    assert len(voters) == 3 and sum(c["leader_changes"] for c in voters.values()) >= 2
