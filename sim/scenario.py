"""What a simulation scenario is, and the pieces every scenario shares.

How this works: a scenario (``sim.scenarios``) builds a ``World`` for one seed
from ``RunOptions``, drives it (faults for ``duration_s`` of virtual time, then
a settle phase with every fault healed), and returns a ``RunResult``: the
checkers' violations, the trace digest, the metrics its checkers measured and
the time series its report plots. ``FaultTimeline`` answers the question every
checker asks: was this node crashed, paused or cut off during that interval?
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sim.nemesis import FaultAction, FaultKind, Nemesis, ScriptedNemesis, SwarmNemesis
from sim.node import NodeState
from sim.rng import Streams
from sim.world import Violation, World, WorldStats

__all__ = [
    "FaultTimeline",
    "RunOptions",
    "RunResult",
    "Scenario",
    "build_nemesis",
    "heal_everything",
    "percentile",
]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """One run: a seed, a cluster size, a fault period and the faults to draw from.

    ``faults`` empty and ``script`` None: no faults. ``script``: a scripted
    schedule (``sim.nemesis.parse_script``) instead of a drawn one.
    """

    seed: int
    nodes: int
    duration_s: float
    faults: frozenset[FaultKind] = frozenset()
    script: str | None = None
    loss: float | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes ({self.nodes}) must be at least 1")
        if not self.duration_s > 0:
            raise ValueError(f"duration ({self.duration_s}) must be positive")
        if self.loss is not None and not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss ({self.loss}) must be in [0, 1)")


@dataclass(slots=True)
class RunResult:
    """What one seed's run found and measured."""

    scenario: str
    seed: int
    violations: list[Violation]
    trace_digest: str
    metrics: dict[str, float]
    samples: dict[str, list[float]] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    stats: WorldStats | None = None

    @property
    def passed(self) -> bool:
        """True when no checker found a violation."""
        return not self.violations


class Scenario(Protocol):
    """A named way to build, fault and check a simulated cluster."""

    name: str

    def run(self, options: RunOptions) -> RunResult:
        """Run one seed."""
        ...


def build_nemesis(options: RunOptions, heal_at: float) -> Nemesis | None:
    """The fault schedule for ``options``: scripted, drawn from the seed, or none."""
    if options.script is not None:
        return ScriptedNemesis.parse(options.script)
    if not options.faults:
        return None
    return SwarmNemesis(
        options.faults,
        Streams(options.seed).stream("nemesis"),
        duration=options.duration_s,
        nodes=options.nodes,
        heal_at=heal_at,
    )


class FaultTimeline:
    """Intervals during which nodes were down, paused or possibly cut off.

    ``end`` is when the fault period ends (``heal_everything``).
    """

    def __init__(self, actions: Sequence[FaultAction], end: float) -> None:
        self._down: dict[str, list[tuple[float, float]]] = {}
        self._paused: dict[str, list[tuple[float, float]]] = {}
        self._cut: list[tuple[float, float]] = []
        self._lossy: list[tuple[float, float]] = []
        crashed_at: dict[str, float] = {}
        paused_at: dict[str, float] = {}
        cut_since: float | None = None
        for action in actions:
            if action.kind == "crash":
                crashed_at.setdefault(action.nodes()[0], action.at)
            elif action.kind == "restart":
                name = action.nodes()[0]
                if name in crashed_at:
                    self._down.setdefault(name, []).append((crashed_at.pop(name), action.at))
            elif action.kind == "pause":
                paused_at.setdefault(action.nodes()[0], action.at)
            elif action.kind == "resume":
                name = action.nodes()[0]
                if name in paused_at:
                    self._paused.setdefault(name, []).append((paused_at.pop(name), action.at))
            elif action.kind in ("partition", "oneway"):
                cut_since = action.at if cut_since is None else cut_since
            elif action.kind == "heal" and cut_since is not None:
                self._cut.append((cut_since, action.at))
                cut_since = None
        for name, since in crashed_at.items():
            self._down.setdefault(name, []).append((since, math.inf))
        # heal_everything ends pauses and partitions at ``end``; crashes outlast it.
        for name, since in paused_at.items():
            self._paused.setdefault(name, []).append((since, end))
        if cut_since is not None:
            self._cut.append((cut_since, end))
        self.end = end

    @staticmethod
    def _overlaps(intervals: Collection[tuple[float, float]], start: float, stop: float) -> bool:
        return any(a <= stop and start < b for a, b in intervals)

    def down_during(self, name: str, start: float, stop: float) -> bool:
        """Was ``name`` crashed at any time in [start, stop]?"""
        return self._overlaps(self._down.get(name, ()), start, stop)

    def paused_during(self, name: str, start: float, stop: float) -> bool:
        """Was ``name`` paused at any time in [start, stop]?"""
        return self._overlaps(self._paused.get(name, ()), start, stop)

    def cut_during(self, start: float, stop: float) -> bool:
        """Was any partition (symmetric or one-way) in force during [start, stop]?"""
        return self._overlaps(self._cut, start, stop)

    def crashes(self) -> list[tuple[str, float, float]]:
        """Every crash as (node name, crashed at, restarted at or inf)."""
        return sorted(
            (name, a, b) for name, intervals in self._down.items() for a, b in intervals
        )


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def heal_everything(world: World, loss: float) -> None:
    """End the fault period: heal partitions, restore the base loss rate and no
    duplication or reordering, resume paused nodes and zero clock skews.

    Crashed nodes stay down: a crash without a restart is part of the scenario
    (the checkers then expect them detected, not back).
    """
    if world.network.partitioned:
        world.heal()
    world.set_rates(loss=loss, duplicate=0.0, reorder=0.0)
    for node in world.nodes:
        if node.state is NodeState.PAUSED:
            world.resume(node)
        if node.skew_ms:
            world.set_skew(node, 0)
