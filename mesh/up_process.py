"""``agentmesh up`` as a child process, for tests and benchmarks that need a real
cluster: started, waited for until it reports the cluster running, and always
stopped with every node it started, even on failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.errors import ClusterError
from mesh.layout import CLUSTER_FILE

__all__ = ["UpProcess", "process_alive", "running_up"]

STOP_WAIT_S = 30.0
"""How long ``up`` may take to stop its nodes after SIGTERM before it is killed."""


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@dataclass
class UpProcess:
    """A running ``agentmesh up`` and the nodes it listed in ``cluster.json``."""

    process: subprocess.Popen[str]
    nodes: list[dict[str, Any]]
    printed: str = ""
    """What ``up`` printed until it reported the cluster running."""

    @property
    def pids(self) -> list[int]:
        return [int(n["pid"]) for n in self.nodes]


@contextmanager
def running_up(cluster_dir: Path, *up_args: str) -> Iterator[UpProcess]:
    """``agentmesh up --dir cluster_dir *up_args`` until it reports the cluster running.

    ``ClusterError`` (with what it printed) if ``up`` ends before that. Afterwards
    ``up`` is stopped (SIGTERM, then SIGKILL after ``STOP_WAIT_S``) unless the
    caller already did, and any node process still alive is killed.
    """
    up = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "up", "--dir", str(cluster_dir), *up_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    pids: list[int] = []
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:
            lines.append(line)
            if line.startswith("cluster running"):
                break
        else:
            raise ClusterError("up ended before the cluster ran:\n" + "".join(lines))
        nodes = json.loads((cluster_dir / CLUSTER_FILE).read_text())["nodes"]
        running = UpProcess(up, nodes, "".join(lines))
        pids = running.pids
        yield running
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
        for pid in pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if up.stdout is not None:
            up.stdout.close()
