"""The ``agentmesh`` command line.

Subcommands: ``ca init``, ``keygen``, ``node run``, ``up``, ``status``,
``gossip get|set|del|list``, ``kv put|get|cas|del|list`` and
``lock acquire|release|holder`` (``mesh.kv_cli``, which documents their exit
codes), ``config defaults``, and those of the layers above registered as entry
points (``sim``). Operating errors (``MeshError``, also when raised inside a task
group) print one line to stderr and exit 1; read commands take ``--json``.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anyio

from mesh import __version__
from mesh.collector import tune_collector
from mesh.config import defaults_toml, load_config
from mesh.errors import ClusterError, MeshError, exception_leaves
from mesh.gossip_cli import GossipCommandError, gossip_command, parse_value
from mesh.kv_cli import register as register_kv_commands
from mesh.launcher import ClusterLauncher
from mesh.layout import (
    AUTHORITY_PUB,
    CLIENT_DIR,
    create_node_identity,
    init_authority,
    load_authority,
    load_node_files,
)
from mesh.messages import GossipRequest
from mesh.runtime import Node
from mesh.status import format_status_table, gather_status

__all__ = ["build_parser", "main"]

log = logging.getLogger("mesh.cli")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``agentmesh``.

    When ``command`` names one of mesh's own subcommands, those of the layers above
    are left out: loading them imports most of ``agents`` and ``sim``, which took
    about a third of every ``kv``, ``status`` or ``node run`` start-up.
    """
    parser = argparse.ArgumentParser(
        prog="agentmesh", description="A decentralized mesh of AI agent nodes."
    )
    parser.add_argument("--version", action="version", version=f"agentmesh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    ca = commands.add_parser("ca", help="cluster authority").add_subparsers(
        dest="ca_command", required=True
    )
    ca_init = ca.add_parser("init", help="create a cluster authority (and a CLI identity)")
    ca_init.add_argument("--dir", required=True, type=Path, help="authority directory")
    ca_init.set_defaults(handler=_ca_init)

    keygen = commands.add_parser("keygen", help="create a node key and certificate")
    keygen.add_argument("--dir", required=True, type=Path, help="node directory")
    keygen.add_argument("--ca", required=True, type=Path, help="authority directory")
    keygen.add_argument("--name", help="node name (default: the directory's name)")
    keygen.add_argument("--roles", nargs="+", default=["node"], help="roles (default: node)")
    keygen.add_argument("--valid-days", type=int, default=365, help="certificate lifetime")
    keygen.set_defaults(handler=_keygen)

    node = commands.add_parser("node", help="run a node").add_subparsers(
        dest="node_command", required=True
    )
    node_run = node.add_parser("run", help="run one node in the foreground")
    node_run.add_argument("--dir", required=True, type=Path, help="node directory")
    node_run.add_argument("--listen", help="tcp://HOST:PORT to bind (overrides node.toml)")
    node_run.add_argument("--seed", action="append", default=None,
                          help="seed address, repeatable (overrides node.toml)")
    node_run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    node_run.add_argument("--agents", help="agents to host, e.g. 'demo' or 'pkg.mod:factory' "
                          "(comma-separated; handled by the agents layer's node hook)")
    node_run.set_defaults(handler=_node_run)

    up = commands.add_parser("up", help="run a local cluster of node processes")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument("--dir", required=True, type=Path, help="cluster directory")
    up.add_argument("--base-port", type=int, help="first port (default: free ports)")
    up.add_argument("--duration", type=float, help="stop after this many seconds")
    up.add_argument("--voters", type=int,
                    help="Raft voters among the nodes: 3 or 5 (default: 3, or every node "
                         "if fewer; 0: no replicated store)")
    up.add_argument("--agents", help="agents every node hosts (see node run --agents)")
    up.add_argument("--demo-tasks", type=int, default=0, metavar="N",
                    help="once running, put N demo tasks through contract-net auctions and "
                    "print how each went (needs --agents demo)")
    up.set_defaults(handler=_up)

    status = commands.add_parser("status", help="ask every node of a cluster for its status")
    status.add_argument("--cluster", required=True, type=Path, help="cluster directory")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--timeout", type=float, default=2.0, help="seconds per node")
    status.set_defaults(handler=_status)

    gossip = commands.add_parser(
        "gossip", help="read and write the cluster's gossip state"
    ).add_subparsers(dest="gossip_command", required=True)
    for name, help_text in (("get", "print one key's value"), ("set", "write a key"),
                            ("del", "delete a key"), ("list", "list keys under a prefix")):
        sub = gossip.add_parser(name, help=help_text)
        if name == "list":
            sub.add_argument("prefix", nargs="?", default="", help="key prefix (default: all)")
            sub.add_argument("--limit", type=int, default=1000, help="most keys listed")
        else:
            sub.add_argument("key")
        if name == "set":
            sub.add_argument("value", help="a JSON value, or else taken as a string")
        sub.add_argument("--cluster", required=True, type=Path, help="cluster directory")
        sub.add_argument("--node", help="node to ask (default: the first that answers)")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.add_argument("--timeout", type=float, default=2.0, help="seconds per node")
        sub.set_defaults(handler=_gossip, operation=name)

    register_kv_commands(commands)

    config = commands.add_parser("config", help="configuration").add_subparsers(
        dest="config_command", required=True
    )
    config_defaults = config.add_parser("defaults", help="print every field with its default")
    config_defaults.set_defaults(handler=_config_defaults)
    if command is None or command not in commands.choices:
        _register_extensions(commands)
    return parser


COMMANDS_ENTRY_POINT_GROUP = "agentmesh.commands"
NODE_HOOKS_ENTRY_POINT_GROUP = "agentmesh.node_hooks"
"""Functions ``hook(node, options)`` called by ``node run`` before the node starts, so
that the layers above mesh can add cores and services (``Node.add_service``).
``options`` holds the command's layer options (``agents``: the ``--agents`` value
or None)."""
UP_HOOKS_ENTRY_POINT_GROUP = "agentmesh.up_hooks"
"""Functions ``hook(cluster_dir, options, out) -> int`` called by ``up`` once the
cluster runs, before it waits for Ctrl-C (``options``: ``agents``,
``demo_tasks``; ``out`` prints a line). A non-zero result is ``up``'s exit code
when it stops (the cluster keeps running meanwhile)."""
PROFILE_DIR_ENV = "AGENTMESH_PROFILE_DIR"
"""When set, ``node run`` profiles the node and writes NAME.prof there at exit."""


def _register_extensions(commands: Any) -> None:
    """Subcommands of the layers above ``mesh`` (``sim``, later ``agents``).

    ``mesh`` may not import them; they register through the
    ``agentmesh.commands`` entry point group instead, each with a
    ``register(subparsers)`` function.
    """
    for entry_point in sorted(entry_points(group=COMMANDS_ENTRY_POINT_GROUP),
                              key=lambda e: e.name):
        entry_point.load()(commands)


def _run_node_hooks(node: Node, options: dict[str, Any]) -> None:
    """Call every ``agentmesh.node_hooks`` entry point on ``node`` (by name order)."""
    for entry_point in sorted(entry_points(group=NODE_HOOKS_ENTRY_POINT_GROUP),
                              key=lambda e: e.name):
        entry_point.load()(node, options)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    # A line as soon as it is printed, also into a pipe: whoever runs `up` or `demo`
    # under a supervisor or a test reads "cluster running" when it is true.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in arguments if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(arguments)
    try:
        code: int = args.handler(args)
    except MeshError as exc:
        print(f"agentmesh: error: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # A MeshError raised in a task (e.g. a corrupt Raft log found as the node
        # starts) arrives wrapped by its task group: still one line, no traceback.
        errors = _mesh_errors_only(group)
        if errors is None:
            raise
        print("agentmesh: error: " + "; ".join(str(e) for e in errors), file=sys.stderr)
        return 1
    return code


def _mesh_errors_only(group: BaseExceptionGroup[BaseException]) -> list[MeshError] | None:
    """The ``MeshError``s of a (nested) exception group, or None if it holds anything else."""
    leaves = exception_leaves(group)
    found = [e for e in leaves if isinstance(e, MeshError)]
    return found if len(found) == len(leaves) else None


def _ca_init(args: argparse.Namespace) -> int:
    _, created = init_authority(args.dir)
    verb = "created" if created else "kept existing"
    print(f"{verb} authority in {args.dir} (public key: {args.dir / AUTHORITY_PUB}; "
          f"CLI identity: {args.dir / CLIENT_DIR})")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    authority = load_authority(args.ca)
    name = args.name or args.dir.resolve().name
    certificate = create_node_identity(
        args.dir, authority, name=name, roles=args.roles, valid_days=args.valid_days
    )
    print(json.dumps(certificate.to_json() | {"dir": str(args.dir)}, indent=2))
    return 0


def _node_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["listen"] = args.listen
    if args.seed is not None:
        overrides["seeds"] = args.seed
    config = load_config(args.dir, overrides)
    files = load_node_files(args.dir)
    node = Node(
        config=config,
        identity=files.identity,
        certificate=files.certificate,
        authority_public_key=files.authority_public_key,
        node_dir=args.dir,
    )
    _run_node_hooks(node, {"agents": args.agents})
    # `kill -USR1 PID` writes every thread's stack to the node's stderr (its log):
    # what an operator needs to see where a stuck node is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    profile_dir = os.environ.get(PROFILE_DIR_ENV)
    if profile_dir:
        # For benchmarks: where a node's time goes, written when it stops.
        import cProfile

        with cProfile.Profile() as profiler:
            anyio.run(_run_until_signal, node)
        profiler.dump_stats(Path(profile_dir) / f"{config.name}.prof")
    else:
        anyio.run(_run_until_signal, node)
    log.info("node %s stopped", config.name)
    return 0


async def _run_until_signal(node: Node) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with node.running():
            # Started: what startup built and recovery loaded is frozen from here on.
            tune_collector(node.config.gc_young_threshold)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                await node.leave()
                return


def _up(args: argparse.Namespace) -> int:
    if args.demo_tasks and not args.agents:
        raise ClusterError("--demo-tasks needs agents to run them: add --agents demo")
    options = {"agents": args.agents, "demo_tasks": args.demo_tasks}
    launcher = ClusterLauncher(args.dir, args.nodes, base_port=args.base_port,
                               voters=args.voters, agents=args.agents)
    hooks = [entry_point.load() for entry_point in sorted(
        entry_points(group=UP_HOOKS_ENTRY_POINT_GROUP), key=lambda e: e.name)]
    steps = [functools.partial(hook, launcher.directory, options, launcher.out)
             for hook in hooks]
    return launcher.run(duration_s=args.duration, after_start=steps)


def _status(args: argparse.Namespace) -> int:
    status = anyio.run(_gather, args.cluster, args.timeout)
    print(json.dumps(status, indent=2) if args.json else format_status_table(status))
    return 0


async def _gather(cluster: Path, timeout_s: float) -> dict[str, Any]:
    return await gather_status(cluster, timeout_s=timeout_s)


_GOSSIP_OPS = {"get": "get", "set": "set", "del": "delete", "list": "list"}


def _gossip(args: argparse.Namespace) -> int:
    operation = _GOSSIP_OPS[args.operation]
    if operation == "list":
        request = GossipRequest(op="list", key=args.prefix, limit=max(1, args.limit))
    elif operation == "set":
        request = GossipRequest(op="set", key=args.key, value=parse_value(args.value))
    else:
        request = GossipRequest(op=operation, key=args.key)
    response = anyio.run(_ask_gossip, args.cluster, request, args.node, args.timeout)
    if not response.ok:
        raise GossipCommandError(response.error or f"gossip {args.operation} failed")
    if operation == "get":
        print(_json({"key": args.key, "value": response.value}) if args.json
              else _json(response.value))
    elif operation == "list":
        if args.json:
            print(_json({"items": [{"key": k, "value": v} for k, v in response.items],
                         "truncated": response.truncated}))
        else:
            for key, value in response.items:
                print(f"{key}\t{_json(value)}")
    elif args.json:
        print(json.dumps({"key": args.key, "ok": True}))
    return 0


def _json(value: Any) -> str:
    # Gossip values may hold bytes, which JSON cannot: they are shown as hex.
    return json.dumps(value, default=lambda o: o.hex() if isinstance(o, bytes) else str(o))


async def _ask_gossip(cluster: Path, request: GossipRequest, node: str | None,
                      timeout_s: float) -> Any:
    return await gossip_command(cluster, request, node=node, timeout_s=timeout_s)


def _config_defaults(_args: argparse.Namespace) -> int:
    sys.stdout.write(defaults_toml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
