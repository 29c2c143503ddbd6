"""``agentmesh sim``: run a scenario in the simulator over one or many seeds.

Registered into the ``agentmesh`` command line through the
``agentmesh.commands`` entry point (``mesh.cli`` cannot import the layers above
it). Exit status 0 when every checker passed on every seed, 1 otherwise; each
failure is printed with its seed, its checker and the command that replays it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from sim.runner import SweepResult, parse_faults, parse_seed_range, run_seeds
from sim.scenario import RunOptions, RunResult
from sim.scenarios import SCENARIOS, scenario_named

__all__ = ["register", "run_sim"]


def register(commands: Any) -> None:
    """Add the ``sim`` subcommand to ``agentmesh``'s subparsers."""
    sim = commands.add_parser(
        "sim", help="run a scenario in the deterministic simulator",
        description="Run many simulated nodes in one process, under faults drawn from the "
        "seed (or a script), and check the protocol's properties.",
    )
    sim.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    sim.add_argument("--nodes", type=int, default=10, help="simulated nodes (default 10)")
    sim.add_argument("--duration", type=float, default=60.0,
                     help="virtual seconds of faults; a settle phase follows (default 60)")
    sim.add_argument("--seed", type=int, default=1, help="the seed (default 1)")
    sim.add_argument("--seeds", help="a range of seeds A-B (inclusive); overrides --seed")
    sim.add_argument("--faults", help="comma list of loss, duplicate, reorder, partition, "
                     "crash, pause, skew, or all (default: none); the seed draws their mix")
    sim.add_argument("--loss", type=float, help="a fixed message loss rate for the whole run")
    sim.add_argument("--script", help="a fault script instead of drawn faults, lines "
                     "separated by ';' (e.g. 'at 10 crash n3; at 30 restart n3')")
    sim.add_argument("--report", type=Path, help="write summary.json and PNG plots here")
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.set_defaults(handler=run_sim)


def run_sim(args: argparse.Namespace) -> int:
    """The ``agentmesh sim`` command."""
    try:
        faults = parse_faults(args.faults)
        seeds = parse_seed_range(args.seeds) if args.seeds else [args.seed]
        script = "\n".join(part.strip() for part in args.script.split(";")) if args.script \
            else None
        options = RunOptions(seed=seeds[0], nodes=args.nodes, duration_s=args.duration,
                             faults=faults, script=script, loss=args.loss)
        if script is not None and faults:
            raise ValueError("--script and --faults exclude each other")
        scenario = scenario_named(args.scenario)
        progress = _Progress(len(seeds), sys.stderr)
        sweep = run_seeds(scenario, options, seeds, progress.update)
    except (ValueError, KeyError) as exc:
        print(f"agentmesh sim: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    progress.finish()
    if args.report is not None:
        from sim.report import write_report  # matplotlib loads only when a report is asked

        for path in write_report(sweep, args.report):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(sweep.to_json(), indent=2))
    else:
        _print_summary(sweep)
    if not sweep.passed:
        for violation in sweep.violations():
            print(f"FAILED seed {violation['seed']}: {violation['checker']} at "
                  f"{violation['at']} s: {violation['message']}\n  replay: "
                  f"{violation['replay']}", file=sys.stderr)
        return 1
    return 0


def _print_summary(sweep: SweepResult) -> None:
    seeds = [result.seed for result in sweep.results]
    verdict = "all checkers passed" if sweep.passed else \
        f"{len(sweep.violations())} violation(s)"
    print(f"scenario {sweep.scenario}: {sweep.options.nodes} nodes, "
          f"{sweep.options.duration_s:g} s, seeds {seeds[0]}..{seeds[-1]} ({len(seeds)}): "
          f"{verdict}")
    if len(sweep.results) == 1:
        print(sweep.results[0].description)
        print(f"trace digest {sweep.results[0].trace_digest}")
    for name, value in sweep.to_json()["metrics"].items():
        print(f"  {name:<22} {value}")


class _Progress:
    """A progress bar across seeds on a terminal, one line per seed otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()

    def update(self, done: int, total: int, result: RunResult) -> None:
        mark = "ok" if result.passed else "FAILED"
        wall = result.stats.wall_s if result.stats else 0.0
        if self.tty:
            filled = int(30 * done / total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} seeds "
                              f"(seed {result.seed} {mark}, {wall:.1f} s)")
        else:
            self.stream.write(f"seed {result.seed}: {mark} ({done}/{total}, {wall:.1f} s)\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
