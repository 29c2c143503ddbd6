"""``agentmesh up``: a local cluster of real node processes, and nothing left behind.

``up`` creates what is missing under its directory (authority, CLI identity, one
node directory per node with key, certificate and ``node.toml``), starts node 1,
waits for it to report its address in ``run.json``, then starts the others with
node 1 as their seed, writes ``cluster.json`` and shows the cluster's status
once every node sees every other. It then waits for Ctrl-C or SIGTERM (or
``--duration``) and stops every node it started: SIGTERM, a grace period, then
SIGKILL. Children also get SIGTERM from the kernel should ``up`` itself die
(Linux parent-death signal), so no node outlives it.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio

from mesh.errors import ClusterError
from mesh.identity import read_private_key
from mesh.layout import (
    NODE_KEY,
    create_node_identity,
    init_authority,
    write_cluster_file,
)
from mesh.runtime import RUN_FILE_NAME
from mesh.status import format_status_table, gather_status

__all__ = ["ClusterLauncher", "LaunchedNode"]

_PR_SET_PDEATHSIG = 1
DEFAULT_VOTERS = 3
MAX_VOTERS = 9
NODE_START_TIMEOUT_S = 20.0
CONVERGE_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0


@dataclass(slots=True)
class LaunchedNode:
    """A node process started by ``up``."""

    name: str
    node_dir: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    node_id: str = ""
    listen: str = ""

    def as_json(self) -> dict[str, Any]:
        """This node's entry in ``cluster.json``."""
        return {
            "name": self.name,
            "node_id": self.node_id,
            "listen": self.listen,
            "pid": self.process.pid,
            "dir": str(self.node_dir),
        }


class ClusterLauncher:
    """Starts, watches and stops the node processes of one local cluster."""

    def __init__(
        self,
        directory: Path,
        nodes: int,
        *,
        base_port: int | None = None,
        host: str = "127.0.0.1",
        voters: int | None = None,
        agents: str | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        if nodes < 1:
            raise ClusterError(f"--nodes ({nodes}) must be at least 1")
        voters = min(DEFAULT_VOTERS, nodes) if voters is None else voters
        if not 0 <= voters <= min(nodes, MAX_VOTERS):
            raise ClusterError(
                f"--voters ({voters}) must be from 0 to the number of nodes ({nodes}), "
                f"at most {MAX_VOTERS}"
            )
        if voters % 2 == 0 and voters:
            out(f"note: {voters} voters tolerate no more failures than {voters - 1}")
        self.voter_count = voters
        #: The ``--agents`` value every node is started with (None: none).
        self.agents = agents
        if base_port is not None and not 1 <= base_port <= 65535 - nodes + 1:
            raise ClusterError(f"--base-port ({base_port}) leaves no room for {nodes} ports")
        self.directory = directory.resolve()
        self.node_count = nodes
        self.base_port = base_port
        self.host = host
        self.out = out
        self.nodes: list[LaunchedNode] = []
        self._stop = threading.Event()

    # -- the whole life of a cluster ---------------------------------------------

    def run(self, duration_s: float | None = None,
            after_start: Sequence[Callable[[], int]] = ()) -> int:
        """Prepare, start, show status, run ``after_start`` (each returns an exit
        code), wait for a stop request, stop. Returns an exit code: the first
        non-zero one of ``after_start``, else 0."""
        stop_signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in stop_signals}
        try:
            self.prepare()
            self.start_all()
            self.out(self.node_table())
            self.show_status_when_converged()
            codes = [step() for step in after_start]
            self.out("cluster running; Ctrl-C (or SIGTERM) stops every node")
            self.wait(duration_s)
            return next((code for code in codes if code), 0)
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop.set()

    def prepare(self) -> None:
        """Create the authority and node directories that are missing."""
        authority, created = init_authority(self.directory)
        if created:
            self.out(f"created cluster authority in {self.directory}")
        node_ids: list[str] = []
        for index in range(1, self.node_count + 1):
            node_dir = self.directory / f"node{index}"
            if not (node_dir / NODE_KEY).exists():
                create_node_identity(node_dir, authority, name=f"node{index}", roles=["node"])
            node_ids.append(read_private_key(node_dir / NODE_KEY).node_id_hex)
        voters = node_ids[: self.voter_count]
        for index in range(1, self.node_count + 1):
            config = self.directory / f"node{index}" / "node.toml"
            if not config.exists():
                text = f'name = "node{index}"\n'
                if voters:
                    text += "\n[raft]\nvoters = [" + ", ".join(f'"{v}"' for v in voters) + "]\n"
                config.write_text(text, encoding="utf-8")

    def start_all(self) -> None:
        """Start node 1, then the rest seeded with node 1's address; write cluster.json."""
        first = self._start(1, seeds=[])
        self._await_address(first)
        for index in range(2, self.node_count + 1):
            self._start(index, seeds=[first.listen])
        for node in self.nodes[1:]:
            self._await_address(node)
        path = write_cluster_file(self.directory, [n.as_json() for n in self.nodes])
        self.out(f"wrote {path}")

    def show_status_when_converged(self) -> None:
        """Poll status until every node sees every other alive (or time runs out); print it."""
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        status: dict[str, Any] = {"nodes": []}
        while time.monotonic() < deadline and not self._stop.is_set():
            status = anyio.run(gather_status, self.directory)
            if _converged(status, self.node_count):
                break
            self._stop.wait(0.2)
        self.out(format_status_table(status))

    def wait(self, duration_s: float | None) -> None:
        """Block until a stop signal, the duration, or every node has exited."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        reported: set[str] = set()
        while not self._stop.is_set():
            for node in self.nodes:
                code = node.process.poll()
                if code is not None and node.name not in reported:
                    reported.add(node.name)
                    log_path = node.node_dir / "node.log"
                    self.out(f"{node.name} exited with code {code}; see {log_path}")
            if len(reported) == len(self.nodes):
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            self._stop.wait(0.2)

    def stop_all(self) -> None:
        """SIGTERM every node, wait up to the grace period, SIGKILL the rest, reap all."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for node in self.nodes:
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.log_file.close()
        if self.nodes:
            self.out(f"stopped {len(self.nodes)} node(s)")
        self.nodes.clear()

    # -- one node ------------------------------------------------------------------

    def _start(self, index: int, seeds: list[str]) -> LaunchedNode:
        node_dir = self.directory / f"node{index}"
        (node_dir / RUN_FILE_NAME).unlink(missing_ok=True)
        port = 0 if self.base_port is None else self.base_port + index - 1
        command = [
            sys.executable, "-m", "mesh.cli", "node", "run", "--dir", str(node_dir),
            "--listen", f"tcp://{self.host}:{port}",
        ]
        for seed in seeds:
            command += ["--seed", seed]
        if self.agents:
            command += ["--agents", self.agents]
        log_file = open(node_dir / "node.log", "ab")
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,  # Ctrl-C reaches up, which then stops nodes in order
            preexec_fn=_die_with_parent,
        )
        node = LaunchedNode(f"node{index}", node_dir, process, log_file)
        self.nodes.append(node)
        return node

    def _await_address(self, node: LaunchedNode) -> None:
        run_file = node.node_dir / RUN_FILE_NAME
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise ClusterError("interrupted while starting nodes")
            code = node.process.poll()
            if code is not None:
                raise ClusterError(
                    f"{node.name} exited with code {code} at start:\n"
                    f"{_tail(node.node_dir / 'node.log')}"
                )
            info = _read_run_file(run_file)
            if info is not None and info.get("pid") == node.process.pid:
                node.node_id, node.listen = str(info["node_id"]), str(info["listen"])
                return
            self._stop.wait(0.05)
        raise ClusterError(
            f"{node.name} did not report its address within {NODE_START_TIMEOUT_S:.0f} s:\n"
            f"{_tail(node.node_dir / 'node.log')}"
        )

    def node_table(self) -> str:
        """The started nodes as a table."""
        rows = [("NAME", "NODE_ID", "LISTEN", "PID", "DIR")]
        rows += [(n.name, n.node_id, n.listen, str(n.process.pid), str(n.node_dir))
                 for n in self.nodes]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
                         for r in rows)


def _converged(status: dict[str, Any], node_count: int) -> bool:
    nodes = status.get("nodes", [])
    return len(nodes) == node_count and all(
        n.get("reachable")
        and sum(1 for p in n.get("peers", []) if p["state"] == "alive") == node_count - 1
        for n in nodes
    )


def _read_run_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it when `up` dies.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

