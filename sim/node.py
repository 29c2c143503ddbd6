"""A simulated node: hosts protocol cores and drives them like ``mesh.runtime`` does.

How this works: a ``SimNode`` is one machine of the simulation. Its process is a
set of cores built by the scenario's factory from a ``NodeContext`` (identity,
a random stream for this incarnation, virtual clocks, the node's disk). The node
hands each arriving message to the core whose ``message_kinds`` names its kind,
one ``Incoming`` per payload, and ticks every core every ``tick_interval_s`` of
virtual time, starting at a phase the world draws so nodes are not in lockstep.
After each delivery or tick it drains the outbox of the core it just ran (sends
in order, as the runtime flushes after a batch) and any events the core exposes
through an optional ``take_events()``, then lets the world run its per-node hook
and checkers.

The tick timer is a single engine event per node, rescheduled as it fires and
tagged with a token: crashing or pausing the node bumps the token, so a timer
event already on the heap finds itself stale and does nothing, rather than
having to be removed from the heap.

A crash throws the cores away (their memory is gone) and keeps only what the
disk had synced; a restart builds new cores with the same node id and the
restart count one higher. A pause stops ticks and deliveries; what arrives
meanwhile waits in a bounded queue (managed by the world) until ``resume``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from random import Random
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from consensus.core import Incoming, Outgoing, ProtocolCore
from sim.disk import SimDisk
from sim.engine import Engine

__all__ = [
    "CoreFactory",
    "InFlight",
    "NodeContext",
    "NodeCounters",
    "NodeHost",
    "NodeState",
    "SimNode",
]

C = TypeVar("C")

#: One message in flight: (source node, destination node, kind, payloads).
InFlight = tuple["SimNode", "SimNode", str, tuple[BaseModel, ...]]


class NodeState(enum.Enum):
    """Whether a node's process is running."""

    UP = "up"
    PAUSED = "paused"
    CRASHED = "crashed"


class NodeHost(Protocol):
    """What a node needs from the world that hosts it."""

    def send(self, node: SimNode, out: Outgoing) -> None:
        """Put one of ``node``'s outgoing messages on the network."""
        ...

    def after_batch(self, node: SimNode) -> None:
        """Called after each delivery or tick batch of ``node`` (hooks, checkers)."""
        ...

    def core_events(self, node: SimNode, core: ProtocolCore, events: list[Any]) -> None:
        """Hand events taken from ``core`` to the world's observers."""
        ...


class NodeContext:
    """What a core factory gets to build one incarnation of a node's cores."""

    __slots__ = ("_node", "restarts", "rng")

    def __init__(self, node: SimNode, rng: Random, restarts: int) -> None:
        self._node = node
        #: A random stream for this node and this incarnation only.
        self.rng = rng
        #: How many times the node has been restarted (0 for the first process).
        self.restarts = restarts

    @property
    def node_id(self) -> bytes:
        """The node's 16-byte id (the same in every incarnation)."""
        return self._node.node_id

    @property
    def name(self) -> str:
        """The node's name, ``n0``, ``n1``, ..."""
        return self._node.name

    @property
    def index(self) -> int:
        """The node's position in the world, from 0."""
        return self._node.index

    @property
    def address(self) -> str:
        """The node's transport address, ``sim://n0``, ..."""
        return self._node.address

    @property
    def disk(self) -> SimDisk:
        """The node's disk; it survives crashes (synced data only)."""
        return self._node.disk

    def now(self) -> float:
        """The node's monotonic clock (virtual seconds)."""
        return self._node.now()

    def wall_ms(self) -> int:
        """The node's wall clock in Unix milliseconds, skew included."""
        return self._node.wall_ms()


#: Builds the cores of one node incarnation.
CoreFactory = Callable[[NodeContext], Sequence[ProtocolCore]]

# A core with its optional ``take_events`` method, looked up once per incarnation.
_Driven = tuple[ProtocolCore, Callable[[], list[Any]] | None]


@dataclass(slots=True)
class NodeCounters:
    """What one node did over a run (all incarnations)."""

    messages_delivered: int = 0
    payloads_delivered: int = 0
    ticks: int = 0
    sent: int = 0
    unknown_kind: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class SimNode:
    """One simulated machine: its identity, disk, clocks, state and current cores."""

    __slots__ = (
        "_by_kind",
        "_by_type",
        "_driven",
        "_engine",
        "_factory",
        "_host",
        "_on_timer_bound",
        "_timer_token",
        "address",
        "context",
        "cores",
        "counters",
        "disk",
        "epoch_ms",
        "inbox",
        "index",
        "monotonic_offset_s",
        "name",
        "node_id",
        "restarts",
        "skew_ms",
        "state",
        "tick_interval_s",
        "up",
    )

    def __init__(
        self,
        *,
        index: int,
        node_id: bytes,
        engine: Engine,
        factory: CoreFactory,
        host: NodeHost,
        tick_interval_s: float,
        epoch_ms: int,
        monotonic_offset_s: float = 0.0,
    ) -> None:
        assert len(node_id) == 16, node_id
        assert tick_interval_s > 0, tick_interval_s
        self.index = index
        self.node_id = node_id
        self.name = f"n{index}"
        self.address = f"sim://{self.name}"
        self.disk = SimDisk()
        self.state = NodeState.CRASHED  # until ``start``
        #: True if the node's process runs (not crashed, not paused).
        self.up = False
        self.restarts = 0
        self.skew_ms = 0
        self.epoch_ms = epoch_ms
        self.monotonic_offset_s = monotonic_offset_s
        self.tick_interval_s = tick_interval_s
        self.cores: tuple[ProtocolCore, ...] = ()
        self.context: NodeContext | None = None
        self.counters = NodeCounters()
        #: Messages that arrived while paused, oldest first (bounded by the world).
        self.inbox: deque[InFlight] = deque()
        self._engine = engine
        self._factory = factory
        self._host = host
        self._by_kind: dict[str, _Driven] = {}
        # core class asked for -> the current core of that class (``core`` is asked
        # after every batch by scenario hooks).
        self._by_type: dict[type[Any], ProtocolCore] = {}
        self._driven: tuple[_Driven, ...] = ()
        self._timer_token = 0
        self._on_timer_bound = self._on_timer

    def __repr__(self) -> str:
        return f"SimNode({self.name}, {self.node_id.hex()[:8]}, {self.state.value})"

    # -- clocks --------------------------------------------------------------------

    def now(self) -> float:
        """This node's monotonic clock: virtual time plus the node's fixed origin offset."""
        return self._engine.now + self.monotonic_offset_s

    def wall_ms(self) -> int:
        """This node's wall clock (Unix ms): virtual time + the world's epoch + this skew."""
        return self.epoch_ms + int(self._engine.now * 1000.0) + self.skew_ms

    # -- state ---------------------------------------------------------------------

    def _enter(self, state: NodeState) -> None:
        self.state = state
        # A plain attribute rather than a property: hooks ask after every batch.
        self.up = state is NodeState.UP

    def core(self, cls: type[C]) -> C:
        """The current core that is an instance of ``cls``; LookupError if none."""
        found = self._by_type.get(cls)
        if found is not None:
            return found  # type: ignore[return-value]
        for core in self.cores:
            if isinstance(core, cls):
                self._by_type[cls] = core
                return core
        raise LookupError(f"{self.name} ({self.state.value}) has no {cls.__name__} core")

    # -- lifecycle (called by the world, which records the fault) ---------------------

    def start(self, rng: Random, phase_s: float) -> None:
        """Build a fresh set of cores and start ticking ``phase_s`` from now."""
        assert self.state is NodeState.CRASHED, self
        context = NodeContext(self, rng, self.restarts)
        cores = tuple(self._factory(context))
        by_kind: dict[str, _Driven] = {}
        driven: list[_Driven] = []
        for core in cores:
            take_events = getattr(core, "take_events", None)
            entry: _Driven = (core, take_events if callable(take_events) else None)
            driven.append(entry)
            for kind in core.message_kinds:
                if kind in by_kind:
                    raise ValueError(f"{self.name}: message kind {kind!r} is claimed by two cores")
                by_kind[kind] = entry
        self.context = context
        self.cores = cores
        self._by_type = {}
        self._by_kind = by_kind
        self._driven = tuple(driven)
        self._enter(NodeState.UP)
        self._schedule_tick(phase_s)
        self.flush()

    def crash(self, disk_rng: Random | None) -> int:
        """Kill the process: cores, timers and queued messages are gone; unsynced disk lost.

        ``disk_rng`` turns on torn writes for this crash. Returns how many queued
        messages were dropped.
        """
        if self.state is NodeState.CRASHED:
            return 0
        self._timer_token += 1
        self._enter(NodeState.CRASHED)
        self.cores = ()
        self.context = None
        self._by_type = {}
        self._by_kind = {}
        self._driven = ()
        dropped = len(self.inbox)
        self.inbox.clear()
        self.disk.crash(disk_rng)
        return dropped

    def restart(self, rng: Random, phase_s: float) -> None:
        """Start a new incarnation after a crash (same node id, ``restarts`` + 1)."""
        assert self.state is NodeState.CRASHED, self
        self.restarts += 1
        self.start(rng, phase_s)

    def pause(self) -> None:
        """Stop ticking and processing (SIGSTOP); arrivals are queued by the world."""
        if self.state is NodeState.UP:
            self._timer_token += 1
            self._enter(NodeState.PAUSED)

    def resume(self) -> list[InFlight]:
        """Continue (SIGCONT): timers fire at once; returns the queued messages to deliver."""
        if self.state is not NodeState.PAUSED:
            return []
        self._enter(NodeState.UP)
        queued = list(self.inbox)
        self.inbox.clear()
        self._schedule_tick(0.0)
        return queued

    # -- driving -------------------------------------------------------------------

    def deliver(self, sender: bytes, kind: str, payloads: tuple[BaseModel, ...]) -> None:
        """Step the core for ``kind`` with each payload, then drain it and run the hooks."""
        entry = self._by_kind.get(kind)
        counters = self.counters
        if entry is None:
            counters.unknown_kind += 1
            return
        counters.messages_delivered += 1
        counters.payloads_delivered += len(payloads)
        core, take_events = entry
        for payload in payloads:
            core.step(Incoming(sender, kind, payload))
        # ``_drain`` inlined: deliveries are the bulk of all events.
        outbox = core.take_outbox()
        if outbox:
            counters.sent += len(outbox)
            send = self._host.send
            for out in outbox:
                send(self, out)
        if take_events is not None:
            events = take_events()
            if events:
                self._host.core_events(self, core, events)
        self._host.after_batch(self)

    def tick(self) -> None:
        """Tick every core at this node's ``now()``, draining each after its tick."""
        now = self.now()
        self.counters.ticks += 1
        for entry in self._driven:
            entry[0].tick(now)
            self._drain(entry)
        self._host.after_batch(self)

    def drain(self) -> None:
        """Send every core's pending outbox and pass on its events (no hooks)."""
        # ``_drain`` inlined: the world drains every node after every batch's hook.
        for core, take_events in self._driven:
            outbox = core.take_outbox()
            if outbox:
                self.counters.sent += len(outbox)
                send = self._host.send
                for out in outbox:
                    send(self, out)
            if take_events is not None:
                events = take_events()
                if events:
                    self._host.core_events(self, core, events)

    def flush(self) -> None:
        """``drain`` and then run the world's per-node hook and checkers.

        Call after poking a core directly from a scenario (e.g. a client request),
        so that what it produced leaves the node.
        """
        self.drain()
        self._host.after_batch(self)

    def _drain(self, entry: _Driven) -> None:
        core, take_events = entry
        outbox = core.take_outbox()
        if outbox:
            self.counters.sent += len(outbox)
            send = self._host.send
            for out in outbox:
                send(self, out)
        if take_events is not None:
            events = take_events()
            if events:
                self._host.core_events(self, core, events)

    def _schedule_tick(self, delay_s: float) -> None:
        self._engine.after(delay_s, self._on_timer_bound, self._timer_token)

    def _on_timer(self, token: int) -> None:
        if token != self._timer_token:
            return  # a timer of a crashed or paused incarnation
        self.tick()
        # The tick's hooks may have crashed or paused this node: then stay quiet.
        if token == self._timer_token:
            self._engine.after(self.tick_interval_s, self._on_timer_bound, token)
