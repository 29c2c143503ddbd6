"""Workflows on real node processes: every pattern, approvals through the CLI, the
durable resume after SIGKILL of the orchestrating node, and ``agentmesh demo``.

Each test starts ``agentmesh up --nodes 3 --agents team`` (three Raft voters, the
specialised offline team of ``agents.demo_team`` on every node) and stops it
afterwards, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.contract_net import ledger
from agents.contract_net.ledger import decode_record
from agents.demo_team import DEMO_WORKFLOW
from agents.workflow.client import submit_workflow, wait_workflow
from agents.workflow.engine import DONE, GateDecision, StepRecord, WorkflowEngine
from agents.workflow.spec import parse_workflow
from agents.workflow.store import WorkflowStore
from conftest import (
    approve_when_pending,
    run_cli,
    running_up,
    wait_for,
    wait_for_agent_adverts,
)
from mesh.kv_client import KVClient
from mesh.up_process import UpProcess

pytestmark = pytest.mark.timeout(240)

ALL_PATTERNS = """
name = "every pattern"
[input]
topic = "heat pumps"

[[steps]]
name = "research"
pattern = "concurrent"
aggregator = "merge"
deadline_s = 60
  [[steps.branches]]
  name = "market"
  target = "research.market"
  input = { topic = "$input.topic" }
  [[steps.branches]]
  name = "risk"
  target = "@researcher-risk"
  input = { topic = "$input.topic" }

[[steps]]
name = "write"
pattern = "sequential"
  [[steps.steps]]
  name = "analyse"
  target = "analysis"
  input = { findings = "$research" }
  [[steps.steps]]
  name = "summarise"
  target = "summary"
  input = { analysis = "$previous" }
  output = "$result.text"

[[steps]]
name = "review"
pattern = "group_chat"
participants = ["review.critic", "review.editor"]
max_turns = 6
input = { draft = "$write" }

[[steps]]
name = "support"
pattern = "handoff"
start = "support.triage"
input = "refund 5000 after the app crash"

[[steps]]
name = "plan"
pattern = "magentic"
manager = "plan.manager"
workers = ["plan.collector", "plan.drafter"]
input = { topic = "$input.topic" }

[[steps]]
name = "signoff"
pattern = "approval"
prompt = "Ship it?"
show = "$write"

[output]
brief = "$write"
review = "$review.final"
support = "$support.result"
plan = "$plan.answer"
approved_by = "$signoff.by"
"""


@pytest.fixture
def team(tmp_path: Path) -> Iterator[tuple[Path, UpProcess]]:
    cluster = tmp_path / "mesh"
    with running_up(cluster, "--nodes", "3", "--agents", "team") as up:
        wait_for_agent_adverts(cluster, [str(node["name"]) for node in up.nodes])
        yield cluster, up


def kv_run(cluster: Path, work: Any) -> Any:
    async def main() -> Any:
        async with KVClient.connect(cluster) as kv:
            return await work(kv)
    return anyio.run(main)


def test_every_pattern_runs_on_the_mesh_and_shows_who_did_what(
        team: tuple[Path, UpProcess], tmp_path: Path) -> None:
    cluster, up = team
    flow = tmp_path / "flow.toml"
    flow.write_text(ALL_PATTERNS)
    run = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "workflow", "run", str(flow), "--cluster",
         str(cluster), "--id", "all-patterns", "--json", "--timeout", "150"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        answered = approve_when_pending(cluster, "all-patterns/signoff", "--comment", "fine")
        assert answered.returncode == 0, answered.stderr
        out, err = run.communicate(timeout=150)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    view = json.loads(out)
    assert view["state"] == "done"
    result = view["result"]
    assert result["brief"].startswith("Brief: 6 findings")
    assert result["review"].endswith("APPROVED")
    # A parallel handoff: billing escalated the refund, tech fixed the crash; both kept.
    assert result["support"] == [{"text": "Escalation: a senior approved the refund of 5000."},
                                 {"text": "Tech: reproduced the error and shipped a fix."}]
    assert result["plan"].startswith("Draft: ")
    assert result["approved_by"] == "tester"
    steps = {step["key"]: step for step in view["steps"]}
    node_ids = {str(node["node_id"]) for node in up.nodes}
    for key in ("research/market", "research/risk", "write/analyse", "review/turn-1",
                "support/hop-1", "plan/work-1"):
        assert steps[key]["state"] == "done" and steps[key]["node"] in node_ids, steps[key]
    assert steps["research/risk"]["agent"] == "researcher-risk"  # asked for by name
    assert steps["write/analyse"]["agent"] == "analyst"
    assert steps["support/hop-1.1.1"]["meta"]["path"] == [
        "support.triage", "support.billing", "support.escalation"]
    shown = run_cli("workflow", "show", "all-patterns", "--cluster", str(cluster)).stdout
    assert "research/market" in shown and "answered by tester" in shown


def test_approval_gates_approve_reject_time_out_and_answer_once(
        team: tuple[Path, UpProcess]) -> None:
    cluster, _ = team

    def gated(name: str, **gate: Any) -> Any:
        return parse_workflow({"name": name, "steps": [
            {"name": "draft", "target": "summary",
             "input": {"analysis": {"text": "a plan"}}},
            {"pattern": "approval", "name": "gate", "prompt": "go?", **gate}]})

    parallel = parse_workflow({"name": "parallel gates", "steps": [
        {"pattern": "concurrent", "name": "both", "branches": [
            {"pattern": "approval", "name": "legal", "prompt": "legal?"},
            {"pattern": "approval", "name": "money", "prompt": "budget?"}]}]})

    async def submit_all(kv: Any) -> None:
        await submit_workflow(kv, gated("approve me"), workflow_id="yes")
        await submit_workflow(kv, gated("reject me"), workflow_id="no")
        await submit_workflow(kv, gated("forget me", timeout_s=1.0), workflow_id="late")
        await submit_workflow(kv, parallel, workflow_id="pair")

    kv_run(cluster, submit_all)
    assert approve_when_pending(cluster, "yes/gate").returncode == 0
    rejected = approve_when_pending(cluster, "no/gate", "--reject", "--comment", "too risky")
    assert rejected.returncode == 0
    # Two gates pending at once, each answered by its own id.
    assert approve_when_pending(cluster, "pair/both/money").returncode == 0
    assert approve_when_pending(cluster, "pair/both/legal").returncode == 0

    async def outcomes(kv: Any) -> dict[str, Any]:
        return {wid: await wait_workflow(kv, wid, 90) for wid in ("yes", "no", "late", "pair")}

    records = kv_run(cluster, outcomes)
    assert records["yes"].state == "done"
    assert records["no"].state == "rejected" and "too risky" in records["no"].error
    assert records["late"].state == "rejected" and "no answer in time" in records["late"].error
    assert records["pair"].state == "done"
    assert records["pair"].result["legal"]["gate"] == "pair/both/legal"
    assert records["pair"].result["money"]["gate"] == "pair/both/money"
    # Answered once: a second answer changes nothing and says so.
    again = run_cli("approve", "pair/both/legal", "--reject", "--cluster", str(cluster),
                    check=False)
    assert again.returncode == 1 and "answered already" in again.stderr
    unknown = run_cli("approve", "nope/gate", "--cluster", str(cluster), check=False)
    assert unknown.returncode == 1 and "no approval gate" in unknown.stderr


SLOW_CHAIN = {"name": "slow chain", "input": {"topic": "wind"}, "steps": [
    {"name": f"step{n}", "target": target, "input": {"topic": "$input.topic"}}
    for n, target in enumerate(["research.market", "research.tech", "research.risk",
                                "research.market", "research.tech", "research.risk"], 1)
] + [{"name": "together", "target": "summary",
      "input": {"analysis": {"text": "{step1.text} {step6.text}"}}}]}


def test_a_killed_orchestrator_is_resumed_elsewhere_without_rerunning_finished_steps(
        team: tuple[Path, UpProcess]) -> None:
    cluster, up = team
    pids = {str(node["node_id"]): int(node["pid"]) for node in up.nodes}
    spec = parse_workflow(SLOW_CHAIN)

    async def start(kv: Any) -> None:
        await submit_workflow(kv, spec, workflow_id="chain")
        await submit_workflow(kv, spec, workflow_id="undisturbed")

    kv_run(cluster, start)

    async def progress(kv: Any) -> tuple[dict[str, tuple[StepRecord, int]], bytes | None]:
        store = WorkflowStore(kv)
        return await store.steps("chain"), (await store.owner("chain"))[0]

    def two_done() -> Any:
        steps, owner = kv_run(cluster, progress)
        done = {k: v for k, v in steps.items() if v[0].state == DONE}
        return (done, owner) if len(done) >= 2 and owner is not None else None

    done_before, owner = wait_for(two_done, timeout_s=90, interval_s=0.1,
                                  what="two steps checkpointed")
    os.kill(pids[owner.hex()], signal.SIGKILL)

    async def finish(kv: Any) -> tuple[Any, Any, dict[str, tuple[StepRecord, int]], Any]:
        store = WorkflowStore(kv)
        chain = await wait_workflow(kv, "chain", 150)
        plain = await wait_workflow(kv, "undisturbed", 150)
        tasks = {key: decode_record((await kv.get(ledger.task_key(rec.task_id))).value)
                 for key, (rec, _) in done_before.items() if rec.task_id}
        return chain, plain, await store.steps("chain"), (tasks, await store.owner("chain"))

    chain, plain, steps_after, (tasks, owner_after) = kv_run(cluster, finish)
    assert chain.state == "done" and chain.result == plain.result
    for key, (record, version) in done_before.items():
        # Not run again: the checkpoint was never rewritten, its task has one epoch.
        assert steps_after[key][1] == version, key
        assert steps_after[key][0].finished == record.finished
        assert tasks[key].epoch == 1 and tasks[key].attempts == 0
    assert owner_after[0] is None  # a finished workflow has no owner key left


def test_the_demo_runs_to_the_end_though_a_node_is_killed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "demo", "--nodes", "3", "--json",
         "--timeout", "150"], capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["state"] == "done"
    assert report["killed_node"] in {"node1", "node2", "node3"}
    expected = expected_demo_result()
    assert report["result"] == expected
    names = [step["name"] for step in report["steps"]]
    assert {"market", "tech", "risk", "analyse", "summarise", "review", "publish"} <= set(names)
    for step in report["steps"]:
        assert set(step) == {"name", "pattern", "agent", "node", "started", "finished",
                             "state"}
        assert step["state"] == "done"


def expected_demo_result() -> Any:
    """The demo workflow run in-process on the same agents, undisturbed."""
    from agents.demo_team import team_agents
    from agents.host import AgentHost, TaskDone
    from agents.workflow.engine import TaskOutcome
    from workflow_fakes import FakeRunner, MemoryCheckpoints

    class Node:
        node_id = b"n" * 16

        class gossip:
            @staticmethod
            def set(key: str, value: Any) -> None:
                return None

            @staticmethod
            def delete(key: str) -> bool:
                return True

    host = AgentHost(Node(), team_agents())

    class Runner(FakeRunner):
        async def run_task(self, task_id: str, target: str, task_input: Any, *,
                           max_attempts: int, timeout_s: float) -> TaskOutcome:
            outcome = await host.run_task(target, task_input)
            assert isinstance(outcome, TaskDone), outcome
            return TaskOutcome(True, result=json.loads(json.dumps(outcome.output)),
                               agent=outcome.agent)

    runner = Runner({})

    async def main() -> Any:
        engine = WorkflowEngine("w", DEMO_WORKFLOW, runner, MemoryCheckpoints())
        async with anyio.create_task_group() as group:
            async def approver() -> None:
                while "w/publish" not in runner.gates:
                    await anyio.sleep(0.01)
                runner.answer("w/publish", GateDecision(True, "demo-approver", ""))
            group.start_soon(approver)
            return (await engine.run()).result

    return anyio.run(main)


def test_a_step_whose_contractor_dies_is_rerun_once_at_a_new_epoch(tmp_path: Path) -> None:
    cluster = tmp_path / "mesh"
    spec = parse_workflow({"name": "long step", "steps": [
        {"name": "wait", "target": "demo.sleep", "input": {"seconds": 4}},
        {"name": "after", "target": "summary", "input": {"analysis": {"text": "slept"}}}]})
    with running_up(cluster, "--nodes", "3", "--agents", "team,demo") as up:
        wait_for_agent_adverts(cluster, [str(node["name"]) for node in up.nodes])
        pids = {str(node["node_id"]): int(node["pid"]) for node in up.nodes}
        kv_run(cluster, lambda kv: submit_workflow(kv, spec, workflow_id="long"))

        async def awarded(kv: Any) -> Any:
            item = await kv.get(ledger.task_key("long/wait"))
            record = None if item is None else decode_record(item.value)
            return record if record is not None and record.contractor else None

        first = wait_for(lambda: kv_run(cluster, awarded), timeout_s=60, interval_s=0.1,
                         what="the long step awarded")
        os.kill(pids[first.contractor.hex()], signal.SIGKILL)

        async def finished(kv: Any) -> tuple[Any, Any, Any]:
            record = await wait_workflow(kv, "long", 120)
            task = decode_record((await kv.get(ledger.task_key("long/wait"))).value)
            steps = await WorkflowStore(kv).steps("long")
            return record, task, steps

        record, task, steps = kv_run(cluster, finished)
    assert record.state == "done"
    assert task.state.value == "done" and task.epoch == 2 and task.attempts == 1
    assert task.contractor != first.contractor
    assert steps["wait"][0].epoch == 2 and steps["wait"][0].result == {"slept": 4}
