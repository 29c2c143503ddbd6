"""The simulation scenarios ``agentmesh sim --scenario NAME`` runs, by name."""

from __future__ import annotations

from collections.abc import Callable

from sim.scenario import Scenario
from sim.scenarios.auction import AuctionScenario
from sim.scenarios.gossip import GossipScenario
from sim.scenarios.membership import MembershipScenario
from sim.scenarios.raft import RaftScenario

__all__ = ["SCENARIOS", "scenario_named"]

SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "membership": MembershipScenario,
    "gossip": GossipScenario,
    "raft": RaftScenario,
    "auction": AuctionScenario,
    "coordination": lambda: RaftScenario(counters=True),
}


def scenario_named(name: str) -> Scenario:
    """A fresh scenario object; ``KeyError`` names the known ones."""
    try:
        return SCENARIOS[name]()
    except KeyError:
        known = ", ".join(sorted(SCENARIOS))
        raise KeyError(f"unknown scenario {name!r}; known: {known}") from None
