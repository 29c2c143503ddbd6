"""Running a scenario over many seeds, and what the seeds found together.

How this works: ``run_seeds`` runs one scenario per seed, in order, reporting
each finished seed to a progress callback. ``SweepResult`` pools the seeds'
samples into percentiles, sums their counts, and lists every violation with
the one command that replays its seed.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sim.nemesis import FaultKind
from sim.scenario import RunOptions, RunResult, Scenario, percentile

__all__ = ["SweepResult", "parse_faults", "parse_seed_range", "replay_command", "run_seeds"]

#: Metrics that add up across seeds; the others (bounds, times) take the worst seed.
_SUMMED = {"false_deaths", "false_suspicions", "writes", "spread_samples",
           "detection_samples", "client_ops_ok", "client_ops_unknown", "elections",
           "tasks", "done", "failed", "reauctions", "takeovers", "stale_results_refused"}


@dataclass(slots=True)
class SweepResult:
    """Every seed's result, and the pooled view of them."""

    scenario: str
    options: RunOptions
    results: list[RunResult]

    @property
    def passed(self) -> bool:
        """True when every seed passed every checker."""
        return all(result.passed for result in self.results)

    def metrics(self) -> dict[str, float]:
        """Percentiles over the pooled samples of every seed; counts summed; the rest worst."""
        merged: dict[str, float] = {}
        for result in self.results:
            for name, value in result.metrics.items():
                if name in _SUMMED:
                    merged[name] = merged.get(name, 0.0) + value
                elif not math.isnan(value):
                    merged[name] = max(merged.get(name, -math.inf), value)
                else:
                    merged.setdefault(name, math.nan)
        pooled: dict[str, list[float]] = {}
        for result in self.results:
            for name, values in result.samples.items():
                pooled.setdefault(name, []).extend(values)
        for name, values in pooled.items():
            if f"{name}_p50" in merged or f"{name}_p99" in merged:
                merged[f"{name}_p50"] = percentile(values, 0.5)
                merged[f"{name}_p99"] = percentile(values, 0.99)
        return merged

    def violations(self) -> list[dict[str, Any]]:
        """Every violation as ``{"seed", "checker", "at", "message", "replay"}``."""
        return [
            {
                "seed": result.seed,
                "checker": violation.checker,
                "at": round(violation.at, 3),
                "message": violation.message,
                "replay": replay_command(self.scenario, self.options, result.seed),
            }
            for result in self.results
            for violation in result.violations
        ]

    def to_json(self) -> dict[str, Any]:
        """The object ``agentmesh sim --json`` prints."""
        summary: dict[str, Any] = {
            "scenario": self.scenario,
            "nodes": self.options.nodes,
            "duration_s": self.options.duration_s,
            "faults": sorted(kind.value for kind in self.options.faults),
            "seeds_run": [result.seed for result in self.results],
            "passed": self.passed,
            "violations": self.violations(),
            "metrics": _finite(self.metrics()),
            "wall_s": round(sum(r.stats.wall_s for r in self.results if r.stats), 3),
        }
        if len(self.results) == 1:
            summary["trace_digest"] = self.results[0].trace_digest
        else:
            summary["trace_digests"] = {str(r.seed): r.trace_digest for r in self.results}
        return summary


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN: a metric with no samples is null.
    return {k: (None if math.isnan(v) or math.isinf(v) else round(v, 4))
            for k, v in sorted(metrics.items())}


def run_seeds(
    scenario: Scenario,
    options: RunOptions,
    seeds: Iterable[int],
    progress: Callable[[int, int, RunResult], None] | None = None,
) -> SweepResult:
    """Run ``scenario`` once per seed with ``options`` (its seed replaced)."""
    seed_list = list(seeds)
    results = []
    for done, seed in enumerate(seed_list, start=1):
        result = scenario.run(_with_seed(options, seed))
        results.append(result)
        if progress is not None:
            progress(done, len(seed_list), result)
    return SweepResult(scenario.name, options, results)


def _with_seed(options: RunOptions, seed: int) -> RunOptions:
    return RunOptions(seed=seed, nodes=options.nodes, duration_s=options.duration_s,
                      faults=options.faults, script=options.script, loss=options.loss)


def replay_command(scenario: str, options: RunOptions, seed: int) -> str:
    """The command line that reruns exactly this seed."""
    parts = ["agentmesh", "sim", "--scenario", scenario, "--nodes", str(options.nodes),
             "--duration", _number(options.duration_s), "--seed", str(seed)]
    if options.faults:
        parts += ["--faults", ",".join(sorted(kind.value for kind in options.faults))]
    if options.loss is not None:
        parts += ["--loss", _number(options.loss)]
    if options.script is not None:
        lines = [line.strip() for line in options.script.splitlines() if line.strip()]
        parts += ["--script", "; ".join(lines)]
    return shlex.join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def parse_faults(text: str | None) -> frozenset[FaultKind]:
    """``loss,crash`` or ``all`` to fault kinds; ValueError names the valid ones."""
    if not text:
        return frozenset()
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["all"]:
        return frozenset(FaultKind)
    valid = {kind.value: kind for kind in FaultKind}
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(sorted(valid))} or all")
    return frozenset(valid[name] for name in names)


def parse_seed_range(text: str) -> Sequence[int]:
    """``A-B`` (inclusive) or ``K`` to seeds; ValueError explains the expected form."""
    first, separator, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if separator else low
    except ValueError:
        raise ValueError(f"seeds {text!r} must look like A-B (e.g. 1-20) or K") from None
    if low < 0 or high < low:
        raise ValueError(f"seed range {text!r} must satisfy 0 <= A <= B")
    return range(low, high + 1)
