"""``python -m sim.linearizability HISTORY.json``: check a saved history offline.

Prints the verdict (and on a violation the failure report) and exits 0 when the
history is linearizable, 1 when it is not, 2 when the time limit struck first and
3 when the file or the arguments cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from sim.linearizability.checker import check
from sim.linearizability.history import History
from sim.linearizability.models import DeleteVersioning, KVModel, Model, RegisterModel

__all__ = ["main"]

EXIT_LINEARIZABLE = 0
EXIT_VIOLATION = 1
EXIT_UNDECIDED = 2
EXIT_BAD_INPUT = 3


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 on a usage error, which here means "undecided": use 3.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m sim.linearizability",
                     description="Check a recorded history of client operations "
                                 "for linearizability.")
    parser.add_argument("history", help="a history saved by History.save / to_json")
    parser.add_argument("--model", choices=["kv", "register"], default="kv",
                        help="the sequential specification (default: kv)")
    parser.add_argument("--delete-versioning", choices=[d.value for d in DeleteVersioning],
                        default=DeleteVersioning.KEEP.value,
                        help="kv only: what delete does to a key's version (default: keep)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="give up (exit 2) after this long (default: no limit)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    model: Model[Any]
    if args.model == "kv":
        model = KVModel(DeleteVersioning(args.delete_versioning))
    else:
        model = RegisterModel()
    try:
        history = History.load(args.history)
        result = check(history, model, time_limit_s=args.time_limit)
    except (OSError, ValueError, TypeError) as exc:
        print(f"cannot check {args.history}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(result.explanation)
    if result.linearizable is None:
        return EXIT_UNDECIDED
    return EXIT_LINEARIZABLE if result.linearizable else EXIT_VIOLATION


if __name__ == "__main__":
    sys.exit(main())
