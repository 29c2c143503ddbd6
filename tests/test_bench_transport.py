"""The transport benchmark runs end to end in its short form and loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_transport.py"
KEYS = (
    "raw_zmq_msgs_per_s",
    "crypto_bound_msgs_per_s",
    "mesh_msgs_per_s",
    "mesh_batched_msgs_per_s",
    "mesh_rtt_p50_ms",
    "mesh_rtt_p99_ms",
    "sodium_verify_msgs_per_s",
)


@pytest.mark.parametrize("verify_threads", [1, 2])
def test_short_benchmark_reports_every_figure_and_delivers_every_message(
    verify_threads: int,
) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "0.3", "--verify-threads",
         str(verify_threads), "--json"],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verify_threads"] == verify_threads
    for key in KEYS:
        assert report[key] > 0, (key, report)
    assert report["mesh_rtt_p50_ms"] <= report["mesh_rtt_p99_ms"]
    # Awaited sends wait for room instead of dropping: every payload arrives.
    assert report["mesh_msgs_received"] == report["mesh_msgs_sent"] > 0
    assert report["mesh_batched_msgs_received"] == report["mesh_batched_msgs_sent"] > 0
    # One signature per batch instead of per message is the point of batching.
    assert report["mesh_batched_msgs_per_s"] > report["mesh_msgs_per_s"]
    assert set(report["ratios"]) >= {"mesh_vs_min_raw_crypto", "batched_vs_crypto_bound"}


@pytest.mark.parametrize(("option", "value", "complaint"), [
    ("--seconds", "0", "--seconds must be positive"),
    ("--verify-threads", "0", "--verify-threads must be at least 1"),
])
def test_benchmark_refuses_a_bad_option(option: str, value: str, complaint: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), option, value],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert complaint in result.stderr
