"""Scenario ``membership``: SWIM + Lifeguard under faults, checked for accuracy.

How this works: every node runs the real ``Membership`` core with the node
defaults (``MembershipConfig``), joining through up to three seed nodes. The
nemesis faults the cluster for ``duration_s``; then everything is healed and
the run continues until every up node sees every other up node alive (or the
settle bound passes). Every membership event is recorded, and three
properties are checked:

- detection: a node that crashes and stays down is declared dead by every
  node that was up (and never paused) since the crash, within
  ``detection_bound_s``;
- no false deaths: no node declares a node dead that was up, never paused and
  not cut off by a partition during the ``detection_bound_s`` before that
  declaration (an observer that was itself paused then is excused: its view
  froze with it);
- convergence: after the faults heal, every up node holds every other up node
  live (alive, or suspect and refuting) and no down node live, within
  ``settle_bound_s``, and keeps doing so for one longest suspicion.

Metrics: per-observer detection times (p50, p99), false deaths, false
suspicions (suspected yet fine: no violation, Lifeguard's refutation handles
them), and the time to converge after healing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from consensus.core import ProtocolCore
from mesh.config import MembershipConfig
from mesh.membership import (
    Membership,
    MembershipEvent,
    MembershipEventKind,
    MembershipSettings,
)
from sim.network import NetworkSettings
from sim.node import NodeContext, SimNode
from sim.scenario import (
    FaultTimeline,
    RunOptions,
    RunResult,
    build_nemesis,
    heal_everything,
    percentile,
)
from sim.world import Violation, World

__all__ = ["MembershipScenario", "detection_bound_s", "settle_bound_s"]

_SEEDS_PER_NODE = 3
_GONE = (MembershipEventKind.DIED, MembershipEventKind.LEFT)


def detection_bound_s(settings: MembershipSettings, nodes: int) -> float:
    """How long after a crash every up node must have declared the node dead.

    The first failed probe of the crashed node (within ten probe intervals: with
    n - 1 nodes probing in random round-robin order, missing it that long has
    negligible probability), the probe's verdict, the longest suspicion, and
    the dead news spreading by piggyback, all at the longest health-stretched
    interval a lossy network typically causes (x2).
    """
    interval = settings.probe_interval_s
    verdict = max(interval, 3 * settings.probe_timeout_s)
    suspicion_max = (
        settings.suspicion_max_multiplier
        * settings.suspicion_min_multiplier
        * max(1.0, math.log10(max(nodes, 1)))
        * interval
    )
    spread = 3 * interval * math.ceil(math.log10(nodes + 1))
    return 2 * (10 * interval + verdict) + suspicion_max + spread


def settle_bound_s(settings: MembershipSettings, nodes: int) -> float:
    """How long after the last fault heals the views must agree again.

    Nodes on either side of a healed partition hold each other dead; they meet
    again through the push-pull with a dead member's address, which each node
    tries once per push-pull interval, then refute and spread the news.
    """
    return 2 * settings.push_pull_interval_s + detection_bound_s(settings, nodes)


@dataclass(frozen=True, slots=True)
class _Record:
    at: float
    observer: int
    kind: MembershipEventKind
    member: bytes


class _EventLog:
    """Every membership event, and each observer's current view."""

    def __init__(self, world_ids: Sequence[bytes]) -> None:
        self.index_of = {node_id: index for index, node_id in enumerate(world_ids)}
        self.records: list[_Record] = []

    def observe(self, node: SimNode, at: float, events: Sequence[MembershipEvent]) -> None:
        for event in events:
            self.records.append(_Record(at, node.index, event.kind, event.member.node_id))


class MembershipScenario:
    """SWIM membership under the nemesis; see the module docstring."""

    name = "membership"

    def __init__(self, settings: MembershipSettings | None = None,
                 tick_interval_s: float = 0.1) -> None:
        self.settings = settings or MembershipConfig().to_settings()
        self.tick_interval_s = tick_interval_s

    def run(self, options: RunOptions) -> RunResult:
        """Run one seed; see the module docstring for what is checked."""
        settings, n = self.settings, options.nodes
        ids = World.node_ids_for(options.seed, n)
        nemesis = build_nemesis(options, heal_at=options.duration_s)
        log = _EventLog(ids)

        def factory(context: NodeContext) -> list[ProtocolCore]:
            seeds = [f"sim://n{i}" for i in range(min(n, _SEEDS_PER_NODE + 1))
                     if i != context.index][:_SEEDS_PER_NODE]
            return [Membership(node_id=context.node_id, name=context.name,
                               address=context.address, settings=settings, rng=context.rng,
                               seeds=seeds, now=context.now())]

        def on_events(node: SimNode, _core: ProtocolCore, events: list[object]) -> None:
            log.observe(node, world.now, events)  # type: ignore[arg-type]

        world = World(
            options.seed, n, factory,
            network=NetworkSettings(loss=options.loss or 0.0),
            tick_interval_s=self.tick_interval_s,
            nemesis=nemesis,
            on_events=on_events,
        )
        description = world.describe()
        world.advance(options.duration_s)
        heal_everything(world, options.loss or 0.0)
        settle = settle_bound_s(settings, n)
        stable = _StableAgreement(world, suspicion_max_s(settings, n))
        converged = world.run_until(stable.reached, options.duration_s + settle + stable.for_s,
                                    check_every_s=1.0)
        end = world.now
        agreed_at = stable.since if converged and stable.since is not None else math.nan
        timeline = FaultTimeline(nemesis.actions() if nemesis else [], options.duration_s)
        bound = detection_bound_s(settings, n)
        violations: list[Violation] = []
        samples, detection_violations = _detections(world, log, timeline, bound)
        violations += detection_violations
        false_deaths = _false_deaths(world, log, timeline, bound)
        violations += [
            Violation("membership.false_death", at,
                      f"{observer} declared {member} dead while it was up, never paused and "
                      f"not partitioned in the {bound:.1f} s before")
            for at, observer, member in false_deaths
        ]
        if not converged:
            violations.append(Violation("membership.convergence", end,
                                        f"views do not agree steadily {settle:.1f} s after "
                                        f"healing: " + _disagreement(world)))
        false_suspicions = _false_suspicions(world, log, timeline)
        return RunResult(
            scenario=self.name,
            seed=options.seed,
            violations=violations,
            trace_digest=world.trace_digest(),
            metrics={
                "detection_s_p50": percentile(samples, 0.5),
                "detection_s_p99": percentile(samples, 0.99),
                "detection_samples": float(len(samples)),
                "false_deaths": float(len(false_deaths)),
                "false_suspicions": float(len(false_suspicions)),
                "converge_s": agreed_at - options.duration_s,
                "detection_bound_s": bound,
                "settle_bound_s": settle,
            },
            samples={"detection_s": samples, "false_suspicion_at": false_suspicions},
            series={},
            description=description,
            stats=world.stats(),
        )


def suspicion_max_s(settings: MembershipSettings, nodes: int) -> float:
    """The longest a member can stay suspect before it is declared dead."""
    return (settings.suspicion_max_multiplier * settings.suspicion_min_multiplier
            * max(1.0, math.log10(max(nodes, 1))) * settings.probe_interval_s)


class _StableAgreement:
    """Views agree, and keep agreeing for as long as a suspicion can last.

    Suspects count as live (see ``_live``), so agreement must last one longest
    suspicion: a member cut off is then declared dead and breaks it.
    """

    def __init__(self, world: World, for_s: float) -> None:
        self.world = world
        self.for_s = for_s
        self.since: float | None = None

    def reached(self) -> bool:
        if not _converged(self.world):
            self.since = None
            return False
        if self.since is None:
            self.since = self.world.now
        return self.world.now - self.since >= self.for_s


def _view(node: SimNode) -> Membership | None:
    if not node.up:
        return None
    return node.core(Membership)


def _live(core: Membership) -> set[bytes]:
    # Suspects count as live: under steady loss some member is always briefly
    # suspected and refutes; agreement means nobody holds an up node dead.
    return set(core.live_node_ids())


def _converged(world: World) -> bool:
    up = {node.node_id for node in world.up_nodes()}
    for node in world.up_nodes():
        core = _view(node)
        if core is None or _live(core) != up - {node.node_id}:
            return False
    return True


def _disagreement(world: World) -> str:
    up = {node.node_id for node in world.up_nodes()}
    names = {node.node_id: node.name for node in world.nodes}
    problems = []
    for node in world.up_nodes():
        core = _view(node)
        if core is None:
            continue
        live = _live(core)
        missing = sorted(names[i] for i in up - {node.node_id} - live)
        extra = sorted(names[i] for i in live - up)
        if missing or extra:
            problems.append(f"{node.name} holds {missing} dead and wrongly {extra} live")
    return "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")


def _detections(world: World, log: _EventLog, timeline: FaultTimeline,
                bound: float) -> tuple[list[float], list[Violation]]:
    samples: list[float] = []
    violations: list[Violation] = []
    for name, crashed, restarted in timeline.crashes():
        crashed_node = world.node(name)
        check_until = min(restarted, crashed + bound, world.now)
        for observer in world.nodes:
            if observer is crashed_node or timeline.down_during(observer.name, crashed,
                                                                check_until):
                continue
            if timeline.paused_during(observer.name, crashed, check_until):
                continue
            declared = next(
                (r.at for r in log.records
                 if r.observer == observer.index and r.member == crashed_node.node_id
                 and r.kind in _GONE and crashed <= r.at <= restarted),
                None,
            )
            if declared is not None and declared <= crashed + bound:
                samples.append(declared - crashed)
            elif restarted >= crashed + bound and world.now >= crashed + bound:
                if _knew_before(log, observer.index, crashed_node.node_id, crashed):
                    violations.append(Violation(
                        "membership.detection", crashed + bound,
                        f"{observer.name} did not declare {name} (crashed at {crashed:.1f} s) "
                        f"dead within {bound:.1f} s"))
    return samples, violations


def _knew_before(log: _EventLog, observer: int, member: bytes, at: float) -> bool:
    """Did ``observer`` hold ``member`` as live just before ``at``?"""
    live = False
    for record in log.records:
        if record.at > at:
            break
        if record.observer == observer and record.member == member:
            live = record.kind not in (*_GONE, MembershipEventKind.FORGOTTEN)
    return live


def _false_deaths(world: World, log: _EventLog, timeline: FaultTimeline,
                  bound: float) -> list[tuple[float, str, str]]:
    names = [node.name for node in world.nodes]
    found = []
    for record in log.records:
        if record.kind is not MembershipEventKind.DIED:
            continue
        member_index = log.index_of.get(record.member)
        if member_index is None:
            continue
        member, observer = names[member_index], names[record.observer]
        start = record.at - bound
        if (timeline.down_during(member, start, record.at)
                or timeline.paused_during(member, start, record.at)
                or timeline.paused_during(observer, start, record.at)
                or timeline.cut_during(start, record.at)):
            continue
        found.append((record.at, observer, member))
    return found


def _false_suspicions(world: World, log: _EventLog, timeline: FaultTimeline) -> list[float]:
    names = [node.name for node in world.nodes]
    times = []
    for record in log.records:
        member_index = log.index_of.get(record.member)
        if record.kind is not MembershipEventKind.SUSPECTED or member_index is None:
            continue
        member, start = names[member_index], record.at - 5.0
        if not (timeline.down_during(member, start, record.at)
                or timeline.paused_during(member, start, record.at)
                or timeline.cut_during(start, record.at)):
            times.append(record.at)
    return times
