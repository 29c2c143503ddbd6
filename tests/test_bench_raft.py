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
         "--failovers", "1", "--client-gc-threshold", str(client_gc_threshold), "--floor",
         "--json"],
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
    (floor,) = report["peers"]
    assert floor["system"] == "floor" and floor["auth"] == "ed25519"
    assert floor["writes_per_s"] > 0 and 0 < floor["p50_ms"] <= floor["p99_ms"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--seconds", "0", "--seconds (0.0) must be positive"),
        ("--seconds", "nan", "--seconds (nan) must be positive"),
        ("--outstanding", "0", "--outstanding (0) must be at least 1"),
        ("--keys", "-3", "--keys (-3) must be at least 1"),
        ("--value-bytes", "0", "--value-bytes (0) must be at least 1"),
        ("--failovers", "-1", "--failovers (-1) must not be negative"),
    ],
)
def test_bad_options_exit_2_naming_the_value(option: str, value: str, message: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), option, value],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_value_the_cluster_refuses_is_named_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "1", "--outstanding", "2",
         "--failovers", "0", "--value-bytes", "1000000"],
        capture_output=True, text=True, timeout=220,
    )
    assert result.returncode == 2, result.stderr
    assert "the cluster refused the writes" in result.stderr
    assert "raft.max_bytes_per_append" in result.stderr and "Traceback" not in result.stderr
