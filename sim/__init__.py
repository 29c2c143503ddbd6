"""Deterministic multi-node simulator: virtual time, a faulty network and disk, one seed.

``World(seed, n_nodes, factory)`` runs the same pure protocol cores that
``mesh.runtime`` drives, on simulated nodes; ``SwarmNemesis`` and
``ScriptedNemesis`` schedule faults; checkers report ``Violation``s. Same seed,
same run, bit for bit (``World.trace_digest``).
"""

from sim.disk import SimDisk
from sim.engine import Engine
from sim.nemesis import (
    FaultAction,
    FaultKind,
    Nemesis,
    ScriptedNemesis,
    SwarmNemesis,
    SwarmSettings,
    node_names,
    parse_script,
)
from sim.network import (
    FixedLatency,
    LatencyModel,
    LogNormalLatency,
    Network,
    NetworkCounters,
    NetworkSettings,
    UniformLatency,
)
from sim.node import CoreFactory, NodeContext, NodeState, SimNode
from sim.rng import Streams
from sim.trace import TraceMode
from sim.world import Checker, StepChecker, Violation, World, WorldStats

__all__ = [
    "Checker",
    "CoreFactory",
    "Engine",
    "FaultAction",
    "FaultKind",
    "FixedLatency",
    "LatencyModel",
    "LogNormalLatency",
    "Nemesis",
    "Network",
    "NetworkCounters",
    "NetworkSettings",
    "NodeContext",
    "NodeState",
    "ScriptedNemesis",
    "SimDisk",
    "SimNode",
    "StepChecker",
    "Streams",
    "SwarmNemesis",
    "SwarmSettings",
    "TraceMode",
    "UniformLatency",
    "Violation",
    "World",
    "WorldStats",
    "node_names",
    "parse_script",
]
