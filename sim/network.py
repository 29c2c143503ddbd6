"""The simulated network: latency, loss, duplication, reordering and partitions.

How this works: ``send`` decides the fate of one message at the moment it is
sent, with draws from the network's own random stream: blocked by a partition
rule, lost, or delivered after a latency drawn from ``NetworkSettings.latency``
(plus, for a ``reorder`` fraction of messages, an extra random delay so they
overtake or are overtaken). A duplicated message is scheduled a second time
with its own latency. Delivery is an engine event calling the ``deliver``
function the world gave; whether the destination is alive to receive it is
decided then, by the world, not here.

A message is one network unit however many payloads it carries (one signed
envelope on the real wire), so a batch is lost, duplicated or delayed whole.

Partitions are kept as a short list of rules "nothing from this set of nodes
reaches that set", not as every blocked pair: splitting 1000 nodes in halves is
two rules rather than half a million pairs, and a send checks a few set
memberships. Rules are checked when a message is sent; one already in flight
when a partition starts still arrives (it was already on the wire).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, fields
from random import Random
from typing import Protocol, TypeVar

from sim.engine import Engine

__all__ = [
    "FixedLatency",
    "LatencyModel",
    "LogNormalLatency",
    "Network",
    "NetworkCounters",
    "NetworkSettings",
    "UniformLatency",
]

T = TypeVar("T")


class LatencyModel(Protocol):
    """Draws one one-way latency in seconds."""

    def __call__(self, rng: Random) -> float:
        """A latency (seconds, >= 0) drawn from ``rng``."""
        ...


@dataclass(frozen=True, slots=True)
class LogNormalLatency:
    """``base_s`` plus a log-normal jitter with median ``median_jitter_s``.

    The default has a mean near 3.7 ms and a long tail: most messages are quick,
    a few are an order of magnitude slower, as on a busy LAN.
    """

    base_s: float = 0.001
    median_jitter_s: float = 0.002
    sigma: float = 0.8

    def __call__(self, rng: Random) -> float:
        """Draw one latency."""
        return self.base_s + self.median_jitter_s * math.exp(self.sigma * rng.gauss(0.0, 1.0))

    def describe(self) -> str:
        """One-line description for the run header."""
        return (
            f"lognormal(base_s={self.base_s}, median_jitter_s={self.median_jitter_s}, "
            f"sigma={self.sigma})"
        )


@dataclass(frozen=True, slots=True)
class UniformLatency:
    """A latency uniform between ``low_s`` and ``high_s``."""

    low_s: float = 0.001
    high_s: float = 0.005

    def __call__(self, rng: Random) -> float:
        """Draw one latency."""
        return rng.uniform(self.low_s, self.high_s)

    def describe(self) -> str:
        """One-line description for the run header."""
        return f"uniform(low_s={self.low_s}, high_s={self.high_s})"


@dataclass(frozen=True, slots=True)
class FixedLatency:
    """Every message takes exactly ``latency_s`` (no draw: handy in hand-written tests)."""

    latency_s: float = 0.001

    def __call__(self, rng: Random) -> float:
        """Return the fixed latency."""
        return self.latency_s

    def describe(self) -> str:
        """One-line description for the run header."""
        return f"fixed(latency_s={self.latency_s})"


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """The network's starting behaviour; the nemesis may change the rates later.

    ``loss``, ``duplicate`` and ``reorder`` are probabilities per message.
    ``reorder_delay_max_s`` bounds the extra delay of a reordered message: larger
    values reorder more aggressively but stretch delivery times.
    ``paused_inbox_messages_max`` bounds the messages a paused node buffers (more
    are counted and dropped), like a socket's receive buffer filling while the
    process is stopped.
    """

    latency: LatencyModel = field(default_factory=LogNormalLatency)
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay_max_s: float = 0.05
    paused_inbox_messages_max: int = 10_000

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} ({value}) must be a probability in [0, 1]")
        if self.reorder_delay_max_s < 0:
            raise ValueError(f"reorder_delay_max_s ({self.reorder_delay_max_s}) must be >= 0")
        if self.paused_inbox_messages_max < 0:
            raise ValueError(
                f"paused_inbox_messages_max ({self.paused_inbox_messages_max}) must be >= 0"
            )

    def describe(self) -> str:
        """One-line description for the run header."""
        describe = getattr(self.latency, "describe", None)
        latency = describe() if callable(describe) else repr(self.latency)
        return (
            f"latency={latency} loss={self.loss} duplicate={self.duplicate} "
            f"reorder={self.reorder} reorder_delay_max_s={self.reorder_delay_max_s} "
            f"paused_inbox_messages_max={self.paused_inbox_messages_max}"
        )


@dataclass(slots=True)
class NetworkCounters:
    """Message fates over a run (``delivered``/``dropped_*`` are counted by the world).

    ``sent`` counts messages handed to the network, ``lost`` and ``blocked`` those
    it dropped, ``duplicated`` the extra copies it made; ``delivered`` counts copies
    that reached a live core, ``dropped_dead`` copies that arrived at a crashed
    node, ``dropped_unknown`` sends to a destination no node has, ``queued`` copies
    buffered at a paused node, ``queue_overflow`` copies refused by a full buffer.
    """

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    blocked: int = 0
    dropped_dead: int = 0
    dropped_unknown: int = 0
    queued: int = 0
    queue_overflow: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Network:
    """Decides each message's fate and schedules its delivery on the engine."""

    __slots__ = (
        "_rng",
        "_rules",
        "counters",
        "duplicate",
        "engine",
        "latency",
        "loss",
        "reorder",
        "reorder_delay_max_s",
        "settings",
    )

    def __init__(self, engine: Engine, rng: Random, settings: NetworkSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.latency = settings.latency
        self.loss = settings.loss
        self.duplicate = settings.duplicate
        self.reorder = settings.reorder
        self.reorder_delay_max_s = settings.reorder_delay_max_s
        self.counters = NetworkCounters()
        self._rng = rng
        # (from, to): nothing sent by a node in ``from`` reaches a node in ``to``.
        self._rules: list[tuple[frozenset[bytes], frozenset[bytes]]] = []

    # -- sending -------------------------------------------------------------------

    def send(self, src: bytes, dst: bytes, deliver: Callable[[T], None], message: T) -> None:
        """Send ``message`` from node ``src`` to node ``dst``; ``deliver(message)`` on arrival."""
        counters = self.counters
        counters.sent += 1
        if self._rules and self.is_blocked(src, dst):
            counters.blocked += 1
            return
        rng = self._rng
        if self.loss and rng.random() < self.loss:
            counters.lost += 1
            return
        delay = self.latency(rng)
        if self.reorder:
            delay = self._reorder(rng, delay)
        self.engine.after(delay, deliver, message)
        if self.duplicate and rng.random() < self.duplicate:
            counters.duplicated += 1
            delay = self.latency(rng)
            if self.reorder:
                delay = self._reorder(rng, delay)
            self.engine.after(delay, deliver, message)

    def _reorder(self, rng: Random, delay: float) -> float:
        if rng.random() < self.reorder:
            self.counters.reordered += 1
            delay += rng.uniform(0.0, self.reorder_delay_max_s)
        return delay

    # -- faults --------------------------------------------------------------------

    def set_rates(
        self,
        *,
        loss: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
    ) -> None:
        """Change the probability of loss, duplication or reordering from now on."""
        for name, value in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            if value is None:
                continue
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} ({value}) must be a probability in [0, 1]")
            setattr(self, name, value)

    def partition(self, groups: Sequence[Collection[bytes]]) -> None:
        """Cut every link between nodes of different groups, both ways.

        Nodes named in no group keep reaching everyone. Adds to existing cuts;
        ``heal`` removes them all.
        """
        frozen = [frozenset(group) for group in groups]
        for i, left in enumerate(frozen):
            for j, right in enumerate(frozen):
                if i != j and left and right:
                    overlap = left & right
                    if overlap:
                        raise ValueError(f"partition groups overlap in {len(overlap)} node(s)")
                    self._rules.append((left, right))

    def block_one_way(self, sources: Collection[bytes], destinations: Collection[bytes]) -> None:
        """Drop every message from a node in ``sources`` to a node in ``destinations``."""
        if sources and destinations:
            self._rules.append((frozenset(sources), frozenset(destinations)))

    def heal(self) -> None:
        """Remove every partition and one-way block."""
        self._rules.clear()

    def is_blocked(self, src: bytes, dst: bytes) -> bool:
        """True if a partition rule stops messages from ``src`` to ``dst`` now."""
        for sources, destinations in self._rules:
            if src in sources and dst in destinations:
                return True
        return False

    @property
    def partitioned(self) -> bool:
        """True if any partition or one-way block is in force."""
        return bool(self._rules)

    def blocked_pairs(self, node_ids: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """Every blocked directed pair among ``node_ids``, in their order (for reports)."""
        return [(s, d) for s in node_ids for d in node_ids if s != d and self.is_blocked(s, d)]
