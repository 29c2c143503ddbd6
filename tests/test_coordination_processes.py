"""Coordination on real node processes: shared context written concurrently from two
nodes with compare-and-set, a write refused for lack of permission, and events
seen on another node in the order their source published them.

Each test starts ``agentmesh up --nodes 3 --agents team`` and stops it afterwards.
Agents are pinned to nodes with the capability ``agent:<name>@<node id hex>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.contract_net.ledger import TaskState, decode_record, task_key
from agents.driver import decode_json
from agents.shared_context import SharedContexts
from agents.submission import submit_task
from conftest import running_up
from mesh.kv_client import KVClient
from mesh.up_process import UpProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def team(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    cluster = tmp_path / "mesh"
    with running_up(cluster, "--nodes", "3", "--agents", "team") as up:
        yield cluster, node_ids(up)


def node_ids(up: UpProcess) -> list[str]:
    return [str(node["node_id"]) for node in up.nodes]


async def run_tasks(kv: Any, tasks: list[tuple[str, dict[str, Any]]],
                    timeout_s: float = 90) -> list[Any]:
    """Submit every (capability, input) at once; their results, in order."""
    ids: list[str] = []

    async def submit(capability: str, task_input: dict[str, Any]) -> None:
        ids.append((await submit_task(kv, capability, task_input)).task_id)

    async with anyio.create_task_group() as group:
        for capability, task_input in tasks:
            group.start_soon(submit, capability, task_input)
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
