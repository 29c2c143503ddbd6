"""``agentmesh task``: submit contract-net tasks and read the task ledger.

Registered through the ``agentmesh.commands`` entry point (``mesh`` may not
import ``agents``). Every command talks to the cluster in ``--cluster`` with its
CLI identity through ``KVClient.connect``: it reads and writes the Raft task
ledger directly, it runs no driver.

``task submit`` asks a node of the cluster to take the task
(``agents.submission.submit_task``): the node's ``ContractNetDriver`` records it
with itself as the owner and calls for proposals at once. When no node takes it
(none runs a driver, none answers), the open record is written with no owner
(``ledger.create``); a node running a driver takes it over at its next periodic
scan (``scan_interval_s``) by compare-and-set on ``owner/<id>``, so a task
submitted while no node runs a driver stays open until one does. ``--wait``
polls the ledger until the task is done, failed or cancelled.

``agentmesh up --agents SPEC`` (and ``node run --agents SPEC``) host agents on
every node: ``node_hook``, the ``agentmesh.node_hooks`` entry point, builds an
``AgentHost`` from the spec (``demo``, ``pkg.mod:factory``) and installs a
``ContractNetDriver`` before the node starts (when Raft voters are configured).

Output (``--json``: one JSON object per task)::

    {"task_id", "capability", "state", "epoch", "attempts", "contractor", "agent",
     "result", "failure_reasons", "bids"}

``result`` is the agent's JSON output (or text); ``contractor`` the node id in
hex. ``bids`` are those of the auction that made the latest award, best first:
``{"node", "cost", "duration_s", "load", "confidence"}`` each (empty before an
award).

Exit codes: 0 success (``--wait``: the task is done); 1 the task failed or was
cancelled, or is unknown, or the input is malformed; 2 the cluster did not
answer in time, or ``--wait`` timed out (the record is printed as it stands).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from agents.contract_net import ledger
from agents.contract_net.ledger import KEY_PREFIX, LedgerError, TaskRecord, TaskState
from agents.demo import parse_agents_spec
from agents.driver import ContractNetDriver, decode_json
from agents.host import AgentHost
from agents.submission import submit_task
from agents.workflow.service import WorkflowService
from mesh.errors import MeshError
from mesh.kv_client import KVClient, KVUnavailable

__all__ = ["cluster_subcommand", "node_hook", "record_view", "register", "run_task_command"]

log = logging.getLogger(__name__)


def node_hook(node: Any, options: Mapping[str, Any]) -> ContractNetDriver | None:
    """The ``agentmesh.node_hooks`` entry point: with ``--agents SPEC``, host those
    agents on ``node`` (adverts in gossip) and run the contract-net driver (which
    needs the replicated store: with no Raft voters configured, the agents are
    advertised but no driver runs). ``ConfigError`` for a bad spec."""
    spec = options.get("agents")
    if not spec:
        return None
    host = AgentHost(node, parse_agents_spec(spec))
    if not node.config.raft.voter_ids():
        log.warning("--agents %s: no Raft voters configured, so no contract net runs "
                    "(the agents are advertised only)", spec)
        node.add_service(host.run)
        return None
    driver = ContractNetDriver(node, host)
    driver.install()
    WorkflowService(node, driver).install()
    log.info("hosting agents %s (%s) with the contract-net driver",
             [a.name for a in host.agents], ", ".join(host.capabilities))
    return driver

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 2
_DEFAULT_TIMEOUT_S = 30.0
_POLL_S = 0.2
_WAIT_SLACK_S = 10.0
_LIST_MAX = 10_000


def record_view(record: TaskRecord) -> dict[str, Any]:
    """What the commands print for ``record``."""
    return {
        "task_id": record.task_id,
        "capability": record.capability,
        "state": record.state.value,
        "epoch": record.epoch,
        "attempts": record.attempts,
        "contractor": record.contractor.hex() if record.contractor else None,
        "agent": record.agent,
        "result": decode_json(record.result),
        "failure_reasons": list(record.failure_reasons),
        "bids": [{"node": bid.node_id.hex(), "cost": bid.cost, "duration_s": bid.duration_s,
                  "load": bid.load, "confidence": bid.confidence} for bid in record.bids],
    }


def register(commands: Any) -> None:
    """Add ``task`` to the ``agentmesh`` subcommands."""
    task = commands.add_parser(
        "task", help="submit contract-net tasks and read the task ledger",
        description="Submit tasks to the agents of a running mesh and read the task "
        "ledger. A node of the mesh takes a submitted task and auctions it at once; if "
        "none does, it is written open to the ledger and a node running the "
        "contract-net driver takes it over at its next scan.",
    ).add_subparsers(dest="task_command", required=True)

    submit = _sub(task, "submit", "submit a task")
    submit.add_argument("--capability", required=True, help="e.g. demo.wordcount")
    submit.add_argument("--input", required=True, dest="task_input",
                        help='the task input, a JSON object, e.g. \'{"text": "a b"}\'')
    submit.add_argument("--wait", action="store_true",
                        help="wait (up to --timeout) until the task is done or failed")
    submit.add_argument("--max-attempts", type=int, default=3,
                        help="attempts before the task fails (default 3)")
    submit.add_argument("--task-id", help="the task id (default: a random one)")
    submit.set_defaults(operation=_submit)

    show = _sub(task, "show", "print one task")
    show.add_argument("task_id")
    show.set_defaults(operation=_show)

    listing = _sub(task, "list", "list tasks")
    listing.add_argument("--state", choices=[s.value for s in TaskState],
                         help="only tasks in this state")
    listing.set_defaults(operation=_list)


def _sub(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    return cluster_subcommand(group, name, help_text, run_task_command, _DEFAULT_TIMEOUT_S)


def cluster_subcommand(group: Any, name: str, help_text: str,
                       handler: Callable[[argparse.Namespace], int],
                       timeout_s: float) -> argparse.ArgumentParser:
    """A subcommand talking to the cluster in ``--cluster``, with ``--json`` and
    ``--timeout`` (default ``timeout_s``), run by ``handler``."""
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text,
                                                       description=help_text + ".")
    parser.add_argument("--cluster", required=True, type=Path, help="cluster directory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=timeout_s,
                        help=f"seconds (default {timeout_s:g})")
    parser.set_defaults(handler=handler)
    return parser


Operation = Callable[[Any, argparse.Namespace], Awaitable[tuple[int, list[dict[str, Any]], str]]]


def run_task_command(args: argparse.Namespace) -> int:
    """The ``agentmesh task ...`` commands."""

    async def main() -> tuple[int, list[dict[str, Any]], str]:
        async with KVClient.connect(args.cluster) as kv:
            return await run_operation(kv, args)

    code, views, message = anyio.run(main)
    _print(views, args.json)
    if message:
        print(f"agentmesh task: {message}", file=sys.stderr)
    return code


async def run_operation(kv: Any, args: argparse.Namespace) -> tuple[int, list[dict[str, Any]], str]:
    """Run the command in ``args`` against ``kv``: exit code, records, message."""
    operation: Operation = args.operation
    try:
        # --wait polls for --timeout seconds itself; the bound leaves it room.
        with anyio.fail_after(args.timeout + (_WAIT_SLACK_S if getattr(args, "wait", False)
                                              else 0.0)):
            return await operation(kv, args)
    except TimeoutError:
        return EXIT_UNAVAILABLE, [], f"no answer within {args.timeout:g} s"
    except KVUnavailable as exc:
        return EXIT_UNAVAILABLE, [], f"unavailable: {exc}"
    except (LedgerError, MeshError) as exc:
        return EXIT_FAILED, [], f"error: {exc}"


async def _read(kv: Any, task_id: str) -> TaskRecord | None:
    item = await kv.get(ledger.task_key(task_id))
    return None if item is None else ledger.decode_record(item.value)


async def _submit(kv: Any, args: argparse.Namespace) -> tuple[int, list[dict[str, Any]], str]:
    try:
        task_input = json.loads(args.task_input)
    except ValueError as exc:
        return EXIT_FAILED, [], f"--input is not JSON: {exc}"
    if not isinstance(task_input, dict):
        return EXIT_FAILED, [], "--input must be a JSON object"
    record = await submit_task(kv, args.capability, task_input, task_id=args.task_id,
                               max_attempts=args.max_attempts)
    if not args.wait:
        return EXIT_OK, [record_view(record)], ""
    with anyio.move_on_after(args.timeout):
        while not record.final:
            await anyio.sleep(_POLL_S)
            record = await _read(kv, record.task_id) or record
    if not record.final:
        return (EXIT_UNAVAILABLE, [record_view(record)],
                f"task {record.task_id} still {record.state.value} after {args.timeout:g} s")
    code = EXIT_OK if record.state is TaskState.DONE else EXIT_FAILED
    return code, [record_view(record)], ""


async def _show(kv: Any, args: argparse.Namespace) -> tuple[int, list[dict[str, Any]], str]:
    record = await _read(kv, args.task_id)
    if record is None:
        return EXIT_FAILED, [], f"no task {args.task_id}"
    return EXIT_OK, [record_view(record)], ""


async def _list(kv: Any, args: argparse.Namespace) -> tuple[int, list[dict[str, Any]], str]:
    views: list[dict[str, Any]] = []
    start_after: str | None = None
    seen = 0
    while seen < _LIST_MAX:
        items, more = await kv.list(KEY_PREFIX, limit=1000, start_after=start_after)
        for item in items:
            seen += 1
            try:
                record = ledger.decode_record(item.value)
            except LedgerError:
                continue
            if args.state is None or record.state.value == args.state:
                views.append(record_view(record))
        if not more or not items:
            break
        start_after = items[-1].key
    return EXIT_OK, views, ""


def _print(views: list[dict[str, Any]], as_json: bool) -> None:
    for view in views:
        if as_json:
            print(json.dumps(view, sort_keys=True))
        else:
            contractor = (view["contractor"] or "-")[:16]
            result = json.dumps(view["result"]) if view["result"] is not None else "-"
            print(f"{view['task_id']}  {view['state']:<9} epoch {view['epoch']}  "
                  f"{view['capability']}  contractor {contractor}  result {result}")
