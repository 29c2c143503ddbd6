"""Coordination on real node processes: shared context written concurrently from two
nodes with compare-and-set, a write refused for lack of permission, and events
seen on another node in the order their source published them.

Each test starts ``agentmesh up --nodes 3 --agents team`` and stops it afterwards.
Agents are pinned to nodes with the capability ``agent:<name>@<node id hex>``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.contract_net.ledger import TaskState, decode_record, task_key
from agents.driver import decode_json
from agents.shared_context import SharedContexts
from agents.submission import submit_task
from agents.workflow.client import submit_workflow, wait_workflow
from agents.workflow.spec import parse_workflow
from conftest import approve_when_pending, running_up, wait_for_agent_adverts
from mesh.kv_client import KVClient
from mesh.up_process import UpProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def team(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    cluster = tmp_path / "mesh"
    with running_up(cluster, "--nodes", "3", "--agents", "team") as up:
        wait_for_agent_adverts(cluster, [str(node["name"]) for node in up.nodes])
        yield cluster, node_ids(up)


def node_ids(up: UpProcess) -> list[str]:
    return [str(node["node_id"]) for node in up.nodes]


async def run_tasks(kv: Any, tasks: list[tuple[str, dict[str, Any]]],
                    timeout_s: float = 90, max_attempts: int = 3) -> list[Any]:
    """Submit every (capability, input) at once; their results, in order."""
    ids: list[str] = [""] * len(tasks)

    async def submit(number: int, capability: str, task_input: dict[str, Any]) -> None:
        ids[number] = (await submit_task(kv, capability, task_input,
                                         max_attempts=max_attempts)).task_id

    async with anyio.create_task_group() as group:
        for number, (capability, task_input) in enumerate(tasks):
            group.start_soon(submit, number, capability, task_input)
    results: dict[str, Any] = {}
    with anyio.fail_after(timeout_s):
        while len(results) < len(ids):
            for task_id in ids:
                item = await kv.get(task_key(task_id))
                record = decode_record(item.value) if item is not None else None
                if record is not None and record.final:
                    assert record.state is TaskState.DONE, record.failure_reasons
                    results[task_id] = (decode_json(record.result), record)
            await anyio.sleep(0.1)
    return [results[task_id] for task_id in ids]


def test_two_nodes_update_one_context_concurrently_and_lose_nothing(
        team: tuple[Path, list[str]]) -> None:
    cluster, nodes = team
    increments = 25

    async def main() -> None:
        async with KVClient.connect(cluster) as kv:
            coordinator = SharedContexts(kv, None, "coordinator")
            await coordinator.create("tally", "team", data={"counter": 0}, critical=True,
                                     read=["*"], write=["ctx-writer", "coordinator"])
            done = await run_tasks(kv, [
                (f"agent:ctx-writer@{nodes[0]}", {"scope": "team", "context": "tally",
                                                  "increments": increments}),
                (f"agent:ctx-writer@{nodes[1]}", {"scope": "team", "context": "tally",
                                                  "increments": increments}),
            ])
            contractors = {record.contractor.hex() for _, record in done}
            assert contractors == {nodes[0], nodes[1]}  # really two nodes
            state = await coordinator.get("tally", "team")
            assert state.data["counter"] == 2 * increments
            assert state.data[f"by_{nodes[0][:8]}"] == increments
            assert state.data[f"by_{nodes[1][:8]}"] == increments
            assert state.version == 1 + 2 * increments

            # An agent without write permission is refused and nothing changes.
            ((refusal, _),) = await run_tasks(kv, [
                (f"agent:intruder@{nodes[2]}", {"scope": "team", "context": "tally"})])
            assert "may not write context team/tally" in refusal["refused"]
            assert "'intruder'" in refusal["refused"]
            after = await coordinator.get("tally", "team")
            assert (after.version, after.data) == (state.version, state.data)

    anyio.run(main)


def test_events_reach_another_node_in_the_order_their_source_published(
        team: tuple[Path, list[str]]) -> None:
    cluster, nodes = team
    count = 30

    async def main() -> None:
        async with KVClient.connect(cluster) as kv:
            (listened, _), (published, _) = await run_tasks(kv, [
                (f"agent:listener@{nodes[2]}", {"source": "publisher", "count": count + 1,
                                                "timeout_s": 60}),
                (f"agent:publisher@{nodes[0]}", {"count": count}),
            ])
            assert published == {"published": count + 1}
            events = listened["events"]
            assert [e["type"] for e in events] == ["StateChanged"] * count + ["TaskCompleted"]
            assert [e["new"] for e in events[:count]] == list(range(1, count + 1))
            assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
            assert listened["missed"] == 0

    anyio.run(main)


FACTS = [
    "solar panels lose about half a percent of output each year",
    "heat pumps move heat instead of burning fuel",
    "lithium batteries prefer a charge between twenty and eighty percent",
    "wind turbines turn to face the wind",
    "inverters turn direct current into alternating current",
    "grid operators balance supply and demand every second",
    "insulation keeps heat in during winter",
    "smart meters report use every half hour",
]


def test_memory_outlives_a_node_restart_and_recalls_the_nearest_facts(
        team: tuple[Path, list[str]], tmp_path: Path) -> None:
    cluster, nodes = team

    async def remember(kv: Any) -> None:
        await run_tasks(kv, [(f"agent:archivist@{nodes[0]}", {
            "op": "record", "scope": "team/research",
            "texts": ["surveyed twelve installers", "priced three battery models",
                      "interviewed a grid operator"]})])
        await run_tasks(kv, [(f"agent:archivist@{nodes[0]}", {
            "op": "remember", "scope": "team/research", "facts": FACTS})])

    anyio.run(kv_session, cluster, remember)
    node_dir = cluster / "node1"
    assert json.loads((node_dir / "run.json").read_text())["node_id"] == nodes[0]
    os.kill(json.loads((node_dir / "run.json").read_text())["pid"], signal.SIGKILL)
    restarted = subprocess.Popen([sys.executable, "-m", "mesh.cli", "node", "run", "--dir",
                                  str(node_dir), "--agents", "team"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async def recall(kv: Any) -> tuple[Any, Any]:
            ((episodes, record), ) = await run_tasks(kv, [(f"agent:archivist@{nodes[0]}", {
                "op": "query", "scope": "team/research"})], timeout_s=120, max_attempts=20)
            assert record.contractor.hex() == nodes[0]  # answered by the restarted node
            ((recalled, _), ) = await run_tasks(kv, [(f"agent:archivist@{nodes[1]}", {
                "op": "recall", "scope": "team/research",
                "query": "how fast do solar panels lose output", "k": 2})])
            return episodes, recalled

        episodes, recalled = anyio.run(kv_session, cluster, recall)
    finally:
        restarted.kill()
        restarted.wait()
    assert episodes["episodes"] == ["interviewed a grid operator", "priced three battery models",
                                    "surveyed twelve installers"]
    assert recalled["facts"][0][0] == FACTS[0]
    assert recalled["facts"][0][1] > recalled["facts"][1][1]


async def kv_session(cluster: Path, work: Any) -> Any:
    async with KVClient.connect(cluster) as kv:
        return await work(kv)


def test_a_wait_for_cycle_of_three_tasks_is_broken_with_a_clear_error(
        team: tuple[Path, list[str]]) -> None:
    cluster, nodes = team

    async def main(kv: Any) -> list[Any]:
        # a waits for b, b for c, c for a: whichever wait comes last would close
        # the cycle, anywhere in the mesh, and is refused instead of hanging.
        pairs = [("task-a", "task-b"), ("task-b", "task-c"), ("task-c", "task-a")]
        return await run_tasks(kv, [
            (f"agent:waiter@{node}", {"me": me, "holder": holder, "timeout_s": 60})
            for node, (me, holder) in zip(nodes, pairs, strict=True)], timeout_s=60)

    started = time.monotonic()
    outcomes = [result for result, _ in anyio.run(kv_session, cluster, main)]
    assert time.monotonic() - started < 45, "the cycle hung until the timeouts"
    refused = [o for o in outcomes if "deadlock" in o]
    assert len(refused) == 1, outcomes
    assert sorted(refused[0]["cycle"]) == ["task-a", "task-b", "task-c"]
    assert refused[0]["deadlock"].startswith("deadlock: task-")
    assert "broken by refusing" in refused[0]["deadlock"]
    assert sum("waited_for" in o for o in outcomes) == 2


def test_a_supermajority_decides_and_a_split_vote_goes_to_a_person(
        team: tuple[Path, list[str]]) -> None:
    cluster, nodes = team

    def ballot(preferences: list[str]) -> Any:
        return parse_workflow({"name": "ballot", "steps": [
            {"pattern": "vote", "name": "decide", "question": "ship the release?",
             "options": ["ship", "wait"], "rule": "supermajority", "threshold": 0.75,
             "voters": [f"@voter@{node}" for node in nodes],
             "input": {"preferences": dict(zip(nodes, preferences, strict=True))}}]})

    async def submit(kv: Any) -> None:
        await submit_workflow(kv, ballot(["ship", "ship", "ship"]), workflow_id="agreed")
        await submit_workflow(kv, ballot(["ship", "wait", "wait"]), workflow_id="split")

    anyio.run(kv_session, cluster, submit)
    answered = approve_when_pending(cluster, "split/decide", "--comment", "go ahead")
    assert answered.returncode == 0, answered.stderr

    async def outcomes(kv: Any) -> tuple[Any, Any]:
        return (await wait_workflow(kv, "agreed", 90), await wait_workflow(kv, "split", 90))

    agreed, split = anyio.run(kv_session, cluster, outcomes)
    assert agreed.state == "done"
    assert (agreed.result["choice"], agreed.result["by"]) == ("ship", "vote")
    assert split.state == "done" and split.result["escalated"]
    # 2 of 3 for "wait" falls short of three quarters: a person approved the leader.
    assert split.result["by"] == "person:tester"
    assert split.result["choice"] == "wait"


def test_a_stale_claim_loses_to_the_fresher_one(team: tuple[Path, list[str]]) -> None:
    cluster, nodes = team
    flow = parse_workflow({"name": "prices", "steps": [
        {"name": "early", "target": f"@reporter@{nodes[0]}", "input": {"value": 100}},
        {"name": "late", "target": f"@reporter@{nodes[1]}", "input": {"value": 120}},
        {"pattern": "resolve", "name": "price", "subject": "the list price",
         "claims": {"early": "$early", "late": "$late"}, "priority": "freshness"}]})

    async def main(kv: Any) -> Any:
        await submit_workflow(kv, flow, workflow_id="prices")
        return await wait_workflow(kv, "prices", 90)

    record = anyio.run(kv_session, cluster, main)
    assert record.state == "done"
    settled = record.result
    assert (settled["decided_by"], settled["value"]) == ("priority", 120)
    assert "late" in settled["why"]


@pytest.mark.parametrize("critical", [False, True], ids=["gossip", "raft"])
def test_a_subscriber_on_another_node_sees_the_updates_in_order(
        team: tuple[Path, list[str]], critical: bool) -> None:
    cluster, nodes = team

    async def main(kv: Any) -> Any:
        if critical:
            await SharedContexts(kv, None, "coordinator").create(
                "progress", "team", data={"step": 0}, critical=True)
        else:  # a gossip context is created on a node, by an agent there
            await run_tasks(kv, [(f"agent:stepper@{nodes[0]}", {
                "scope": "team", "context": "progress", "field": "step", "to": 1,
                "create": True})], timeout_s=30)
        return await run_tasks(kv, [
            (f"agent:watcher@{nodes[2]}", {"scope": "team", "context": "progress",
                                           "field": "step", "until": 10, "timeout_s": 60}),
            (f"agent:stepper@{nodes[0]}", {"scope": "team", "context": "progress",
                                           "field": "step", "to": 10}),
        ], timeout_s=90)

    (watched, _), (stepped, _) = anyio.run(kv_session, cluster, main)
    assert stepped == {"last": 10}
    seen = watched["seen"]
    assert seen[-1] == 10 and seen == sorted(seen), seen  # in order, up to the last
