"""Shared fixtures: throwaway authorities, node directories and real node processes.

Every process a test starts is killed in the fixture's teardown, even when the
test fails. Waiting is always for a condition with a deadline (``wait_for``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mesh import up_process
from mesh.errors import ClusterError
from mesh.layout import create_node_identity, init_authority
from mesh.runtime import RUN_FILE_NAME
from mesh.up_process import UpProcess
from mesh.up_process import process_alive as pid_alive

T = TypeVar("T")

# The processes tests start must not lean on the runner's environment: a fresh
# machine has no PYTHONUNBUFFERED, and without it a child printing into a pipe
# holds its lines back (`up` once kept "cluster running" to itself that way).
os.environ.pop("PYTHONUNBUFFERED", None)


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout_s: float = 15.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last value: {last!r})")


def run_cli(
    *args: str, timeout_s: float = 60.0, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``agentmesh ARGS`` in a subprocess with this interpreter (``stdin``: its input)."""
    result = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        input=stdin,
    )
    if check and result.returncode != 0:
        pytest.fail(f"agentmesh {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@dataclass
class NodeProcess:
    """A node started by a test."""

    name: str
    node_dir: Path
    process: subprocess.Popen[bytes]
    node_id: str = ""
    listen: str = ""

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "node_id": self.node_id, "listen": self.listen,
                "pid": self.process.pid, "dir": str(self.node_dir)}


class LocalCluster:
    """An authority directory and the node processes a test starts in it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.authority, _ = init_authority(directory)
        self.nodes: list[NodeProcess] = []

    def make_node_dir(self, name: str, config_toml: str = "") -> Path:
        node_dir = self.directory / name
        create_node_identity(node_dir, self.authority, name=name, roles=["node"])
        (node_dir / "node.toml").write_text(f'name = "{name}"\n' + config_toml)
        return node_dir

    def start(self, name: str, *, seeds: list[str] = (), config_toml: str = "") -> NodeProcess:  # type: ignore[assignment]
        node_dir = self.directory / name
        if not node_dir.exists():
            self.make_node_dir(name, config_toml)
        (node_dir / RUN_FILE_NAME).unlink(missing_ok=True)
        command = [sys.executable, "-m", "mesh.cli", "node", "run", "--dir", str(node_dir),
                   "--listen", "tcp://127.0.0.1:0"]
        for seed in seeds:
            command += ["--seed", seed]
        log = open(node_dir / "node.log", "ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        log.close()
        node = NodeProcess(name, node_dir, process)
        # A restart replaces the entry of the same name (its old process has ended).
        self.nodes = [n for n in self.nodes if n.name != name or n.process.poll() is None]
        assert all(n.name != name for n in self.nodes), f"{name} is still running"
        self.nodes.append(node)

        def reported() -> dict[str, Any] | None:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n"
                            f"{(node_dir / 'node.log').read_text()}")
            try:
                info = json.loads((node_dir / RUN_FILE_NAME).read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return None
            return info if info.get("pid") == process.pid else None

        info = wait_for(reported, what=f"{name} to report its address")
        node.node_id, node.listen = info["node_id"], info["listen"]
        self.write_cluster_file()
        return node

    def write_cluster_file(self) -> None:
        (self.directory / "cluster.json").write_text(
            json.dumps({"nodes": [n.entry() for n in self.nodes]})
        )

    def status(self, timeout_s: float = 2.0) -> dict[str, Any]:
        result = run_cli("status", "--cluster", str(self.directory), "--json",
                         "--timeout", str(timeout_s))
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def node_status(self, name: str) -> dict[str, Any]:
        return next(n for n in self.status()["nodes"] if n["name"] == name)

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


@contextmanager
def running_up(cluster_dir: Path, *up_args: str) -> Iterator[UpProcess]:
    """``mesh.up_process.running_up``, a failure to start failing the test."""
    with ExitStack() as stack:
        try:
            running = stack.enter_context(up_process.running_up(cluster_dir, *up_args))
        except ClusterError as exc:
            pytest.fail(str(exc))
        yield running


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    # Belt and braces: a test that leaked a child process fails loudly here.
    leaked = [pid for pid in _children(os.getpid()) if pid_alive(pid)]
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    assert not leaked, f"test left child processes behind: {leaked}"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def wait_for_agent_adverts(cluster_dir: Path, node_names: list[str],
                           timeout_s: float = 60.0) -> None:
    """Wait until every node sees every node's agents advertised in gossip, so that a
    task pinned to a node finds it among the candidates."""
    def everywhere() -> bool:
        for name in node_names:
            listed = run_cli("gossip", "list", "agents/", "--cluster", str(cluster_dir),
                             "--node", name, "--json", check=False)
            if listed.returncode != 0:
                return False
            if len(json.loads(listed.stdout).get("items", [])) < len(node_names):
                return False
        return True

    wait_for(everywhere, timeout_s=timeout_s, interval_s=0.2, what="agent adverts everywhere")


def approve_when_pending(cluster: Path, gate_id: str,
                         *extra: str) -> subprocess.CompletedProcess[str]:
    """Wait for the gate to be pending, then answer it with ``agentmesh approve``."""
    def pending() -> bool:
        listing = run_cli("approvals", "--cluster", str(cluster), "--json").stdout
        return any(json.loads(line)["gate"] == gate_id for line in listing.splitlines())
    wait_for(pending, timeout_s=90, interval_s=0.2, what=f"gate {gate_id} pending")
    return run_cli("approve", gate_id, "--cluster", str(cluster), "--by", "tester", *extra,
                   check=False)
