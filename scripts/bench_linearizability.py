"""Linearizability checker benchmark: how long a check of a synthetic history takes.

For each workload the script synthesizes a linearizable history of concurrent
clients on a KV store (``sim.linearizability.synth``), checks it, then garbles
the result of its last completed read to a value never written and checks that
too (a refutation explores every path of the key involved). Reported: the time
of each check (best of ``--repeat``), operations checked per second and states
explored.

    python scripts/bench_linearizability.py [--ops N] [--keys K] [--clients C]
        [--unknown FRACTION] [--seed S] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from random import Random
from typing import Any

from sim.linearizability import Operation, check
from sim.linearizability.synth import SynthSettings, synthesize


def _timed(history: list[Operation], repeat: int) -> tuple[float, Any]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = check(history)
        best = min(best, time.perf_counter() - started)
    return best, result


def _garbled(history: list[Operation]) -> list[Operation]:
    victim = max(i for i, op in enumerate(history) if op.op == "get" and not op.unknown)
    broken = list(history)
    broken[victim] = dataclasses.replace(history[victim], result=("never-written", 1))
    return broken


def run(settings: SynthSettings, seed: int, repeat: int) -> dict[str, Any]:
    """Check one synthetic history and its garbled twin; return the figures."""
    history = synthesize(Random(seed), settings)
    good_s, good = _timed(history, repeat)
    bad_s, bad = _timed(_garbled(history), repeat)
    if good.linearizable is not True or bad.linearizable is not False:
        raise AssertionError(f"wrong verdicts: {good.explanation}\n{bad.explanation}")
    return {
        "operations": settings.operations,
        "keys": settings.keys,
        "clients": settings.clients,
        "unknown_fraction": settings.unknown_fraction,
        "seed": seed,
        "check_ms": round(good_s * 1000, 2),
        "ops_per_s": round(settings.operations / good_s),
        "states_explored": good.stats.states_explored,
        "refute_ms": round(bad_s * 1000, 2),
        "refute_states_explored": bad.stats.states_explored,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table, or one JSON object with ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--unknown", type=float, default=0.05,
                        help="fraction of operations whose answer is lost (default 0.05)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    base = SynthSettings(operations=args.ops, keys=args.keys, clients=args.clients,
                         unknown_fraction=args.unknown)
    workloads = [
        base,
        dataclasses.replace(base, unknown_fraction=0.0),
        dataclasses.replace(base, operations=args.ops * 5),
        dataclasses.replace(base, keys=max(1, args.keys // 10), clients=args.clients * 2),
    ]
    rows = [run(settings, args.seed, args.repeat) for settings in workloads]
    if args.json:
        print(json.dumps({"workloads": rows, **{k: rows[0][k] for k in
                                                ("check_ms", "ops_per_s", "refute_ms")}}))
        return 0
    print(f"{'ops':>7} {'keys':>5} {'clients':>7} {'unknown':>7} {'check ms':>9} "
          f"{'ops/s':>8} {'states':>8} {'refute ms':>9}")
    for row in rows:
        print(f"{row['operations']:>7} {row['keys']:>5} {row['clients']:>7} "
              f"{row['unknown_fraction']:>7.2f} {row['check_ms']:>9.1f} {row['ops_per_s']:>8} "
              f"{row['states_explored']:>8} {row['refute_ms']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
