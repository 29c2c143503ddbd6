"""``--report DIR``: a sweep's summary as JSON and its plots as PNG.

How this works: ``summary.json`` holds the same object ``--json`` prints plus
every seed's metrics and schedule header. Plots use matplotlib's Agg backend
(files only, no display): for gossip, the fraction of nodes holding each write
against gossip rounds; for membership, the distribution of detection times
and the false suspicions over time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt

from sim.runner import SweepResult

__all__ = ["write_report"]


def write_report(sweep: SweepResult, directory: Path) -> list[Path]:
    """Write ``summary.json`` and the scenario's plots into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = sweep.to_json()
    summary["seeds"] = [
        {
            "seed": result.seed,
            "passed": result.passed,
            "trace_digest": result.trace_digest,
            "metrics": {k: (None if math.isnan(v) else v) for k, v in result.metrics.items()},
            "stats": result.stats.describe() if result.stats else None,
            "schedule": result.description,
        }
        for result in sweep.results
    ]
    written = [directory / "summary.json"]
    written[0].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if sweep.scenario == "gossip":
        written.append(_plot_spread(sweep, directory / "gossip_spread.png"))
    elif sweep.scenario == "membership":
        written.append(_plot_detection(sweep, directory / "membership_detection.png"))
        written.append(_plot_false_suspicions(sweep, directory / "membership_false_suspicions.png"))
    return written


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_spread(sweep: SweepResult, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(8, 5))
    for result in sweep.results:
        for flat in result.series.get("spread", []):
            rounds, fractions = flat[0::2], flat[1::2]
            axes.step(rounds, fractions, where="post", alpha=0.35, linewidth=1)
    metrics = sweep.metrics()
    p50 = metrics.get("rounds_to_all_p50", math.nan)
    if not math.isnan(p50):
        axes.axvline(p50, color="black", linestyle="--", label=f"median to all: {p50:.1f}")
        axes.legend(loc="lower right")
    axes.set_xlabel("gossip rounds since the write")
    axes.set_ylabel("fraction of nodes holding it")
    axes.set_ylim(0, 1.02)
    axes.set_title(f"gossip spread, {sweep.options.nodes} nodes, "
                   f"{len(sweep.results)} seed(s)")
    return _save(figure, path)


def _plot_detection(sweep: SweepResult, path: Path) -> Path:
    samples = [v for r in sweep.results for v in r.samples.get("detection_s", [])]
    figure, axes = plt.subplots(figsize=(8, 5))
    if samples:
        axes.hist(samples, bins=min(40, max(5, len(samples) // 5)), color="tab:blue")
    else:
        axes.text(0.5, 0.5, "no crash lasted long enough to be detected",
                  ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("seconds from crash to declared dead (per observing node)")
    axes.set_ylabel("observations")
    axes.set_title(f"failure detection, {sweep.options.nodes} nodes, {len(samples)} samples")
    return _save(figure, path)


def _plot_false_suspicions(sweep: SweepResult, path: Path) -> Path:
    times = [v for r in sweep.results for v in r.samples.get("false_suspicion_at", [])]
    figure, axes = plt.subplots(figsize=(8, 5))
    horizon = sweep.options.duration_s
    axes.hist(times, bins=max(10, int(horizon // 5)), range=(0, max(horizon, max(times,
              default=0.0))), color="tab:orange")
    deaths = sweep.metrics().get("false_deaths", 0.0)
    axes.set_xlabel("virtual seconds")
    axes.set_ylabel("suspicions of healthy nodes")
    axes.set_title(f"false suspicions: {len(times)} (refuted); false deaths: {deaths:.0f}")
    return _save(figure, path)
