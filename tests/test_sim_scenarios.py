"""The membership and gossip scenarios: fixed seeds under faults, determinism, the CLI.

Every seed that ever failed joins its list here and stays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main
from sim.nemesis import FaultKind
from sim.runner import parse_faults, parse_seed_range, replay_command
from sim.scenario import RunOptions, RunResult
from sim.scenarios import SCENARIOS, scenario_named
from sim.world import Violation

ALL_FAULTS = frozenset(FaultKind)

MEMBERSHIP_SEEDS = [1, 2, 3, 4, 5, 6, 7, 8]
GOSSIP_SEEDS = [1, 2, 3, 4, 5, 6]

PARTITION_HEAL = "at 5 partition n0,n1,n2,n3 | n4,n5,n6,n7,n8,n9; at 70 heal"
CRASH_RESTART = "at 5 crash n3; at 8 crash n7; at 70 restart n3; at 75 restart n7"
ONE_WAY = "at 5 oneway n0,n1 -> n2,n3,n4,n5; at 60 heal"
PAUSE_SKEW = "at 5 pause n2; at 40 resume n2; at 6 skew n4 +1500; at 6 loss 0.1"


def run(scenario: str, seed: int, nodes: int, duration: float, *,
        faults: frozenset[FaultKind] = frozenset(), script: str | None = None,
        loss: float | None = None) -> RunResult:
    options = RunOptions(seed=seed, nodes=nodes, duration_s=duration, faults=faults,
                         script=script.replace("; ", "\n") if script else None, loss=loss)
    return scenario_named(scenario).run(options)


def explain(result: RunResult) -> str:
    replay = replay_command(result.scenario, RunOptions(seed=result.seed, nodes=1,
                                                        duration_s=1), result.seed)
    return "\n".join(str(v) for v in result.violations) + f"\n(seed {result.seed}: {replay})"


@pytest.mark.parametrize("seed", MEMBERSHIP_SEEDS)
def test_membership_seeds_under_every_fault_pass(seed: int) -> None:
    result = run("membership", seed, nodes=12, duration=40, faults=ALL_FAULTS)
    assert result.passed, explain(result)


@pytest.mark.parametrize("seed", GOSSIP_SEEDS)
def test_gossip_seeds_under_every_fault_pass(seed: int) -> None:
    result = run("gossip", seed, nodes=12, duration=30, faults=ALL_FAULTS)
    assert result.passed, explain(result)
    assert result.metrics["writes"] > 0


@pytest.mark.parametrize("script", [PARTITION_HEAL, CRASH_RESTART, ONE_WAY, PAUSE_SKEW],
                         ids=["partition-heal", "crash-restart", "one-way", "pause-skew"])
@pytest.mark.parametrize("scenario", ["membership", "gossip"])
def test_scripted_faults_heal_and_pass(scenario: str, script: str) -> None:
    result = run(scenario, 11, nodes=10, duration=90, script=script)
    assert result.passed, explain(result)
    assert result.metrics["converge_s"] >= 0  # converged, not timed out (NaN)


def test_a_crashed_node_is_detected_by_every_other_node_within_the_bound() -> None:
    result = run("membership", 5, nodes=20, duration=80, script="at 10 crash n4")
    assert result.passed, explain(result)
    assert result.metrics["detection_samples"] == 19
    assert result.metrics["detection_s_p99"] <= result.metrics["detection_bound_s"]


def test_ten_percent_loss_causes_no_false_death() -> None:
    for seed in (21, 22):
        result = run("membership", seed, nodes=30, duration=60, loss=0.1)
        assert result.passed, explain(result)
        assert result.metrics["false_deaths"] == 0


def test_gossip_spreads_within_log2_n_plus_4_rounds() -> None:
    result = run("gossip", 3, nodes=64, duration=30)
    assert result.passed, explain(result)
    assert result.metrics["rounds_to_all_p50"] <= 6 + 4


@pytest.mark.parametrize("scenario", ["membership", "gossip"])
def test_one_seed_replays_to_the_same_trace_digest(scenario: str) -> None:
    first = run(scenario, 9, nodes=8, duration=20, faults=ALL_FAULTS)
    again = run(scenario, 9, nodes=8, duration=20, faults=ALL_FAULTS)
    other = run(scenario, 10, nodes=8, duration=20, faults=ALL_FAULTS)
    assert first.trace_digest == again.trace_digest
    assert first.trace_digest != other.trace_digest


def test_digest_does_not_depend_on_the_process_hash_seed() -> None:
    command = [sys.executable, "-m", "mesh.cli", "sim", "--scenario", "gossip", "--nodes", "8",
               "--duration", "15", "--seed", "4", "--faults", "all", "--json"]
    digests = set()
    for hash_seed in ("1", "2"):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=False)
        assert result.returncode == 0, result.stderr
        digests.add(json.loads(result.stdout)["trace_digest"])
    assert len(digests) == 1


# -- the command line ----------------------------------------------------------------


def test_cli_json_report_and_exit_status(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--scenario", "gossip", "--nodes", "8", "--duration", "15",
                 "--seeds", "1-2", "--faults", "loss,partition", "--json",
                 "--report", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["seeds_run"] == [1, 2] and out["violations"] == []
    assert {"rounds_to_all_p50", "rounds_to_all_p99"} <= set(out["metrics"])
    assert set(out["trace_digests"]) == {"1", "2"}
    assert (tmp_path / "summary.json").exists()
    assert (tmp_path / "gossip_spread.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_membership_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--scenario", "membership", "--nodes", "8", "--duration", "40",
                 "--script", "at 5 crash n2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"detection_s_p50", "detection_s_p99", "false_deaths"} <= set(out["metrics"])
    assert len(out["trace_digest"]) == 64


class _Failing:
    name = "failing"

    def run(self, options: RunOptions) -> RunResult:
        violations = [Violation("demo.checker", 1.5, "broken on purpose")] \
            if options.seed == 3 else []
        return RunResult("failing", options.seed, violations, "00" * 32, {})


def test_cli_failure_names_seed_checker_and_replay(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(SCENARIOS, "failing", _Failing)
    code = main(["sim", "--scenario", "failing", "--seeds", "1-4", "--faults", "crash"])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED seed 3: demo.checker" in err
    assert "agentmesh sim --scenario failing --nodes 10 --duration 60 --seed 3 " \
           "--faults crash" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--faults", "fire"], "unknown fault kind(s) fire"),
    (["--seeds", "5-1"], "must satisfy 0 <= A <= B"),
    (["--seeds", "x"], "must look like A-B"),
    (["--nodes", "0"], "nodes (0) must be at least 1"),
    (["--script", "at 3 explode n1"], "explode"),
])
def test_cli_bad_options_are_named(argv: list[str], message: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--scenario", "gossip", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_fault_and_seed_parsing() -> None:
    assert parse_faults("all") == ALL_FAULTS
    assert parse_faults(None) == frozenset()
    assert parse_faults("loss, crash") == {FaultKind.LOSS, FaultKind.CRASH}
    assert list(parse_seed_range("3-5")) == [3, 4, 5]
    assert list(parse_seed_range("7")) == [7]


def test_the_checkers_catch_a_cluster_that_never_heals(monkeypatch: pytest.MonkeyPatch) -> None:
    # With healing switched off, a partition outlives the run: both checkers must say so.
    monkeypatch.setattr("sim.scenarios.gossip.heal_everything", lambda world, loss: None)
    monkeypatch.setattr("sim.scenarios.membership.heal_everything", lambda world, loss: None)
    script = "at 12 partition n0,n1,n2 | n3,n4,n5"
    gossip = run("gossip", 1, nodes=6, duration=20, script=script)
    assert "gossip.convergence" in {v.checker for v in gossip.violations}
    membership = run("membership", 1, nodes=6, duration=20, script=script)
    assert "membership.convergence" in {v.checker for v in membership.violations}
