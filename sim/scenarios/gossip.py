"""Scenario ``gossip``: the replicated map and its anti-entropy under faults.

How this works: every node runs the real ``Membership`` and ``Gossip`` cores
with the node defaults; membership's live members feed gossip's peer list, as
in ``mesh.runtime``. After a warm-up, a workload writes from random up nodes:
each write of a fresh key (``w/<n>``) measures spread, and writes and deletes
on a few shared keys (``k/<n>``) exercise last-writer-wins and tombstones.
The nemesis faults the cluster for ``duration_s``; then everything heals and
the run goes on until the cluster converges or the settle bound passes.

Checked:

- convergence: within ``settle_bound_s`` of healing, every up node holds the
  same visible state (equal ``state_fingerprint``);
- no acknowledged write lost: a write that reached a node which then stayed up
  to the end is held (``has_version``) by every up node, and for each shared
  key every node's winner is at least as new as every such write.

Metric: gossip rounds from a write until every node up at that moment holds
it (p50, p99), and the fraction of nodes holding each write over time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from consensus.core import ProtocolCore
from consensus.gossip import Gossip, GossipSettings
from mesh.config import GossipConfig, MembershipConfig
from mesh.membership import Membership, MembershipSettings
from sim.network import NetworkSettings
from sim.node import NodeContext, SimNode
from sim.scenario import RunOptions, RunResult, build_nemesis, heal_everything, percentile
from sim.scenarios.membership import settle_bound_s
from sim.world import Violation, World

__all__ = ["GossipScenario"]

_SEEDS_PER_NODE = 3
_SHARED_KEYS = 8
_SPREAD_PREFIX = "w/"
_PLOTTED_WRITES = 30


@dataclass(slots=True)
class _Write:
    key: str
    origin: bytes
    version: int
    at: float
    timestamp: int
    writer_index: int
    deleted: bool = False
    #: node index -> that node's restart count when the write reached it
    reached: dict[int, int] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list)
    spread_s: float | None = None


class _Workload:
    """Writes from random nodes, and where each write has reached."""

    def __init__(self, world: World, rng_seed: int, interval_s: float, start_s: float,
                 stop_s: float) -> None:
        self.world = world
        self.rng = world.streams.stream("workload")
        self.interval_s = interval_s
        self.stop_s = stop_s
        self.writes: list[_Write] = []
        self.spread_writes: dict[str, _Write] = {}
        self._up_count_hint = len(world.nodes)
        world.call_at(start_s, self._write)

    def _write(self) -> None:
        world = self.world
        up = world.up_nodes()
        if up:
            node = up[self.rng.randrange(len(up))]
            gossip = node.core(Gossip)
            number = len(self.writes)
            if number % 2 == 0:
                key, value = f"{_SPREAD_PREFIX}{number}", number
            else:
                key, value = f"k/{self.rng.randrange(_SHARED_KEYS)}", number
            if key.startswith("k/") and self.rng.random() < 0.2:
                entry = gossip.delete(key)
                deleted = True
            else:
                entry = gossip.set(key, value)
                deleted = False
            if entry is not None:
                write = _Write(key, gossip.origin, gossip.last_version(), world.now,
                               entry.timestamp, node.index, deleted)
                write.reached[node.index] = node.restarts
                write.arrivals.append(world.now)
                self.writes.append(write)
                if key.startswith(_SPREAD_PREFIX):
                    self.spread_writes[key] = write
            node.flush()
        if world.now + self.interval_s < self.stop_s:
            world.call_at(world.now + self.interval_s, self._write)

    def arrived(self, node: SimNode, key: str) -> None:
        write = self.spread_writes.get(key)
        if write is None or (node.index in write.reached and (
            write.reached[node.index] == node.restarts
        )):
            return
        write.reached[node.index] = node.restarts
        write.arrivals.append(self.world.now)
        if write.spread_s is None and len(write.reached) >= self._up_count_hint:
            self._check_spread(write)

    def _check_spread(self, write: _Write) -> None:
        up = self.world.up_nodes()
        self._up_count_hint = len(up)
        if all(write.reached.get(n.index) == n.restarts for n in up):
            write.spread_s = self.world.now - write.at


class GossipScenario:
    """Gossip state under the nemesis; see the module docstring."""

    name = "gossip"

    def __init__(
        self,
        gossip_settings: GossipSettings | None = None,
        membership_settings: MembershipSettings | None = None,
        tick_interval_s: float = 0.2,
        write_interval_s: float = 0.5,
    ) -> None:
        self.gossip_settings = gossip_settings or GossipConfig().to_settings()
        self.membership_settings = membership_settings or MembershipConfig().to_settings()
        self.tick_interval_s = tick_interval_s
        self.write_interval_s = write_interval_s

    def settle_bound_s(self, nodes: int) -> float:
        """How long after healing every up node must hold the same state.

        Membership must first re-admit nodes each side declared dead; then
        anti-entropy needs a few rounds per hop, over log2(n) hops.
        """
        rounds = 4 * (math.ceil(math.log2(max(nodes, 2))) + 4)
        return settle_bound_s(self.membership_settings, nodes) + (
            rounds * self.gossip_settings.round_interval_s
        )

    def run(self, options: RunOptions) -> RunResult:
        """Run one seed; see the module docstring for what is checked."""
        n = options.nodes
        nemesis = build_nemesis(options, heal_at=options.duration_s)
        gossip_settings, membership_settings = self.gossip_settings, self.membership_settings

        # The cluster starts formed (each node knows every member, as after a join):
        # this scenario is about gossip, and a thousand-node join storm is the
        # membership scenario's business. Restarted nodes rejoin through seeds.
        roster = [(node_id, f"n{i}", f"sim://n{i}")
                  for i, node_id in enumerate(World.node_ids_for(options.seed, n))]

        def factory(context: NodeContext) -> list[ProtocolCore]:
            seeds = [f"sim://n{i}" for i in range(min(n, _SEEDS_PER_NODE + 1))
                     if i != context.index][:_SEEDS_PER_NODE]
            membership = Membership(node_id=context.node_id, name=context.name,
                                    address=context.address, settings=membership_settings,
                                    rng=context.rng, seeds=seeds, now=context.now(),
                                    known_members=roster if context.restarts == 0 else ())
            gossip = Gossip(node_id=context.node_id, settings=gossip_settings, rng=context.rng,
                            wall_ms=context.wall_ms, now=context.now())
            return [membership, gossip]

        # Gossip learns membership changes at most once per round: a change of
        # view costs it O(members), and a joining cluster changes views often.
        workload: _Workload | None = None
        members_changed: set[int] = set()
        members_updated_at = [-math.inf] * n

        def on_events(node: SimNode, core: ProtocolCore, _events: list[Any]) -> None:
            if isinstance(core, Membership):
                members_changed.add(node.index)

        def node_hook(node: SimNode) -> None:
            if not node.up:
                return
            gossip = node.core(Gossip)
            index = node.index
            now = node.now()
            if index in members_changed and (
                now - members_updated_at[index] >= gossip_settings.round_interval_s
            ):
                members_changed.discard(index)
                members_updated_at[index] = now
                gossip.update_members(node.core(Membership).live_node_ids())
            for change in gossip.take_changes():
                if workload is not None and change.key.startswith(_SPREAD_PREFIX):
                    workload.arrived(node, change.key)

        world = World(
            options.seed, n, factory,
            network=NetworkSettings(loss=options.loss or 0.0),
            tick_interval_s=self.tick_interval_s,
            nemesis=nemesis,
            node_hook=node_hook,
            on_events=on_events,
        )
        warmup = min(10.0, options.duration_s / 4)
        workload = _Workload(world, options.seed, self.write_interval_s, warmup,
                             options.duration_s)
        description = world.describe()
        world.advance(options.duration_s)
        heal_everything(world, options.loss or 0.0)
        settle = self.settle_bound_s(n)
        converged = world.run_until(lambda: _converged(world, workload),
                                    options.duration_s + settle, check_every_s=1.0)
        violations = _violations(world, workload, settle)
        round_s = gossip_settings.round_interval_s
        spread_rounds = [w.spread_s / round_s for w in workload.spread_writes.values()
                         if w.spread_s is not None]
        return RunResult(
            scenario=self.name,
            seed=options.seed,
            violations=violations,
            trace_digest=world.trace_digest(),
            metrics={
                "rounds_to_all_p50": percentile(spread_rounds, 0.5),
                "rounds_to_all_p99": percentile(spread_rounds, 0.99),
                "spread_samples": float(len(spread_rounds)),
                "writes": float(len(workload.writes)),
                "converge_s": world.now - options.duration_s if converged else math.nan,
                "settle_bound_s": settle,
            },
            samples={"rounds_to_all": spread_rounds},
            series={"spread": _spread_series(workload, n, round_s)},
            description=description,
            stats=world.stats(),
        )


def _durable(world: World, write: _Write) -> bool:
    """Did the write reach a node that then stayed up, unrestarted, to the end?"""
    return any(world.nodes[i].up and world.nodes[i].restarts == restarts
               for i, restarts in write.reached.items())


def _converged(world: World, workload: _Workload) -> bool:
    up = world.up_nodes()
    if not up:
        return True
    fingerprints = {node.core(Gossip).state_fingerprint() for node in up}
    if len(fingerprints) != 1:
        return False
    gossip = up[0].core(Gossip)
    return all(gossip.has_version(w.origin, w.version) for w in workload.writes
               if _durable(world, w))


def _violations(world: World, workload: _Workload, settle: float) -> list[Violation]:
    up = world.up_nodes()
    violations = []
    groups: dict[bytes, list[str]] = {}
    for node in up:
        groups.setdefault(node.core(Gossip).state_fingerprint(), []).append(node.name)
    if len(groups) > 1:
        summary = "; ".join(f"{len(names)} node(s) like {names[:3]}" for names in
                            sorted(groups.values(), key=len, reverse=True))
        violations.append(Violation("gossip.convergence", world.now,
                                    f"{len(groups)} different states {settle:.1f} s after "
                                    f"healing: {summary}"))
    for write in workload.writes:
        if not _durable(world, write):
            continue
        missing = [node.name for node in up
                   if not node.core(Gossip).has_version(write.origin, write.version)]
        if missing:
            violations.append(Violation(
                "gossip.lost_write", world.now,
                f"write of {write.key!r} at {write.at:.2f} s (by n{write.writer_index}) is "
                f"missing on {len(missing)} node(s), e.g. {missing[:3]}"))
    newest: dict[str, _Write] = {}
    for write in workload.writes:
        if _durable(world, write) and (
            write.key not in newest or write.timestamp > newest[write.key].timestamp
        ):
            newest[write.key] = write
    for key, write in sorted(newest.items()):
        for node in up:
            entry = node.core(Gossip).entry(key)
            gone_as_expected = entry is None and write.deleted  # tombstone collected
            if not gone_as_expected and (entry is None or entry.timestamp < write.timestamp):
                violations.append(Violation(
                    "gossip.lost_write", world.now,
                    f"{node.name} holds an older winner for {key!r} than the write at "
                    f"{write.at:.2f} s (by n{write.writer_index})"))
                break
    return violations


def _spread_series(workload: _Workload, nodes: int, round_s: float) -> list[list[float]]:
    """For the first writes: (rounds since the write, fraction of nodes holding it) pairs."""
    series = []
    for write in list(workload.spread_writes.values())[:_PLOTTED_WRITES]:
        points = [((at - write.at) / round_s, (count + 1) / nodes)
                  for count, at in enumerate(sorted(write.arrivals))]
        series.append([value for point in points for value in point])
    return series
