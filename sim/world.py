"""The world: nodes, network, faults and checkers on one virtual clock, from one seed.

How this works: ``World(seed, n, factory)`` derives every node's id and every
random stream from ``seed`` (``sim.rng``), builds ``n`` ``SimNode``s and starts
their cores, and puts the nemesis's whole fault schedule on the event heap.
``run(until)`` then processes events in (time, sequence) order: tick timers,
message arrivals and faults. Nothing depends on the wall clock or on hash
order, so a seed replays its run exactly; ``trace_digest()`` proves it.

Message path: a core's ``Outgoing`` is resolved to a node (by id or by
``sim://nK`` address; unknown destinations are counted and dropped) and handed
to the ``Network``, which schedules its arrival. On arrival a crashed
destination drops it, a paused one queues it (bounded), a live one gets it
recorded in the trace, shown to ``on_deliver``, and stepped into the core.

After each delivery or tick batch of a node the world calls ``node_hook(node)``
(scenarios use it to carry one core's output into another on the same node),
drains the outboxes again if there is such a hook, and then calls every
checker's ``on_step``. ``run`` ends by collecting each checker's ``at_end``
violations.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from random import Random
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from consensus.core import Outgoing, ProtocolCore
from sim.engine import Engine
from sim.nemesis import FaultAction, Nemesis
from sim.network import Network, NetworkSettings
from sim.node import CoreFactory, InFlight, NodeState, SimNode
from sim.rng import Streams
from sim.trace import TraceMode, TraceRecorder

__all__ = [
    "DEFAULT_EPOCH_MS",
    "Checker",
    "DeliverObserver",
    "EventObserver",
    "NodeRef",
    "StepChecker",
    "Violation",
    "World",
    "WorldStats",
]

#: Wall-clock origin of every simulated node (2024-01-01T00:00:00Z): fixed, so runs replay.
DEFAULT_EPOCH_MS = 1_704_067_200_000

#: A node named by object, name ("n3"), id (16 bytes) or index.
NodeRef = SimNode | str | bytes | int

#: ``on_deliver(src, dst, kind, payloads)``, called before the payloads are stepped.
DeliverObserver = Callable[[SimNode, SimNode, str, tuple[BaseModel, ...]], None]

#: ``on_events(node, core, events)`` for what a core's ``take_events()`` returned.
EventObserver = Callable[[SimNode, ProtocolCore, list[Any]], None]


@dataclass(frozen=True, slots=True)
class Violation:
    """A property a checker found broken."""

    checker: str
    at: float
    message: str

    def __str__(self) -> str:
        return f"[{self.checker} @ {self.at:.3f}s] {self.message}"


class Checker(Protocol):
    """Verifies a property of a run; reports at the end.

    A checker may also define ``on_step(world, node)`` (see ``StepChecker``); the
    world calls it after every delivery or tick batch, so it must be cheap.
    """

    def at_end(self, world: World) -> list[Violation]:
        """The violations found over the run so far (empty if none)."""
        ...


@runtime_checkable
class StepChecker(Checker, Protocol):
    """A checker that also watches every step."""

    def on_step(self, world: World, node: SimNode) -> None:
        """Observe ``node`` right after one of its delivery or tick batches."""
        ...


@dataclass(frozen=True, slots=True)
class WorldStats:
    """How much a run did and how fast the engine went."""

    virtual_time_s: float
    events: int
    ticks: int
    messages_sent: int
    messages_delivered: int
    faults: int
    wall_s: float
    events_per_s: float
    network: dict[str, int]

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"virtual {self.virtual_time_s:.1f}s, {self.events} events "
            f"({self.events_per_s:,.0f}/s over {self.wall_s:.2f}s wall), "
            f"{self.ticks} ticks, {self.messages_sent} sent, "
            f"{self.messages_delivered} delivered, {self.faults} faults"
        )


_UP = NodeState.UP

# Garbage-collector thresholds while a world builds or runs (see ``_relaxed_collector``).
_GC_THRESHOLDS = tuple(int(x) for x in os.environ.get("SIMGC", "50000,20,100").split(","))


@contextmanager
def _relaxed_collector() -> Iterator[None]:
    """Run the block with CPython's cyclic collector triggered far less often.

    A large world is millions of long-lived objects (a thousand-node membership
    table per node), and the default thresholds rescan all of them every few
    hundred thousand allocations: about a sixth of a thousand-node run. Cycles
    are still collected, only in bigger batches; the caller's thresholds are
    restored afterwards. Reference counting, which frees almost everything the
    simulation drops, is unaffected.
    """
    saved = gc.get_threshold()
    pairs = zip(_GC_THRESHOLDS, saved, strict=False)
    gc.set_threshold(*(max(ours, theirs) for ours, theirs in pairs))
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _call(function: Callable[[], None]) -> None:
    function()


class World:
    """A simulated cluster of ``n_nodes`` nodes running the cores ``factory`` builds.

    Node ``i`` is named ``n{i}``, listens at ``sim://n{i}`` and has the id
    ``World.node_ids_for(seed, n)[i]``, so a factory can know its peers before
    the world exists.
    """

    @staticmethod
    def node_ids_for(seed: int, n_nodes: int) -> list[bytes]:
        """The ids the nodes of a world with this seed will have, in index order."""
        streams = Streams(seed)
        return [streams.node_id(index) for index in range(n_nodes)]

    def __init__(
        self,
        seed: int,
        n_nodes: int,
        factory: CoreFactory,
        *,
        network: NetworkSettings | None = None,
        tick_interval_s: float = 0.1,
        nemesis: Nemesis | None = None,
        checkers: Sequence[Checker] = (),
        node_hook: Callable[[SimNode], None] | None = None,
        on_deliver: DeliverObserver | None = None,
        on_events: EventObserver | None = None,
        torn_writes: bool = False,
        trace: TraceMode = TraceMode.FULL,
        trace_keep: int = 0,
        epoch_ms: int = DEFAULT_EPOCH_MS,
        monotonic_spread_s: float = 0.0,
    ) -> None:
        """Build and start the world.

        ``torn_writes``: a crash keeps a random prefix of unsynced append tails.
        ``trace_keep``: how many recent trace records to keep as text.
        ``monotonic_spread_s``: each node's monotonic clock starts at a random
        offset in [0, spread), as real processes' clocks do (0: all start at 0).
        """
        if n_nodes < 1:
            raise ValueError(f"n_nodes ({n_nodes}) must be at least 1")
        if tick_interval_s <= 0:
            raise ValueError(f"tick_interval_s ({tick_interval_s}) must be positive")
        self.seed = seed
        self.streams = Streams(seed)
        self.engine = Engine()
        self.network_settings = network or NetworkSettings()
        self.network = Network(self.engine, self.streams.stream("network"), self.network_settings)
        self.tick_interval_s = tick_interval_s
        self.torn_writes = torn_writes
        self.nemesis = nemesis
        self.checkers: list[Checker] = list(checkers)
        self.node_hook = node_hook
        self.on_deliver = on_deliver
        self.event_observers: list[EventObserver] = [on_events] if on_events else []
        self.trace = TraceRecorder(trace, trace_keep)
        #: Every fault applied so far: (virtual time, script text).
        self.faults: list[tuple[float, str]] = []
        self._step_checkers: list[StepChecker] = []
        self._schedule_rng = self.streams.stream("schedule")
        self._disk_rng = self.streams.stream("disk")
        self._wall_s = 0.0
        self._deliver_bound = self._arrive
        self.nodes: list[SimNode] = []
        spread_rng = self.streams.stream("monotonic")
        for index in range(n_nodes):
            offset = spread_rng.uniform(0.0, monotonic_spread_s) if monotonic_spread_s else 0.0
            self.nodes.append(
                SimNode(
                    index=index,
                    node_id=self.streams.node_id(index),
                    engine=self.engine,
                    factory=factory,
                    host=self,
                    tick_interval_s=tick_interval_s,
                    epoch_ms=epoch_ms,
                    monotonic_offset_s=offset,
                )
            )
        self._by_id = {node.node_id: node for node in self.nodes}
        self._by_name = {node.name: node for node in self.nodes}
        self._by_address = {node.address: node for node in self.nodes}
        assert len(self._by_id) == n_nodes, "node id collision"
        self._refresh_step_checkers()
        if nemesis is not None:
            self._schedule_faults(nemesis.actions())
        with _relaxed_collector():
            for node in self.nodes:
                node.start(self._node_rng(node), self._phase())

    # -- lookup --------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Current virtual time (seconds)."""
        return self.engine.now

    def node(self, ref: NodeRef) -> SimNode:
        """The node named by object, name, id or index; KeyError if there is none."""
        if isinstance(ref, SimNode):
            return ref
        found: SimNode | None
        if isinstance(ref, str):
            found = self._by_name.get(ref) or self._by_address.get(ref)
        elif isinstance(ref, bytes):
            found = self._by_id.get(ref)
        else:
            found = self.nodes[ref] if 0 <= ref < len(self.nodes) else None
        if found is None:
            raise KeyError(f"no node {ref!r} in a world of {len(self.nodes)}")
        return found

    def up_nodes(self) -> list[SimNode]:
        """Nodes whose process is running, in index order."""
        return [node for node in self.nodes if node.state is NodeState.UP]

    # -- running -------------------------------------------------------------------

    def advance(self, until: float) -> None:
        """Process every event up to virtual time ``until`` (no checks)."""
        if until < self.now:
            raise ValueError(f"cannot run until {until}: the time is already {self.now}")
        self._refresh_step_checkers()
        started = time.perf_counter()  # wall clock: for stats() only
        try:
            with _relaxed_collector():
                self.engine.run(until)
        finally:
            self._wall_s += time.perf_counter() - started

    def run(self, until: float) -> list[Violation]:
        """Advance to ``until``, then return every checker's ``at_end`` violations.

        Each call asks the checkers again; use ``advance`` to move on without checking.
        """
        self.advance(until)
        return self.check()

    def run_until(
        self, predicate: Callable[[], bool], deadline: float, *, check_every_s: float | None = None
    ) -> bool:
        """Advance until ``predicate()`` holds or ``deadline`` passes; True if it held.

        The predicate is evaluated every ``check_every_s`` of virtual time (default:
        the tick interval), so it may be moderately expensive.
        """
        step = check_every_s or self.tick_interval_s
        # Relaxed across the predicate too: handing the default thresholds back
        # between steps would set off a full collection at each one.
        with _relaxed_collector():
            if predicate():
                return True
            while self.now < deadline:
                self.advance(min(self.now + step, deadline))
                if predicate():
                    return True
        return False

    def check(self) -> list[Violation]:
        """Every checker's ``at_end`` violations, in checker order."""
        violations: list[Violation] = []
        for checker in self.checkers:
            violations.extend(checker.at_end(self))
        return violations

    def call_at(self, at: float, function: Callable[[], None]) -> None:
        """Run ``function()`` at virtual time ``at`` (scenario actions, client requests).

        If it pokes a core directly, it should call that node's ``flush()`` after.
        """
        if at < self.now:
            raise ValueError(f"call_at time ({at}) is before the current time ({self.now})")
        self.engine.at(at, _call, function)

    def inject(
        self,
        node: NodeRef,
        kind: str,
        payloads: Sequence[BaseModel],
        *,
        sender: NodeRef | None = None,
    ) -> bool:
        """Deliver a local message to ``node`` now, bypassing the network.

        For requests a node makes of itself (propose, submit). Traced like any
        delivery. Returns False, dropping it, if the node is not up.
        """
        dst = self.node(node)
        src = dst if sender is None else self.node(sender)
        if dst.state is not NodeState.UP:
            return False
        self._deliver((src, dst, kind, tuple(payloads)))
        return True

    # -- the NodeHost interface (called by SimNode) ------------------------------------

    def send(self, node: SimNode, out: Outgoing) -> None:
        """Resolve ``out``'s destination and hand it to the network.

        ``attach_certificate`` is ignored: simulated peers are all certified, and
        the simulator models delivery, not the envelope layer.
        """
        if out.to_node is not None:
            dst = self._by_id.get(out.to_node)
        else:
            dst = self._by_address.get(out.to_address)  # type: ignore[arg-type]
        if dst is None:
            self.network.counters.sent += 1
            self.network.counters.dropped_unknown += 1
            return
        self.network.send(
            node.node_id, dst.node_id, self._deliver_bound, (node, dst, out.kind, out.payloads)
        )

    def after_batch(self, node: SimNode) -> None:
        """Run the node hook (then drain what it caused) and the step checkers."""
        if self.node_hook is not None:
            self.node_hook(node)
            node.drain()
        for checker in self._step_checkers:
            checker.on_step(self, node)

    def core_events(self, node: SimNode, core: ProtocolCore, events: list[Any]) -> None:
        """Pass a core's events to every observer."""
        for observer in self.event_observers:
            observer(node, core, events)

    # -- message arrival -----------------------------------------------------------

    def _arrive(self, message: InFlight) -> None:
        src, dst, kind, payloads = message
        state = dst.state
        if state is _UP:
            # ``_deliver`` inlined: this is the hottest path of the simulator.
            self.network.counters.delivered += 1
            self.trace.delivery(self.engine.now, src.index, dst.index, kind, payloads)
            if self.on_deliver is not None:
                self.on_deliver(src, dst, kind, payloads)
            dst.deliver(src.node_id, kind, payloads)
        elif state is NodeState.PAUSED:
            counters = self.network.counters
            if len(dst.inbox) >= self.network_settings.paused_inbox_messages_max:
                counters.queue_overflow += 1
            else:
                counters.queued += 1
                dst.inbox.append(message)
        else:
            self.network.counters.dropped_dead += 1

    def _deliver(self, message: InFlight) -> None:
        src, dst, kind, payloads = message
        self.network.counters.delivered += 1
        self.trace.delivery(self.engine.now, src.index, dst.index, kind, payloads)
        if self.on_deliver is not None:
            self.on_deliver(src, dst, kind, payloads)
        dst.deliver(src.node_id, kind, payloads)

    # -- faults --------------------------------------------------------------------

    def apply(self, action: FaultAction) -> None:
        """Apply one fault now (the nemesis's scheduled actions come through here)."""
        for name in action.nodes():
            self.node(name)  # KeyError before anything changes
        self.trace.fault(self.now, action.describe())
        self.faults.append((self.now, action.describe()))
        kind = action.kind
        if kind == "partition":
            self.network.partition([self._ids(group) for group in action.groups])
        elif kind == "oneway":
            sources, destinations = action.groups
            self.network.block_one_way(self._ids(sources), self._ids(destinations))
        elif kind == "heal":
            self.network.heal()
        elif kind in ("loss", "duplicate", "reorder"):
            self.network.set_rates(**{kind: action.value})
        elif kind == "skew":
            self.node(action.node).skew_ms = int(action.value)
        elif kind == "crash":
            self._crash(self.node(action.node))
        elif kind == "restart":
            self._restart(self.node(action.node))
        elif kind == "pause":
            self.node(action.node).pause()
        elif kind == "resume":
            self._resume(self.node(action.node))
        else:  # pragma: no cover - FaultAction validates its kind
            raise AssertionError(action)

    def crash(self, node: NodeRef) -> None:
        """Kill ``node``'s process: cores and in-flight inbound gone, unsynced disk lost."""
        self.apply(FaultAction(self.now, "crash", (self.node(node).name,)))

    def restart(self, node: NodeRef) -> None:
        """Start a new incarnation of ``node`` (crashing it first if it runs)."""
        self.apply(FaultAction(self.now, "restart", (self.node(node).name,)))

    def pause(self, node: NodeRef) -> None:
        """Stop ``node`` (no ticks, no deliveries; arrivals are queued)."""
        self.apply(FaultAction(self.now, "pause", (self.node(node).name,)))

    def resume(self, node: NodeRef) -> None:
        """Continue a paused ``node``: queued messages are delivered, ticks resume."""
        self.apply(FaultAction(self.now, "resume", (self.node(node).name,)))

    def set_skew(self, node: NodeRef, skew_ms: int) -> None:
        """Set ``node``'s wall-clock skew (ms, signed; 0 is the true virtual time)."""
        self.apply(FaultAction(self.now, "skew", (self.node(node).name, str(int(skew_ms)))))

    def set_rates(
        self,
        *,
        loss: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
    ) -> None:
        """Change the network's loss, duplication or reordering probability."""
        for kind, value in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            if value is not None:
                self.apply(FaultAction(self.now, kind, (repr(float(value)),)))

    def partition(self, groups: Sequence[Iterable[NodeRef]]) -> None:
        """Cut every link between nodes of different groups, both ways."""
        self.apply(FaultAction(self.now, "partition", tuple(self._names(g) for g in groups)))

    def block_one_way(self, sources: Iterable[NodeRef], destinations: Iterable[NodeRef]) -> None:
        """Drop every message from ``sources`` to ``destinations`` (not the reverse)."""
        args = (self._names(sources), self._names(destinations))
        self.apply(FaultAction(self.now, "oneway", args))

    def heal(self) -> None:
        """Remove every partition and one-way block."""
        self.apply(FaultAction(self.now, "heal"))

    def _crash(self, node: SimNode) -> None:
        disk_rng = self._disk_rng if self.torn_writes else None
        self.network.counters.dropped_dead += node.crash(disk_rng)

    def _restart(self, node: SimNode) -> None:
        if node.state is not NodeState.CRASHED:
            self._crash(node)
        node.restart(self._node_rng(node, node.restarts + 1), self._phase())

    def _resume(self, node: SimNode) -> None:
        for message in node.resume():
            if node.state is not NodeState.UP:
                # A hook crashed or paused it again while it was catching up.
                self._arrive(message)
                continue
            self._deliver(message)

    def _schedule_faults(self, actions: Iterable[FaultAction]) -> None:
        for action in actions:
            for name in action.nodes():
                if name not in self._by_name:
                    raise ValueError(
                        f"fault {action.describe()!r} names node {name!r}, "
                        f"but the world has n0..n{len(self.nodes) - 1}"
                    )
            self.engine.at(action.at, self.apply, action)

    def _names(self, refs: Iterable[NodeRef]) -> str:
        return ",".join(self.node(ref).name for ref in refs)

    def _ids(self, names: Collection[str]) -> list[bytes]:
        return [self._by_name[name].node_id for name in names]

    # -- randomness ----------------------------------------------------------------

    def _node_rng(self, node: SimNode, incarnation: int | None = None) -> Random:
        number = node.restarts if incarnation is None else incarnation
        return self.streams.stream(f"node/{node.index}/incarnation/{number}")

    def _phase(self) -> float:
        # Each (re)start ticks first at a random phase, so nodes never tick in lockstep.
        return self._schedule_rng.uniform(0.0, self.tick_interval_s)

    def _refresh_step_checkers(self) -> None:
        self._step_checkers = [c for c in self.checkers if isinstance(c, StepChecker)]

    # -- reporting -----------------------------------------------------------------

    def trace_digest(self) -> str:
        """Hex BLAKE2b over every delivery (time, src, dst, kind[, payload]) and fault so far."""
        return self.trace.hexdigest()

    def stats(self) -> WorldStats:
        """Counters of the run so far, with the engine's speed."""
        events = self.engine.events_processed
        return WorldStats(
            virtual_time_s=self.now,
            events=events,
            ticks=sum(node.counters.ticks for node in self.nodes),
            messages_sent=self.network.counters.sent,
            messages_delivered=self.network.counters.delivered,
            faults=len(self.faults),
            wall_s=self._wall_s,
            events_per_s=events / self._wall_s if self._wall_s > 0 else 0.0,
            network=self.network.counters.as_dict(),
        )

    def describe(self) -> str:
        """The run header: seed, every option, and the fault schedule."""
        lines = [
            f"# seed={self.seed} nodes={len(self.nodes)} tick_interval_s={self.tick_interval_s} "
            f"torn_writes={self.torn_writes} trace={self.trace.mode.value}",
            f"# network: {self.network_settings.describe()}",
        ]
        if self.nemesis is not None:
            lines.append(self.nemesis.describe())
        return "\n".join(lines)
