"""Idle cost: the CPU a mesh uses when nobody asks it for anything.

Starts ``agentmesh up --nodes N --agents demo`` (3 Raft voters, fsync on) in a
temporary directory, lets it settle, then reads every node process's CPU time
(``/proc/<pid>/stat``: user + system) before and after a quiet window. What it
spends there is heartbeats, gossip, membership probes, lease renewals and the
contract-net scans: the floor under every other figure on a shared machine.

    python scripts/bench_idle.py [--nodes 5] [--settle 5] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from mesh.errors import ClusterError
from mesh.up_process import running_up

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` so far (seconds)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (after the name)
    return total / _CLOCK_TICKS_PER_S


def measure(nodes: int, settle_s: float, seconds: float) -> dict[str, float]:
    """Start the mesh, wait ``settle_s``, measure ``seconds``; the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        with running_up(Path(tmp) / "mesh", "--nodes", str(nodes), "--agents", "demo") as up:
            time.sleep(settle_s)  # a benchmark's quiet window, not synchronisation
            before, started = cpu_seconds(up.pids), time.monotonic()
            time.sleep(seconds)
            spent, elapsed = cpu_seconds(up.pids) - before, time.monotonic() - started
    return {
        "idle_cpu_pct_of_one_core": round(100 * spent / elapsed, 1),
        "idle_cpu_pct_of_one_core_per_node": round(100 * spent / elapsed / nodes, 1),
        "window_s": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to let the mesh settle first (default 5)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured window (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.seconds <= 0 or args.settle < 0:
        parser.error("--nodes must be at least 1, --seconds positive, --settle not negative")
    try:
        figures = measure(args.nodes, args.settle, args.seconds)
    except ClusterError as exc:
        print(exc, file=sys.stderr)
        return 2
    report = {"nodes": args.nodes, "cpus": os.cpu_count(),
              "python": platform.python_version(), **figures}
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"{args.nodes} idle nodes: {figures['idle_cpu_pct_of_one_core']}% of one core "
              f"({figures['idle_cpu_pct_of_one_core_per_node']}% each) over "
              f"{figures['window_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
