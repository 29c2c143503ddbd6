"""``agentmesh workflow run|show|list``, ``agentmesh approve`` and ``agentmesh approvals``.

Registered through the ``agentmesh.commands`` entry point. Every command talks
to the cluster in ``--cluster`` through ``KVClient.connect``.

``workflow run FILE`` reads a TOML workflow (``agents.workflow.spec``), records
it, and (unless ``--no-wait``) waits until it finished, printing the result and
the timeline of its steps: who ran each (agent and node), when, and how it
ended. ``--json`` prints one object ``{"workflow_id", "state", "result",
"error", "steps"}``. ``approve GATE`` answers an approval gate (``--reject``,
``--comment``); a gate answered already keeps its first answer, and the command
says so.

Exit codes: 0 done (or approved as asked); 1 the workflow failed or was
rejected, the file is invalid, or the gate is unknown or was answered otherwise;
2 the cluster did not answer, or the wait timed out.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import anyio

from agents.cli import cluster_subcommand
from agents.workflow.client import approve, pending_approvals, wait_workflow
from agents.workflow.spec import load_workflow
from agents.workflow.store import WorkflowStore
from mesh.errors import MeshError
from mesh.kv_client import KVClient, KVUnavailable

__all__ = ["format_timeline", "register"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 2


def register(commands: Any) -> None:
    """Add ``workflow``, ``approve`` and ``approvals`` to the ``agentmesh`` subcommands."""
    workflow = commands.add_parser(
        "workflow", help="run multi-agent workflows on a mesh and show them",
        description="Run a workflow file (TOML) on a running mesh, or show one. Each step "
        "runs as a contract-net task on whichever node's agent wins it; progress is "
        "checkpointed in Raft, so a workflow survives the node orchestrating it.",
    ).add_subparsers(dest="workflow_command", required=True)

    run = _sub(workflow, "run", "run a workflow file", timeout=600.0)
    run.add_argument("file", type=Path, help="the workflow, a TOML file")
    run.add_argument("--input", dest="run_input", default="{}",
                     help="JSON object over the workflow's own input")
    run.add_argument("--id", dest="workflow_id", help="the workflow id (default: random)")
    run.add_argument("--no-wait", action="store_true", help="print the id and return")
    run.set_defaults(operation=_run)

    show = _sub(workflow, "show", "show one workflow and its steps")
    show.add_argument("workflow_id")
    show.set_defaults(operation=_show)

    listing = _sub(workflow, "list", "list the workflows not finished")
    listing.set_defaults(operation=_list)

    gate = _sub(commands, "approve", "answer an approval gate of a workflow")
    gate.add_argument("gate_id", help="the gate id, as `agentmesh approvals` lists it")
    gate.add_argument("--reject", action="store_true", help="reject instead of approve")
    gate.add_argument("--comment", default="", help="why")
    gate.add_argument("--by", default="", help="who answers (default: the user name)")
    gate.set_defaults(operation=_approve)

    pending = _sub(commands, "approvals", "list the approval gates waiting for an answer")
    pending.set_defaults(operation=_approvals)


def _sub(group: Any, name: str, help_text: str, timeout: float = 30.0
         ) -> argparse.ArgumentParser:
    return cluster_subcommand(group, name, help_text, _main, timeout)


def _main(args: argparse.Namespace) -> int:
    async def main() -> int:
        try:
            async with KVClient.connect(args.cluster) as kv:
                code: int = await args.operation(kv, args)
                return code
        except KVUnavailable as exc:
            print(f"agentmesh: the cluster is unavailable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except MeshError as exc:
            print(f"agentmesh: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return anyio.run(main)


async def _run(kv: Any, args: argparse.Namespace) -> int:
    spec = load_workflow(args.file)
    try:
        run_input = json.loads(args.run_input)
    except ValueError as exc:
        print(f"agentmesh: --input is not JSON: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not isinstance(run_input, dict):
        print("agentmesh: --input must be a JSON object", file=sys.stderr)
        return EXIT_FAILED
    store = WorkflowStore(kv)
    workflow_id = await store.submit(spec, run_input, workflow_id=args.workflow_id)
    if args.no_wait:
        print(json.dumps({"workflow_id": workflow_id}) if args.json else workflow_id)
        return EXIT_OK
    if not args.json:
        print(f"workflow {workflow_id} ({spec.name}) submitted; waiting", flush=True)
    try:
        record = await wait_workflow(kv, workflow_id, args.timeout)
    except TimeoutError:
        view = await store.view(workflow_id)
        _print_view(view, args.json)
        print(f"agentmesh: workflow {workflow_id} still running after {args.timeout:g} s",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    view = await store.view(record.workflow_id)
    _print_view(view, args.json)
    return EXIT_OK if record.state == "done" else EXIT_FAILED


async def _show(kv: Any, args: argparse.Namespace) -> int:
    view = await WorkflowStore(kv).view(args.workflow_id)
    if view is None:
        print(f"agentmesh: no workflow {args.workflow_id}", file=sys.stderr)
        return EXIT_FAILED
    _print_view(view, args.json)
    return EXIT_OK


async def _list(kv: Any, args: argparse.Namespace) -> int:
    store = WorkflowStore(kv)
    for workflow_id in await store.active():
        record = await store.workflow(workflow_id)
        if record is None:
            continue
        line = {"workflow_id": workflow_id, "name": record.spec.name, "state": record.state,
                "created": record.created}
        print(json.dumps(line, sort_keys=True) if args.json
              else f"{workflow_id}  {record.state:<8} {record.spec.name}")
    return EXIT_OK


async def _approve(kv: Any, args: argparse.Namespace) -> int:
    by = args.by or getpass.getuser()
    decision = await approve(kv, args.gate_id, approved=not args.reject, comment=args.comment,
                             by=by)
    wanted = not args.reject
    view = {"gate": args.gate_id, "approved": decision.approved, "by": decision.by,
            "comment": decision.comment}
    if args.json:
        print(json.dumps(view, sort_keys=True))
    else:
        verdict = "approved" if decision.approved else "rejected"
        print(f"{args.gate_id}: {verdict} by {decision.by}"
              + (f" ({decision.comment})" if decision.comment else ""))
    if decision.approved != wanted or decision.by != by:
        print(f"agentmesh: gate {args.gate_id} was answered already; that answer stands",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _approvals(kv: Any, args: argparse.Namespace) -> int:
    for gate in await pending_approvals(kv):
        if args.json:
            print(json.dumps(gate.to_json(), sort_keys=True))
        else:
            print(f"{gate.gate_id}  {gate.prompt}"
                  + (f"  (approvers: {gate.approvers})" if gate.approvers else ""))
    return EXIT_OK


def _print_view(view: dict[str, Any] | None, as_json: bool) -> None:
    if view is None:
        return
    if as_json:
        print(json.dumps(view, sort_keys=True))
        return
    print(f"workflow {view['workflow_id']} ({view['name']}): {view['state']}")
    for line in format_timeline(view["steps"]):
        print(line)
    if view.get("error"):
        print(f"error: {view['error']}")
    print("result: " + json.dumps(view.get("result"), sort_keys=True))


def format_timeline(steps: list[dict[str, Any]]) -> list[str]:
    """One line per step: offset from the first start, duration, state, what ran where."""
    starts = [step["started"] for step in steps if step.get("started")]
    origin = min(starts) if starts else 0.0
    lines = []
    for step in steps:
        if step["pattern"] not in ("agent", "group_chat", "handoff", "magentic", "approval"):
            continue  # composite steps: their children are listed
        started = step.get("started")
        finished = step.get("finished")
        at = f"+{started - origin:6.2f}s" if started else "       -"
        took = f"{finished - started:5.2f}s" if started and finished else "    -"
        if step["pattern"] == "approval":
            place = f"answered by {(step.get('meta') or {}).get('by') or '-'}"
        elif step["pattern"] in ("group_chat", "handoff", "magentic") and not step.get("agent"):
            place = f"({step['pattern']})"
        else:
            who = step.get("agent") or step.get("target") or "-"
            place = f"{who} on {(step.get('node') or '-')[:12]}"
        lines.append(f"  {at} {took}  {step['state']:<8} {step['key']:<28} {place}")
    return lines
