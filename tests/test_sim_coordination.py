"""Scenario ``coordination``: clients increment shared counters by optimistic
concurrency (read, compare-and-set at the version read, read again when it lost)
against the Raft KV store under every fault kind. Nothing acknowledged may be
lost and nothing may appear twice: each counter ends between its acknowledged
increments and those plus the ones of unknown outcome. The history must also be
linearizable."""

from __future__ import annotations

import pytest

from sim.nemesis import FaultKind
from sim.scenario import RunOptions, RunResult
from sim.scenarios import scenario_named
from sim.scenarios.raft import RaftScenario

ALL_FAULTS = frozenset(FaultKind)
SEEDS = [1, 2, 3, 4, 5, 6]
CRASH_ALL = ("at 8 crash n0\nat 8 crash n1\nat 8 crash n2\n"
             "at 9 restart n0\nat 9 restart n1\nat 9 restart n2")


def run(seed: int, nodes: int, scenario: RaftScenario | None = None,
        script: str | None = None) -> RunResult:
    options = RunOptions(seed=seed, nodes=nodes, duration_s=20.0,
                         faults=frozenset() if script else ALL_FAULTS, script=script)
    return (scenario or RaftScenario(counters=True)).run(options)


def explain(result: RunResult) -> str:
    return "\n".join(str(v) for v in result.violations) + f"\n(seed {result.seed})"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("nodes", [3, 5])
def test_concurrent_compare_and_set_updates_lose_nothing_under_faults(seed: int,
                                                                     nodes: int) -> None:
    result = run(seed, nodes)
    assert result.passed, explain(result)
    assert result.scenario == "coordination"
    assert result.metrics["increments_acked"] > 0
    assert result.metrics["linearizable"] == 1.0


def test_the_scenario_is_listed_and_counts_conflicts() -> None:
    scenario = scenario_named("coordination")
    assert isinstance(scenario, RaftScenario) and scenario.counters
    result = run(3, 3)
    # Four clients on four counters collide: some compare-and-sets lose and retry.
    assert result.metrics["cas_conflicts"] > 0


def test_a_storage_that_never_syncs_loses_increments_and_is_caught() -> None:
    result = run(14, 3, RaftScenario(counters=True, fsync=False), script=CRASH_ALL)
    caught = {violation.checker for violation in result.violations}
    assert caught & {"coordination.lost_update", "raft.linearizability"}, explain(result)
