"""``agentmesh demo``: a local mesh of agents runs a multi-agent workflow, and survives
losing a node.

How this works: ``agentmesh up --nodes N --agents team`` starts N node processes
(three of them Raft voters) hosting the specialised offline team of
``agents.demo_team``, in a temporary directory (or ``--dir``). The demo submits
``DEMO_WORKFLOW`` (concurrent research, a sequential analysis and summary, a
chaired review chat, an approval gate) and then:

- answers the approval gate itself, as a person would with ``agentmesh approve``
  (``auto-approved in the demo``);
- once the research step is checkpointed, kills (SIGKILL) the node that
  orchestrates the workflow: another node claims it and resumes from the
  checkpoints, without running a finished step again (``--no-kill`` skips this);
- waits for the workflow to finish and prints its result and a timeline of who
  did what on which node.

``--json`` prints one object: ``workflow_id``, ``state`` (``done`` when it
finished), ``killed_node``, ``result`` and ``steps`` (each ``{"name", "pattern",
"agent", "node", "started", "finished", "state"}``, in the order they started).
Exit code 0 when the workflow is done, 1 otherwise, 2 when the mesh did not start
or answer in time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from agents.demo_team import DEMO_WORKFLOW
from agents.workflow.cli import format_timeline
from agents.workflow.client import approve, wait_workflow
from agents.workflow.engine import DONE
from agents.workflow.store import WorkflowStore
from mesh.errors import ClusterError, MeshError
from mesh.kv_client import KVClient
from mesh.up_process import UpProcess, running_up

__all__ = ["register", "run_demo"]

NODES_MIN = 3
"""A node can be killed only while a majority of the three voters stays up."""
NODES_MAX = 16
_POLL_S = 0.1


def register(commands: Any) -> None:
    """Add ``demo`` to the ``agentmesh`` subcommands."""
    parser = commands.add_parser(
        "demo", help="run a multi-agent workflow on a local mesh, killing a node mid-way",
        description="Start a local mesh of node processes hosting a team of offline agents, "
        "run a workflow using several patterns (concurrent research, a sequential analysis "
        "and summary, a review group chat, an approval gate), kill the node orchestrating "
        "it part-way, and print the result and who did what on which node.")
    parser.add_argument("--nodes", type=int, default=4,
                        help=f"node processes ({NODES_MIN} to {NODES_MAX}, default 4)")
    parser.add_argument("--dir", type=Path, help="keep the mesh here (default: a temporary "
                        "directory, removed afterwards)")
    parser.add_argument("--no-kill", action="store_true", help="do not kill a node")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds the workflow may take (default 180)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    if not NODES_MIN <= args.nodes <= NODES_MAX:
        print(f"agentmesh demo: --nodes must be {NODES_MIN} to {NODES_MAX}", file=sys.stderr)
        return 2
    return run_demo(args.nodes, directory=args.dir, kill=not args.no_kill,
                    timeout_s=args.timeout, as_json=args.json)


def run_demo(nodes: int, *, directory: Path | None = None, kill: bool = True,
             timeout_s: float = 180.0, as_json: bool = False) -> int:
    """Run the demo (module docstring); its exit code."""
    out = _Printer(as_json)
    with tempfile.TemporaryDirectory(prefix="agentmesh-demo-") as scratch:
        cluster = (directory or Path(scratch)) / "mesh"
        out.line(f"starting {nodes} nodes with the agent team in {cluster} ...")
        try:
            with running_up(cluster, "--nodes", str(nodes), "--agents", "team") as up:
                report = anyio.run(_drive, cluster, up, kill, timeout_s, out)
        except ClusterError as exc:
            print(f"agentmesh demo: the mesh did not start: {exc}", file=sys.stderr)
            return 2
    if as_json:
        print(json.dumps(report, sort_keys=True))
    else:
        out.summary(report)
    if report["state"] == DONE:
        return 0
    return 2 if report["state"] == "timeout" else 1


class _Printer:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.origin = time.monotonic()

    def line(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.origin:6.2f}s] {text}", flush=True)

    def summary(self, report: dict[str, Any]) -> None:
        print()
        print(f"workflow {report['workflow_id']}: {report['state']}")
        if report["killed_node"]:
            print(f"killed {report['killed_node']} (the orchestrator) part-way; "
                  f"the workflow went on from its checkpoints")
        print("timeline (start offset, duration, state, step, agent on node):")
        for line in format_timeline(report["timeline"]):
            print(line)
        print("result:")
        print(json.dumps(report["result"], indent=2, sort_keys=True))


async def _drive(cluster: Path, up: UpProcess, kill: bool, timeout_s: float,
                 out: _Printer) -> dict[str, Any]:
    names = {str(node["node_id"]): str(node["name"]) for node in up.nodes}
    pids = {str(node["node_id"]): int(node["pid"]) for node in up.nodes}
    async with KVClient.connect(cluster) as kv:
        store = WorkflowStore(kv)
        workflow_id = await store.submit(DEMO_WORKFLOW)
        out.line(f"workflow {workflow_id} ({DEMO_WORKFLOW.name}) submitted")
        killed: list[str] = []
        state = "timeout"
        async with anyio.create_task_group() as group:
            group.start_soon(_approver, store, kv, workflow_id, out)
            if kill:
                group.start_soon(_killer, store, workflow_id, names, pids, killed, out)
            try:
                record = await wait_workflow(kv, workflow_id, timeout_s)
                state = record.state
            except TimeoutError:
                out.line(f"the workflow did not finish within {timeout_s:g} s")
            group.cancel_scope.cancel()
        view = await store.view(workflow_id) or {"steps": [], "result": None}
    timeline = [dict(step, node=names.get(step["node"] or "", step["node"]))
                for step in view["steps"]]
    return {
        "workflow_id": workflow_id,
        "state": state,
        "killed_node": killed[0] if killed else None,
        "result": view.get("result"),
        "error": view.get("error"),
        "steps": [{key: step[key] for key in ("name", "pattern", "agent", "node", "started",
                                              "finished", "state")} for step in timeline],
        "timeline": timeline,
    }


async def _approver(store: WorkflowStore, kv: Any, workflow_id: str, out: _Printer) -> None:
    """Answer the workflow's approval gates, as a person would."""
    answered: set[str] = set()
    while True:
        try:
            for gate in await store.pending_gates():
                if gate.workflow_id == workflow_id and gate.gate_id not in answered:
                    decision = await approve(kv, gate.gate_id, comment="auto-approved in the demo",
                                             by="demo-approver")
                    answered.add(gate.gate_id)
                    out.line(f"approval {gate.gate_id}: {gate.prompt} -> "
                             f"{'approved' if decision.approved else 'rejected'}")
        except MeshError:
            pass  # a voter was just killed: the next poll goes to another
        await anyio.sleep(_POLL_S * 3)


async def _killer(store: WorkflowStore, workflow_id: str, names: dict[str, str],
                  pids: dict[str, int], killed: list[str], out: _Printer) -> None:
    """Once the research is checkpointed, SIGKILL the node orchestrating the workflow."""
    while True:
        try:
            steps = await store.steps(workflow_id)
            owner, _ = await store.owner(workflow_id)
        except MeshError:
            steps, owner = {}, None
        research = steps.get("research")
        if research is not None and research[0].state == DONE and owner is not None:
            node = owner.hex()
            if node in pids:
                os.kill(pids[node], signal.SIGKILL)
                killed.append(names[node])
                out.line(f"research done; killed {names[node]} (pid {pids[node]}), the node "
                         "orchestrating the workflow")
                return
        await anyio.sleep(_POLL_S)
